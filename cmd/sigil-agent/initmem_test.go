package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// initBudget is what one of Sigil's own packages in the agent may allocate
// while it is initialised. The agent links every plugin of its catalog, and
// most devices configure few of them: a plugin's state (compiled patterns,
// parsed certificates, tables) is built when the plugin is configured, not
// in a package-level var or init(), or every device pays for it in heap and
// resident memory (before this check: 480 KB for aws_iid's patterns alone).
const initBudget = 4 << 10

// initExempt may allocate more at init, with the reason.
var initExempt = map[string]string{
	// Generated protobuf messages register their descriptors from init, as
	// every generated package does; the agent serves them (SDS).
	module + "internal/agent/sds/sdspb": "protobuf registration",
}

// TestPackagesAllocateLittleAtInit runs this test binary again with
// GODEBUG=inittrace=1 (the runtime then prints what each package's
// initialisation allocated) and holds each of Sigil's packages the agent
// links to initBudget.
func TestPackagesAllocateLittleAtInit(t *testing.T) {
	agentDeps := deps(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s -test.run=^$: %v\n%s", os.Args[0], err, stderr.String())
	}
	seen := 0
	sc := bufio.NewScanner(&stderr)
	for sc.Scan() {
		// init <package> @0.5 ms, 0.01 ms clock, 1088 bytes, 16 allocs
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[0] != "init" || f[8] != "bytes," {
			continue
		}
		pkg := f[1]
		if !strings.HasPrefix(pkg, module) || !slices.Contains(agentDeps, pkg) {
			continue
		}
		seen++
		n, err := strconv.Atoi(f[7])
		if err != nil {
			t.Fatalf("inittrace line %q: %v", sc.Text(), err)
		}
		if _, ok := initExempt[pkg]; ok {
			continue
		}
		if n > initBudget {
			t.Errorf("%s allocates %d bytes at init (budget %d): build its state when it is used or configured", pkg, n, initBudget)
		}
	}
	if seen < 5 {
		t.Fatalf("inittrace named %d of the agent's packages; the check would prove nothing:\n%s", seen, stderr.String())
	}
}
