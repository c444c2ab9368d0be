package k8spsat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/kubeapi"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Refusals, each wrapping node.ErrRefused: the attestation data was well
// formed but does not prove a node of an allowed agent.
var (
	// ErrNotAuthenticated: the cluster's TokenReview API does not
	// authenticate the token for the cluster's audience (invalid, expired,
	// another audience, its service account or pod deleted).
	ErrNotAuthenticated = fmt.Errorf("%w: token not authenticated", node.ErrRefused)
	// ErrNotAllowed: the token is a service account's that is not in the
	// cluster's service_account_allow_list (or not a service account's).
	ErrNotAllowed = fmt.Errorf("%w: service account not allowed", node.ErrRefused)
	// ErrNotBound: the token is not bound to a pod of the cluster that
	// still exists on a node (a legacy or TokenRequest token without a
	// pod, a deleted pod or node, a pod not yet scheduled).
	ErrNotBound = fmt.Errorf("%w: token not bound to a scheduled pod", node.ErrRefused)
)

// ClusterConfig is one cluster of the server's NodeAttestor "k8s_psat"
// (a member of clusters = { "<name>" = { ... } }), with SPIRE's keys.
type ClusterConfig struct {
	// Name is the cluster's name: the key in clusters, what agents send,
	// a segment of their agent IDs.
	Name string
	// ServiceAccountAllowList (service_account_allow_list): the service
	// accounts agents may run as, "<namespace>:<name>"; at least one.
	ServiceAccountAllowList []string
	// Audience (audience): the audiences tokens are reviewed for. nil is
	// [DefaultAudience]; an empty list asks for the API server's own.
	Audience []string
	// KubeConfigFile (kube_config_file): how to reach the cluster's API
	// server; "" is the in-cluster service account of the server's pod.
	KubeConfigFile string
	// AllowedNodeLabelKeys (allowed_node_label_keys) and
	// AllowedPodLabelKeys (allowed_pod_label_keys): the labels that
	// become agent_node_label and agent_pod_label selectors.
	AllowedNodeLabelKeys []string
	AllowedPodLabelKeys  []string
	// UsePodUIDForAgentID (use_pod_uid_for_agent_id): agent IDs end in
	// /pod/<pod UID> instead of /<node UID>.
	UsePodUIDForAgentID bool
}

// ServerConfig is the plugin_data of the server's NodeAttestor "k8s_psat".
type ServerConfig struct {
	Clusters []ClusterConfig
}

// Validate checks the configuration without reading any file.
func (c ServerConfig) Validate() error {
	var errs []error
	seen := map[string]bool{}
	for _, cl := range c.Clusters {
		if seen[cl.Name] {
			errs = append(errs, fmt.Errorf("cluster %s is configured twice", clip.Quote(cl.Name)))
		}
		seen[cl.Name] = true
		for _, p := range cl.problems() {
			errs = append(errs, fmt.Errorf("cluster %s: %s", clip.Quote(cl.Name), p.msg))
		}
	}
	return errors.Join(errs...)
}

// problem is a configuration error and the key it is about ("": the
// cluster).
type problem struct{ key, msg string }

// problems checks a cluster's configuration without reading any file.
func (cl ClusterConfig) problems() []problem {
	var ps []problem
	if err := spiffeid.ValidatePathSegment(cl.Name); err != nil {
		ps = append(ps, problem{"", fmt.Sprintf("the cluster name is not a valid SPIFFE ID path segment (letters, digits, '.', '-', '_'): %v", err)})
	}
	if len(cl.ServiceAccountAllowList) == 0 {
		ps = append(ps, problem{"service_account_allow_list", "service_account_allow_list must have at least one service account"})
	}
	for _, sa := range cl.ServiceAccountAllowList {
		ns, name, ok := strings.Cut(sa, ":")
		if !ok || ns == "" || name == "" || strings.Contains(name, ":") {
			ps = append(ps, problem{"service_account_allow_list", fmt.Sprintf("service_account_allow_list: %s is not \"<namespace>:<service account>\"", clip.Quote(sa))})
		}
	}
	if slices.Contains(cl.Audience, "") {
		ps = append(ps, problem{"audience", "audience has an empty string"})
	}
	return ps
}

// Loader returns how to load a cluster's API server configuration from
// its kube_config_file ("" is the in-cluster service account):
// kubeconfig.Loader, which only the server binary links (its YAML decoder
// stays out of sigil-agent, which links this package for its agent half).
type Loader func(kubeConfigFile string) func() (*kubeapi.Config, error)

// ServerOptions are what the server half needs besides its plugin_data.
type ServerOptions struct {
	TrustDomain spiffeid.TrustDomain
	// Loader reads each cluster's kube_config_file (required).
	Loader Loader
	Log    *slog.Logger // nil: discard
}

// cluster is a configured cluster, ready to attest.
type cluster struct {
	name          string
	allowed       map[string]bool
	audience      []string
	api           *kubeapi.Client
	nodeLabelKeys map[string]bool
	podLabelKeys  map[string]bool
	podUIDAgentID bool
}

// Server is the server half: it checks tokens with each cluster's API
// server.
type Server struct {
	td       spiffeid.TrustDomain
	clusters map[string]*cluster
}

// NewServer returns the server half. It contacts no API server: each
// attestation reads the cluster's kube_config_file (or in-cluster
// credentials) and asks its API server.
func NewServer(cfg ServerConfig, opts ServerOptions) (*Server, error) {
	if opts.TrustDomain.IsZero() {
		return nil, errors.New("k8s_psat: trust domain is required")
	}
	if opts.Loader == nil {
		return nil, errors.New("k8s_psat: no kubeconfig loader was given")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("k8s_psat: %w", err)
	}
	if len(cfg.Clusters) == 0 && opts.Log != nil {
		opts.Log.Warn("No clusters configured: k8s_psat attestation is effectively disabled")
	}
	s := &Server{td: opts.TrustDomain, clusters: map[string]*cluster{}}
	for _, c := range cfg.Clusters {
		cl := &cluster{
			name:          c.Name,
			allowed:       set(c.ServiceAccountAllowList),
			audience:      c.Audience,
			api:           kubeapi.New(opts.Loader(c.KubeConfigFile)),
			nodeLabelKeys: set(c.AllowedNodeLabelKeys),
			podLabelKeys:  set(c.AllowedPodLabelKeys),
			podUIDAgentID: c.UsePodUIDForAgentID,
		}
		if cl.audience == nil {
			cl.audience = []string{DefaultAudience}
		}
		s.clusters[c.Name] = cl
	}
	return s, nil
}

func set(list []string) map[string]bool {
	m := make(map[string]bool, len(list))
	for _, v := range list {
		m[v] = true
	}
	return m
}

// Close closes the idle connections to the API servers.
func (s *Server) Close() error {
	for _, c := range s.clusters {
		c.api.Close()
	}
	return nil
}

// Attest checks the token in payload with its cluster's API server and
// returns the agent ID and selectors of its pod's node. Errors wrap
// node.ErrInvalid (malformed data, an unknown cluster) or node.ErrRefused
// (see the Err* refusals); other errors are failures to reach or
// understand the API server.
func (s *Server) Attest(ctx context.Context, payload []byte, _ node.ChallengeFunc) (*node.Result, error) {
	data, err := parsePayload(payload)
	if err != nil {
		return nil, err
	}
	c := s.clusters[data.Cluster]
	if c == nil {
		return nil, fmt.Errorf("%w: k8s_psat: not configured for cluster %s", node.ErrInvalid, clip.Quote(data.Cluster))
	}
	return c.attest(ctx, s.td, data.Token)
}

func parsePayload(payload []byte) (*attestationData, error) {
	if len(payload) == 0 {
		return nil, fmt.Errorf("%w: k8s_psat attestation data is empty", node.ErrInvalid)
	}
	if len(payload) > MaxPayloadSize {
		return nil, fmt.Errorf("%w: k8s_psat attestation data is %d bytes, more than %d", node.ErrInvalid, len(payload), MaxPayloadSize)
	}
	var data attestationData
	if err := json.Unmarshal(payload, &data); err != nil {
		return nil, fmt.Errorf("%w: k8s_psat attestation data is not JSON {\"cluster\": ..., \"token\": ...}: %s", node.ErrInvalid, clip.Cut(err.Error(), 100))
	}
	switch {
	case data.Cluster == "":
		return nil, fmt.Errorf("%w: k8s_psat attestation data has no cluster", node.ErrInvalid)
	case data.Token == "":
		return nil, fmt.Errorf("%w: k8s_psat attestation data has no token", node.ErrInvalid)
	}
	return &data, nil
}

func (c *cluster) attest(ctx context.Context, td spiffeid.TrustDomain, token string) (*node.Result, error) {
	review, err := c.api.TokenReview(ctx, token, c.audience)
	if err != nil {
		return nil, fmt.Errorf("k8s_psat: cluster %s: %w", clip.Quote(c.name), err)
	}
	if !review.Authenticated {
		why := ""
		if review.Error != "" {
			why = ": " + clip.Cut(review.Error, 160)
		}
		return nil, fmt.Errorf("%w by the TokenReview API of cluster %s for audience %q%s", ErrNotAuthenticated, clip.Quote(c.name), c.audience, why)
	}
	if len(c.audience) > 0 && !slices.ContainsFunc(c.audience, func(a string) bool { return slices.Contains(review.Audiences, a) }) {
		// An API server that ignores the audiences asked for (an
		// authenticator that is not audience-aware) must not let a token
		// for another audience through.
		return nil, fmt.Errorf("%w by the TokenReview API of cluster %s: valid for %q, not for %q",
			ErrNotAuthenticated, clip.Quote(c.name), clip.Cut(strings.Join(review.Audiences, ","), 100), c.audience)
	}
	ns, sa, ok := serviceAccount(review.User.Username)
	if !ok {
		return nil, fmt.Errorf("%w: cluster %s: the token is %s's, not a service account's", ErrNotAllowed, clip.Quote(c.name), clip.Quote(review.User.Username))
	}
	if !c.allowed[ns+":"+sa] {
		return nil, fmt.Errorf("%w: %s is not in service_account_allow_list of cluster %s", ErrNotAllowed, clip.Quote(ns+":"+sa), clip.Quote(c.name))
	}
	podName, podUID := one(review.User.Extra[extraPodName]), one(review.User.Extra[extraPodUID])
	if podName == "" || podUID == "" {
		return nil, fmt.Errorf("%w: cluster %s: the token of %s is bound to no pod (a projected service account token is)", ErrNotBound, clip.Quote(c.name), clip.Quote(ns+":"+sa))
	}
	// The token names its node on Kubernetes 1.30 and later (older API
	// servers' do not): then the pod must be on it, and the node must be
	// the one of that name the token was issued on.
	tokenNode, tokenNodeUID := one(review.User.Extra[extraNodeName]), one(review.User.Extra[extraNodeUID])
	pod, podErr := c.api.GetPod(ctx, ns, podName)
	switch {
	case kubeapi.IsNotFound(podErr):
		return nil, fmt.Errorf("%w: cluster %s has no pod %s", ErrNotBound, clip.Quote(c.name), clip.Quote(ns+"/"+podName))
	case podErr != nil:
		return nil, fmt.Errorf("k8s_psat: cluster %s: %w", clip.Quote(c.name), podErr)
	case pod.Metadata.UID != podUID:
		return nil, fmt.Errorf("%w: cluster %s: the pod %s is not the one the token is bound to (UID %s, not %s)",
			ErrNotBound, clip.Quote(c.name), clip.Quote(ns+"/"+podName), clip.Quote(pod.Metadata.UID), clip.Quote(podUID))
	case pod.Spec.NodeName == "":
		return nil, fmt.Errorf("%w: cluster %s: the pod %s is not scheduled on a node", ErrNotBound, clip.Quote(c.name), clip.Quote(ns+"/"+podName))
	case tokenNode != "" && pod.Spec.NodeName != tokenNode:
		return nil, fmt.Errorf("%w: cluster %s: the pod %s is on node %s, the token was issued on %s",
			ErrNotBound, clip.Quote(c.name), clip.Quote(ns+"/"+podName), clip.Quote(pod.Spec.NodeName), clip.Quote(tokenNode))
	}
	nd, ndErr := c.api.GetNode(ctx, pod.Spec.NodeName)
	switch {
	case kubeapi.IsNotFound(ndErr):
		return nil, fmt.Errorf("%w: cluster %s has no node %s (of pod %s)", ErrNotBound, clip.Quote(c.name), clip.Quote(pod.Spec.NodeName), clip.Quote(ns+"/"+podName))
	case ndErr != nil:
		return nil, fmt.Errorf("k8s_psat: cluster %s: %w", clip.Quote(c.name), ndErr)
	case nd.Metadata.UID == "":
		return nil, fmt.Errorf("k8s_psat: cluster %s: node %s has no UID", clip.Quote(c.name), clip.Quote(pod.Spec.NodeName))
	case tokenNodeUID != "" && nd.Metadata.UID != tokenNodeUID:
		// A node deleted and created again under its name: the token
		// was issued on the one that is gone.
		return nil, fmt.Errorf("%w: cluster %s: node %s is not the one the token was issued on (UID %s, not %s)",
			ErrNotBound, clip.Quote(c.name), clip.Quote(pod.Spec.NodeName), clip.Quote(nd.Metadata.UID), clip.Quote(tokenNodeUID))
	}

	var id spiffeid.ID
	if c.podUIDAgentID {
		id, err = spiffeid.FromSegments(td, "spire", "agent", Type, c.name, "pod", podUID)
	} else {
		id, err = spiffeid.FromSegments(td, "spire", "agent", Type, c.name, nd.Metadata.UID)
	}
	if err != nil {
		return nil, fmt.Errorf("k8s_psat: cluster %s: agent ID: %w", clip.Quote(c.name), err)
	}
	values := []string{
		"cluster:" + c.name,
		"agent_ns:" + ns,
		"agent_sa:" + sa,
		"agent_pod_name:" + podName,
		"agent_pod_uid:" + podUID,
		"agent_node_name:" + pod.Spec.NodeName,
		"agent_node_uid:" + nd.Metadata.UID,
	}
	if pod.Status.HostIP != "" {
		values = append(values, "agent_node_ip:"+pod.Status.HostIP)
	}
	values = append(values, labels("agent_node_label:", nd.Metadata.Labels, c.nodeLabelKeys)...)
	values = append(values, labels("agent_pod_label:", pod.Metadata.Labels, c.podLabelKeys)...)
	sels := make([]selector.Selector, 0, len(values))
	for _, v := range values {
		sel := selector.Selector{Type: Type, Value: v}
		if err := sel.Validate(); err != nil {
			return nil, fmt.Errorf("k8s_psat: cluster %s: pod %s yields an invalid selector: %w", clip.Quote(c.name), clip.Quote(ns+"/"+podName), err)
		}
		sels = append(sels, sel)
	}
	return &node.Result{AgentID: id, Selectors: selector.Dedupe(sels), CanReattest: true}, nil
}

// serviceAccount splits system:serviceaccount:<ns>:<name>.
func serviceAccount(username string) (ns, name string, ok bool) {
	rest, ok := strings.CutPrefix(username, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	ns, name, ok = strings.Cut(rest, ":")
	if !ok || ns == "" || name == "" || strings.Contains(name, ":") {
		return "", "", false
	}
	return ns, name, true
}

// one is the single value of an extra, or "".
func one(v []string) string {
	if len(v) != 1 {
		return ""
	}
	return v[0]
}

// labels returns prefix<key>:<value> for the labels whose key is allowed,
// sorted by key.
func labels(prefix string, l map[string]string, allowed map[string]bool) []string {
	var out []string
	for k, v := range l {
		if allowed[k] {
			out = append(out, prefix+k+":"+v)
		}
	}
	slices.Sort(out)
	return out
}
