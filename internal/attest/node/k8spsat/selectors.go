package k8spsat

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// SelectorKind describes the node selectors of k8s_psat attestation, so an
// entry with a value Attest can never produce (k8s_psat:agent_node:x,
// k8s_psat:agent_node_ip:node-1) is refused when it is written:
//
//   - cluster, agent_ns, agent_sa, agent_pod_name, agent_pod_uid,
//     agent_node_name, agent_node_uid:<value>
//   - agent_node_ip:<IP address>
//   - agent_node_label:<key>:<value> and agent_pod_label:<key>:<value>
//     (a label's value may be empty)
func SelectorKind() selector.Kind {
	label := func(v string) error {
		if k, _, ok := strings.Cut(v, ":"); !ok || k == "" {
			return fmt.Errorf("%s is not <label key>:<label value>", clip.Quote(v))
		}
		return nil
	}
	keys := map[string]func(string) error{
		"cluster":         nil,
		"agent_ns":        nil,
		"agent_sa":        nil,
		"agent_pod_name":  nil,
		"agent_pod_uid":   nil,
		"agent_node_name": nil,
		"agent_node_uid":  nil,
		"agent_node_ip": func(v string) error {
			if net.ParseIP(v) == nil {
				return errors.New(clip.Quote(v) + " is not an IP address")
			}
			return nil
		},
		"agent_node_label": label,
		"agent_pod_label":  label,
	}
	return selector.Kind{
		Type:     Type,
		Producer: `NodeAttestor "k8s_psat"`,
		Check:    func(v string) error { return selector.CheckKeyed(v, keys) },
	}
}
