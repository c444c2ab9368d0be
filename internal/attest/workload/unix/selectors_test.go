package unix

import (
	"os"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/selector"
)

func TestSelectorKind(t *testing.T) {
	r, err := selector.NewRegistry(SelectorKind())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"uid:0", "uid:1000", "uid:4294967295", "gid:5", "supplementary_gid:27",
		"user:alice", "group:wheel", "supplementary_group:docker", "path:/usr/bin/app",
		"sha256:" + strings.Repeat("ab", 32)} {
		if err := r.Check(selector.Selector{Type: "unix", Value: v}); err != nil {
			t.Errorf("unix:%s refused: %v", v, err)
		}
	}
	for v, want := range map[string]string{
		"uidd:5":                             "must start with one of gid:, group:, path:, sha256:, supplementary_gid:, supplementary_group:, uid:, user:",
		"uid:abc":                            `"abc" is not a numeric id`,
		"uid:-1":                             `"-1" is not a numeric id`,
		"gid:-1":                             `"-1" is not a numeric id`,
		"uid:4294967296":                     "is not a numeric id",
		"uid:007":                            "is not a numeric id",
		"uid:+5":                             "is not a numeric id",
		"uid":                                "must start with one of",
		"uid:":                               `needs a value after "uid:"`,
		"user:a:b":                           "is not a user or group name",
		"path:relative/app":                  "is not an absolute, clean path",
		"path:/usr//bin/app":                 "is not an absolute, clean path",
		"sha256:ABCD":                        "is not a SHA-256",
		"sha256:" + strings.Repeat("AB", 32): "is not a SHA-256",
	} {
		err := r.Check(selector.Selector{Type: "unix", Value: v})
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), `WorkloadAttestor "unix" never produces`) {
			t.Errorf("unix:%s: error %v, want one containing %q", v, err, want)
		}
	}
}

// TestSelectorKindAcceptsWhatAttestProduces: every selector the attestor
// produces for this process passes its own Kind.
func TestSelectorKindAcceptsWhatAttestProduces(t *testing.T) {
	r, err := selector.NewRegistry(SelectorKind())
	if err != nil {
		t.Fatal(err)
	}
	a := New(Config{DiscoverWorkloadPath: true})
	sels, err := a.Attest(t.Context(), int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sels {
		if err := r.Check(s); err != nil {
			t.Errorf("produced %s, which its Kind refuses: %v", s, err)
		}
	}
}
