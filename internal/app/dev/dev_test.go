package dev

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDevEndToEnd runs the README's first command (with -exit) twice on the
// same data dir: the first run attests the agent with a fresh join token and
// the workload gets its SVID; the second reuses the persisted agent identity
// and the existing entry.
func TestDevEndToEnd(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	for run := 1; run <= 2; run++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		var stdout, stderr bytes.Buffer
		err := Run(ctx, []string{"-dataDir", dir, "-exit", "-logLevel", "ERROR"}, &stdout, &stderr)
		cancel()
		if err != nil {
			t.Fatalf("run %d: %v\nstderr:\n%s", run, err, stderr.String())
		}
		out := stdout.String()
		for _, want := range []string{"Your SPIFFE ID:       spiffe://example.org/workload/", "(selector unix:uid:" + strconv.Itoa(os.Getuid()) + ")", "api fetch x509 -socketPath " + filepath.Join(dir, "agent", "api.sock")} {
			if !strings.Contains(out, want) {
				t.Errorf("run %d: output lacks %q:\n%s", run, want, out)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "agent", attestedMarker)); err != nil {
			t.Errorf("run %d: agent not marked attested: %v", run, err)
		}
	}
}

func TestDevRejectsBadFlags(t *testing.T) {
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"-trustDomain", "Bad_Domain"}, &out, &out); err == nil {
		t.Fatal("invalid trust domain accepted")
	}
	if err := Run(context.Background(), []string{"-nope"}, &out, &out); err == nil || !strings.Contains(out.String(), "-nope") {
		t.Fatalf("unknown flag not named: %v %q", err, out.String())
	}
}
