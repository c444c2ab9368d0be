package catalog

import (
	"errors"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/selector"
)

func TestSelectors(t *testing.T) {
	r := Selectors()
	check := func(s string) error {
		sel, err := selector.Parse(s)
		if err != nil {
			t.Fatalf("parse %q: %v", s, err)
		}
		return r.Check(sel)
	}
	// Sigil's own types, checked; SPIRE's others, accepted as they are.
	for _, s := range []string{"unix:uid:1000", "spiffe_id:spiffe://example.org/spire/agent/join_token/abc",
		"k8s:ns:default", "k8s:pod-label:app:", "k8s:pod-owner:ReplicaSet:web-5d4f8", "k8s:pod-image-count:2", "k8s:container-image:nginx:1.27", "k8s_psat:cluster:c1", "docker:label:app:web", "docker:env:A=b", "docker:image_id:nginx:1.27", "systemd:id:web.service",
		"systemd:fragment_path:/lib/systemd/system/web.service", "systemd:fragment_path:",
		"x509pop:subject:cn:node1", "tpm:pub_hash:" + strings.Repeat("ab", 32), "tpm:pcr:sha256:7:" + strings.Repeat("0", 64), "aws_iid:tag:role:web", "gcp_iit:project-id:p",
		"azure_msi:vm-name:rg:vm", "azure_imds:vm-name:vm", "azure_imds:vm-tag:env:", "azure_imds:virtual-network-subnet:vnet:default", "k8s_sat:cluster:c"} {
		if err := check(s); err != nil {
			t.Errorf("%s refused: %v", s, err)
		}
	}
	for s, want := range map[string]string{
		"unix:uidd:5":                     "must start with one of",
		"unix:uid:abc":                    "is not a numeric id",
		"unix:gid:-1":                     "is not a numeric id",
		"join_token:abc":                  "gives an agent no selectors",
		"spiffe_id:not-an-id":             "is not a SPIFFE ID",
		"x509pop:cn:node1":                "must start with one of ca:, san:, serialnumber:, subject:",
		"x509pop:ca:fingerprint:ABC":      "is not a SHA-1 fingerprint",
		"tpm:pub_hash:ab":                 "64 hex digits",
		"tpm:pcr:sha1:7:ab":               "only the SHA-256 bank",
		"docker:labels:a:b":               "must start with one of env:, image_config_digest:, image_id:, label:",
		"docker:label:nocolon":            "is not <key>:<value>",
		"docker:image_config_digest:9f86": "is not an image ID",
		"systemd:unit:web.service":        "must start with id: or fragment_path:",
		"systemd:id:":                     "is not a unit name",
		"systemd:fragment_path:web":       "is not an absolute path",
		"k8s:namespace:default":           "must start with one of container-image:, container-name:",
		"k8s:pod-label:nocolon":           "is not <key>:<value>",
		"k8s:pod-image-count:two":         "is not a number of containers",
		"k8s:ns:":                         `needs a value after "ns:"`,
		"gcp_iit:label:nocolon":           "is not <key>:<value>",
		"azure_msi:vm-name:vm":            "is not <resource group>:<VM name>",
		"azure_imds:tenant:t":             "must start with one of network-security-group:",
		"azure_imds:vm-name:rg:vm":        "is not a VM name",
		"azure_imds:subscription-id:s":    "is not a subscription ID",
	} {
		if k, _ := r.Lookup(strings.SplitN(s, ":", 2)[0]); strings.Contains(k.Producer, "left out of this build") {
			continue // built with sigil_omit_<type>: accepted unchecked
		}
		if err := check(s); err == nil || !strings.Contains(err.Error(), want) || errors.Is(err, selector.ErrUnknownType) {
			t.Errorf("%s: error %v, want a refusal containing %q", s, err, want)
		}
	}
	err := check("unixx:uid:1")
	if !errors.Is(err, selector.ErrUnknownType) || !strings.Contains(err.Error(), "known types: aws_iid,") || !strings.Contains(err.Error(), "unix") {
		t.Errorf("unknown type: error %v, want ErrUnknownType listing the known types", err)
	}
}
