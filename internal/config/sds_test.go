package config

import (
	"strings"
	"testing"
)

func TestSDSWarningsAndValidation(t *testing.T) {
	a, err := ParseAgent("agent.conf", []byte(agentConfWith("    sds {\n      default_all_bundles_name = \"ROOTCA\"\n    }\n", "")))
	if err != nil {
		t.Fatal(err)
	}
	w := a.SDS.Warnings()
	if len(w) != 1 || !strings.Contains(w[0], `default_bundle_name and default_all_bundles_name are both "ROOTCA"`) {
		t.Fatalf("warnings %q", w)
	}
	if w := DefaultAgent().SDS.Warnings(); len(w) != 0 {
		t.Fatalf("defaults warn: %q", w)
	}
	// Built in code: an empty name is an error, not a default.
	a.SDS.DefaultSVIDName = ""
	wantErr(t, a.Validate(), "sds: default_svid_name must not be empty")
}
