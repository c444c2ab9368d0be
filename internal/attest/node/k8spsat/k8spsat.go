// Package k8spsat implements Kubernetes projected service account token
// node attestation, wire- and configuration-compatible with SPIRE's
// "k8s_psat" plugins: an agent running in a pod (normally a DaemonSet's,
// one per node) proves which pod, service account and node it is with a
// token the kubelet projects into the pod for the server's audience.
//
// The exchange is one message, JSON as SPIRE's:
//
//	agent   {"cluster": "<cluster name>", "token": "<the projected token>"}
//	server  for the cluster of that name in its configuration:
//	        TokenReview of the token for the cluster's audience
//	        (authenticated, and valid for one of the audiences asked);
//	        the user must be system:serviceaccount:<ns>:<sa> with
//	        "<ns>:<sa>" in service_account_allow_list, the token bound to
//	        a pod (its name and UID in the review's extra);
//	        GET the pod (same UID), then GET its node (spec.nodeName);
//	        when the token names its node (Kubernetes 1.30 and later),
//	        the pod must be on it and the node must have its UID (a
//	        node created again under the name is not the token's; SPIRE
//	        does not check this).
//
// The agent ID is spiffe://<trust domain>/spire/agent/k8s_psat/<cluster>/<node UID>
// (…/<cluster>/pod/<pod UID> with use_pod_uid_for_agent_id), and the
// node's selectors are, with type k8s_psat:
//
//	cluster:<cluster>              agent_ns:<namespace>
//	agent_sa:<service account>     agent_pod_name:<pod>
//	agent_pod_uid:<pod UID>        agent_node_ip:<pod's status.hostIP>
//	agent_node_name:<node>         agent_node_uid:<node UID>
//	agent_node_label:<key>:<value> for the keys of allowed_node_label_keys
//	agent_pod_label:<key>:<value>  for the keys of allowed_pod_label_keys
//
// (agent_node_ip is left out while the pod has no host IP, where SPIRE
// writes an empty one.)
//
// The proof can be repeated while the pod lives, so an agent attested this
// way renews its SVID by attesting again (node.Result.CanReattest, as
// SPIRE's): the server asks the API server anew each time, and an agent
// whose pod, service account or node is gone, or whose service account
// left the allow list, loses its identity at its next renewal. The agent
// half reads the token file at every attestation: the kubelet rotates it.
//
// Both halves live here; the server half talks to each cluster's API
// server through internal/kubeapi (net/http and JSON, no client-go), as
// its kube_config_file says or, when that is empty, as the pod it runs in
// (the in-cluster service account); the kubeconfig reader is injected
// (ServerOptions.Loader) so that sigil-agent does not link it. The agent
// half only reads a file.
package k8spsat

// Type is the attestation type, the plugin name and the selector type.
const Type = "k8s_psat"

// DefaultTokenPath is token_path's default, where SPIRE's manifests
// project the token.
const DefaultTokenPath = "/var/run/secrets/tokens/spire-agent" //nolint:gosec // a path, not a credential

// DefaultAudience is the audience a cluster's tokens are reviewed for when
// its configuration sets none (as SPIRE).
const DefaultAudience = "spire-server"

// MaxPayloadSize bounds the attestation data (a projected token is 1 to 2
// KiB; Kubernetes caps bearer tokens far below this).
const MaxPayloadSize = 64 << 10

// MaxTokenSize bounds the token file the agent reads.
const MaxTokenSize = 32 << 10

// attestationData is the payload.
type attestationData struct {
	Cluster string `json:"cluster"`
	Token   string `json:"token"`
}

// Keys of the review's user extra that name the pod a token is bound to.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
	// The node the pod was on when the kubelet requested the token
	// (Kubernetes 1.30 and later; absent from older API servers' tokens).
	extraNodeName = "authentication.kubernetes.io/node-name"
	extraNodeUID  = "authentication.kubernetes.io/node-uid"
)
