// Package k8s is the agent's "k8s" workload attestor, selector-compatible
// with SPIRE's plugin of the same name. For a caller PID it finds the
// container and pod the process runs in from its cgroups
// (internal/attest/workload/cgroup with the pod UID), reads the node's pods
// from the kubelet (GET /pods on its secure port with the agent's
// service-account token or a client certificate, or on the read-only
// port), finds the pod whose status lists the container, and produces
// selectors of type "k8s":
//
//	ns:<namespace>                  sa:<service account>
//	pod-name:<name>                 pod-uid:<uid>
//	pod-label:<key>:<value>         one per pod label
//	pod-owner:<Kind>:<name>         pod-owner-uid:<Kind>:<uid>   one each per owner reference
//	pod-image:<image>               each container's image and image ID (status)
//	pod-image-count:<n>             pod-init-image:<image>   pod-init-image-count:<n>
//	node-name:<node>
//	container-name:<name>           container-image:<image>   the caller's container (image and image ID)
//
// as SPIRE 1.15 does (container selectors are left out with
// disable_container_selectors). A process in no container gets no k8s
// selectors and no error.
//
// # A container the kubelet does not list yet
//
// A container's first process can call the Workload API before the kubelet
// has put the container's ID in the pod's status. The attestor then asks
// again, each time for a pod list newer than the one it looked at, up to
// max_poll_attempts tries poll_retry_interval apart, within the agent's
// per-call attestation deadline (10 s: about 20 tries at the defaults).
// Concurrent callers share the kubelet's answers: one GET /pods at a time
// and at most one per poll_retry_interval, a fresh list being reused.
//
// # What the kubelet's JSON is decoded into
//
// The agent links no Kubernetes library: the pod list is decoded into the
// few fields the selectors need (metadata name, namespace, uid, labels,
// ownerReferences; spec serviceAccountName, nodeName; status
// containerStatuses and initContainerStatuses: name, image, imageID,
// containerID), with encoding/json, which ignores the rest.
package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/workload/cgroup"
	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/lazyre"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Type is the selector type (and plugin name).
const Type = "k8s"

// Config configures the attestor (plugin_data of WorkloadAttestor "k8s";
// ParseConfig reads it). Zero values are SPIRE's defaults.
type Config struct {
	// Port is kubelet_secure_port, or kubelet_read_only_port when
	// ReadOnly; 0 is 10250 (secure).
	Port     int
	ReadOnly bool
	// SkipKubeletVerification: the kubelet's certificate is not checked.
	SkipKubeletVerification bool
	// KubeletCAPath, TokenPath: "" are the service account's files.
	KubeletCAPath string
	TokenPath     string
	// CertificatePath and PrivateKeyPath: a client certificate instead of
	// the token.
	CertificatePath string
	PrivateKeyPath  string
	// Anonymous is use_anonymous_authentication.
	Anonymous bool
	// NodeName, else $NodeNameEnv (default MY_NODE_NAME), is the kubelet's
	// host on the secure port; none: 127.0.0.1, and the certificate's
	// chain is checked without its names (as SPIRE).
	NodeName    string
	NodeNameEnv string
	// MaxPollAttempts (0: 60) and PollRetryInterval (0: 500ms).
	MaxPollAttempts   int
	PollRetryInterval time.Duration
	// ReloadInterval is how often the CA, token and key pair are re-read;
	// 0 is a minute.
	ReloadInterval time.Duration
	// DisableContainerSelectors is disable_container_selectors.
	DisableContainerSelectors bool
	// NewLocator is use_new_container_locator (ParseConfig's default is
	// true; false uses SPIRE's legacy path patterns).
	NewLocator         bool
	VerboseLocatorLogs bool
	// ProcDir is proc_dir (a Sigil extension; default /proc).
	ProcDir string
	// RequestTimeout bounds one GET /pods; 0 is DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Getenv reads NodeNameEnv; nil is os.Getenv.
	Getenv func(string) string
	// Log; nil discards.
	Log *slog.Logger
}

// Attestor produces k8s selectors. It is safe for concurrent use; Close
// stops its kubelet requests.
type Attestor struct {
	cfg     Config
	log     *slog.Logger
	locator *cgroup.Locator
	pods    *lister
}

// New returns an attestor for cfg. It reads the credentials the
// configuration names (the kubelet CA, the token or the key pair) so that
// a missing file stops start-up with its name, as SPIRE's configure does.
func New(cfg Config) (*Attestor, error) {
	if cfg.Port == 0 {
		cfg.Port = DefaultSecurePort
		cfg.ReadOnly = false
	}
	if cfg.KubeletCAPath == "" {
		cfg.KubeletCAPath = DefaultKubeletCAPath
	}
	if cfg.TokenPath == "" {
		cfg.TokenPath = DefaultTokenPath
	}
	if cfg.NodeNameEnv == "" {
		cfg.NodeNameEnv = DefaultNodeNameEnv
	}
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	if cfg.NodeName == "" {
		cfg.NodeName = cfg.Getenv(cfg.NodeNameEnv)
	}
	if cfg.MaxPollAttempts <= 0 {
		cfg.MaxPollAttempts = DefaultMaxPollAttempts
	}
	if cfg.PollRetryInterval <= 0 {
		cfg.PollRetryInterval = DefaultPollRetryInterval
	}
	if cfg.ReloadInterval <= 0 {
		cfg.ReloadInterval = DefaultReloadInterval
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k, err := newKubelet(cfg)
	if err != nil {
		return nil, fmt.Errorf("k8s attestor: %w", err)
	}
	return &Attestor{
		cfg:     cfg,
		log:     log,
		locator: &cgroup.Locator{ProcDir: cfg.ProcDir, PodUID: true, Log: log, Verbose: cfg.VerboseLocatorLogs},
		pods:    newLister(k.podList, cfg.PollRetryInterval, cfg.RequestTimeout),
	}, nil
}

// Close stops a kubelet request in flight and waits for it.
func (a *Attestor) Close() error {
	a.pods.close()
	return nil
}

// where is what the cgroups say of a process.
type where struct{ podUID, containerID string }

// Attest returns the k8s selectors of process pid: none, without error,
// for a process in no container.
func (a *Attestor) Attest(ctx context.Context, pid int32) ([]selector.Selector, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("k8s attestor: invalid pid %d", pid)
	}
	w, err := a.locate(pid)
	if err != nil {
		return nil, fmt.Errorf("k8s attestor: %w", err)
	}
	if w.containerID == "" {
		return nil, nil
	}
	var (
		after   uint64
		lastErr error
	)
	for attempt := 1; ; attempt++ {
		list, err := a.pods.next(ctx, after)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil, a.notFound(pid, w, attempt-1, lastErr, ctx.Err())
		case err != nil:
			lastErr = err
			a.log.Debug("The kubelet's pod list could not be read; will retry", "pid", pid, "attempt", attempt, "error", err)
		default:
			after = list.version
			sels, err := a.match(list, w)
			if err != nil {
				return nil, fmt.Errorf("k8s attestor: pid %d: %w", pid, err)
			}
			if sels != nil {
				return sels, nil
			}
			lastErr = nil
			a.log.Debug("The workload's container is not in the kubelet's pod list yet; will retry",
				"pid", pid, "pod_uid", w.podUID, "container_id", w.containerID, "attempt", attempt)
		}
		if attempt >= a.cfg.MaxPollAttempts {
			return nil, a.notFound(pid, w, attempt, lastErr, nil)
		}
	}
}

// notFound is the error of a container not found in time.
func (a *Attestor) notFound(pid int32, w where, attempts int, lastErr, ctxErr error) error {
	pod := ""
	if w.podUID != "" {
		pod = " of pod " + w.podUID
	}
	msg := fmt.Sprintf("k8s attestor: pid %d: container %s%s not in the kubelet's pod list after %d attempts", pid, w.containerID, pod, attempts)
	switch {
	case lastErr != nil && ctxErr != nil:
		return fmt.Errorf("%s (last: %v): %w", msg, lastErr, ctxErr)
	case lastErr != nil:
		return fmt.Errorf("%s: %w", msg, lastErr)
	case ctxErr != nil:
		return fmt.Errorf("%s: %w", msg, ctxErr)
	}
	return errors.New(msg)
}

// locate finds the process's container and pod.
func (a *Attestor) locate(pid int32) (where, error) {
	if !a.cfg.NewLocator {
		entries, err := cgroup.Read(a.cfg.ProcDir, pid)
		if err != nil {
			return where{}, err
		}
		return legacyLocate(entries)
	}
	c, err := a.locator.Locate(pid)
	if err != nil {
		return where{}, err
	}
	return where{podUID: c.PodUID, containerID: c.ID}, nil
}

// match looks for the container in the list: the pod's selectors (and the
// container's) when found; nil when not (yet); an error when two pods
// claim it.
func (a *Attestor) match(list *podList, w where) ([]selector.Selector, error) {
	var candidates []*pod
	if w.podUID != "" {
		if p := list.byUID[w.podUID]; p != nil {
			candidates = []*pod{p}
		}
	} else {
		for i := range list.pods {
			candidates = append(candidates, &list.pods[i])
		}
	}
	var out []selector.Selector
	var found *pod
	for _, p := range candidates {
		cs := p.container(w.containerID)
		var sels []selector.Selector
		switch {
		case cs != nil:
			sels = podSelectors(p)
			if !a.cfg.DisableContainerSelectors {
				sels = append(sels, containerSelectors(cs)...)
			}
		case w.podUID != "" && a.cfg.DisableContainerSelectors:
			// The pod is known from the cgroups and only its selectors are
			// wanted: its container need not be listed yet (SPIRE).
			sels = podSelectors(p)
		}
		if sels == nil {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("container %s is listed in two pods, %s/%s and %s/%s", w.containerID,
				found.Metadata.Namespace, found.Metadata.Name, p.Metadata.Namespace, p.Metadata.Name)
		}
		found, out = p, sels
	}
	if out == nil {
		return nil, nil
	}
	selector.Sort(out)
	return slices.Compact(out), nil
}

func sel(v string) selector.Selector { return selector.Selector{Type: Type, Value: v} }

// podSelectors are SPIRE's pod selectors.
func podSelectors(p *pod) []selector.Selector {
	out := []selector.Selector{
		sel("sa:" + p.Spec.ServiceAccountName),
		sel("ns:" + p.Metadata.Namespace),
		sel("node-name:" + p.Spec.NodeName),
		sel("pod-uid:" + p.Metadata.UID),
		sel("pod-name:" + p.Metadata.Name),
		sel("pod-image-count:" + strconv.Itoa(len(p.Status.ContainerStatuses))),
		sel("pod-init-image-count:" + strconv.Itoa(len(p.Status.InitContainerStatuses))),
	}
	for _, cs := range p.Status.ContainerStatuses {
		out = appendImages(out, "pod-image:", &cs)
	}
	for _, cs := range p.Status.InitContainerStatuses {
		out = appendImages(out, "pod-init-image:", &cs)
	}
	for k, v := range p.Metadata.Labels {
		out = append(out, sel("pod-label:"+k+":"+v))
	}
	for _, o := range p.Metadata.OwnerReferences {
		out = append(out, sel("pod-owner:"+o.Kind+":"+o.Name), sel("pod-owner-uid:"+o.Kind+":"+o.UID))
	}
	return out
}

// containerSelectors are the caller's container's.
func containerSelectors(cs *containerStatus) []selector.Selector {
	return appendImages([]selector.Selector{sel("container-name:" + cs.Name)}, "container-image:", cs)
}

// appendImages adds a container's image as the pod spec names it
// (docker.io/library/nginx:1.27) and its image ID (…@sha256:…): an entry
// can be written before the digest is known, or pin it. An empty one (a
// container whose image is still being pulled has no imageID) is left out;
// SPIRE adds "pod-image:" then.
func appendImages(out []selector.Selector, prefix string, cs *containerStatus) []selector.Selector {
	for _, img := range []string{cs.ImageID, cs.Image} {
		if img != "" {
			out = append(out, sel(prefix+img))
		}
	}
	return out
}

// The legacy locator (use_new_container_locator = false): SPIRE's
// patterns, applied to each cgroup path without its ".scope" suffix.
var (
	// A "pod<uid>" segment (the UID's groups may be separated by any
	// punctuation), then any punctuation-separated words, then the
	// container ID ending the path.
	legacyPod = lazyre.New(`[[:punct:]]pod([[:xdigit:]]{8}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{12})[[:punct:]](?:[[:^punct:]]+[[:punct:]])*([[:xdigit:]]{64})$`)
	// CRI-O (as KubeEdge runs it) names no pod: "crio-<id>" ending the
	// path, in a path naming no pod.
	legacyCRIO   = lazyre.New(`crio[[:punct:]]([[:xdigit:]]{64})$`)
	legacyAnyPod = lazyre.New(`pod[[:xdigit:]]{8}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{12}[[:punct:]]`)
)

// legacyLocate is SPIRE's legacy k8s locator: every cgroup path matching a
// pattern must name the same container and pod.
func legacyLocate(entries []cgroup.Entry) (where, error) {
	var w where
	for _, e := range entries {
		p := strings.TrimSuffix(e.Path, ".scope")
		var got where
		if m := legacyPod.FindStringSubmatch(p); m != nil {
			got = where{podUID: canonicalUID(m[1]), containerID: m[2]}
		} else if m := legacyCRIO.FindStringSubmatch(p); m != nil && !legacyAnyPod.MatchString(p) {
			got = where{containerID: m[1]}
		} else {
			continue
		}
		switch {
		case w.containerID == "":
			w = got
		case w.containerID != got.containerID:
			return where{}, fmt.Errorf("%w: cgroups name containers %s and %s", cgroup.ErrConflict, w.containerID, clip.Cut(got.containerID, 64))
		case w.podUID != got.podUID:
			return where{}, fmt.Errorf("%w: cgroups name pods %q and %q", cgroup.ErrConflict, w.podUID, got.podUID)
		}
	}
	return w, nil
}

// canonicalUID writes a UID's separators as dashes.
func canonicalUID(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F' {
			return r
		}
		return '-'
	}, s)
}
