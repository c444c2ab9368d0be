package version

import (
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	vcs := func(rev, modified string) *debug.BuildInfo {
		return &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified},
		}}
	}
	for _, tc := range []struct {
		name    string
		stamped string
		bi      *debug.BuildInfo
		want    string
	}{
		{"stamp wins", "v1.2.3", &debug.BuildInfo{Main: debug.Module{Version: "v0.9.0"}}, "v1.2.3"},
		{"module version", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.9.0"}}, "v0.9.0"},
		{"vcs clean", "", vcs("0123456789abcdef0123", "false"), "devel+0123456789ab"},
		{"vcs dirty", "", vcs("0123456789abcdef0123", "true"), "devel+0123456789ab-dirty"},
		{"no vcs", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "devel"},
		{"no build info", "", nil, "devel"},
		{"blank stamp ignored", "  ", nil, "devel"},
	} {
		if got := resolve(tc.stamped, tc.bi); got != tc.want {
			t.Errorf("%s: resolve = %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := clip(strings.Repeat("x", 300)); len(got) != MaxLen {
		t.Errorf("clip kept %d bytes, want %d", len(got), MaxLen)
	}
	if String() == "" {
		t.Error("String() is empty")
	}
}

// TestLinkerStamp builds a program with the -X flag the README documents
// and checks that it reaches Version (a renamed variable or package would
// make the linker ignore the flag silently).
func TestLinkerStamp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	bin := filepath.Join(t.TempDir(), "stamp")
	build := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X github.com/sigil-spiffe/sigil/internal/version.Version=v9.8.7-test", "./testdata/stamp")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "v9.8.7-test" {
		t.Errorf("stamped binary reports %q, want v9.8.7-test", got)
	}
}
