package dev

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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
		for _, want := range []string{"Your SPIFFE ID:       spiffe://example.org/workload/", "(selector unix:uid:" + strconv.Itoa(os.Getuid()) + ")", "Stopped (-exit)"} {
			if !strings.Contains(out, want) {
				t.Errorf("run %d: output lacks %q:\n%s", run, want, out)
			}
		}
		// Nothing runs any more: no instructions that need it running.
		if strings.Contains(out, "while this runs") || strings.Contains(out, "api fetch x509 -socketPath") {
			t.Errorf("run %d: -exit output gives commands for a running environment:\n%s", run, out)
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

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestDevServingPrintsCommands: without -exit the environment keeps
// serving, and the commands to try against it are printed.
func TestDevServingPrintsCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() { done <- Run(ctx, []string{"-dataDir", dir, "-logLevel", "ERROR"}, &stdout, &stderr) }()
	for !strings.Contains(stdout.String(), "Serving; press Ctrl-C to stop.") {
		select {
		case err := <-done:
			t.Fatalf("dev stopped: %v\nstderr:\n%s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	out := stdout.String()
	if !strings.Contains(out, "Fetch it yourself (while this runs):\n  go run ./cmd/sigil-agent api fetch x509 -socketPath "+filepath.Join(dir, "agent", "api.sock")) || strings.Contains(out, "Stopped (-exit)") {
		t.Errorf("serving output:\n%s", out)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("dev after Ctrl-C: %v", err)
	}
}
