package workloadapi_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/workloadattest"
	"github.com/sigil-spiffe/sigil/internal/attest/workload/unix"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// hung never answers before its context ends.
type hung struct{}

func (hung) Attest(ctx context.Context, _ int32) ([]selector.Selector, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

type failing struct{}

func (failing) Attest(context.Context, int32) ([]selector.Selector, error) {
	return nil, errors.New("cannot reach the container runtime")
}

func attestors(t *testing.T, logs *syncBuffer, plugins ...workloadattest.Plugin) *workloadattest.Set {
	t.Helper()
	s, err := workloadattest.New(workloadattest.Config{Plugins: plugins, Timeout: 100 * time.Millisecond, Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSlowAndFailingAttestorsDoNotBlockIdentity: beside a hung and a
// failing plugin, the unix plugin's selectors still give the caller its
// SVID, and the log names the other two by plugin name.
func TestSlowAndFailingAttestorsDoNotBlockIdentity(t *testing.T) {
	logs := &syncBuffer{}
	e := startEnv(t, envOpts{attestor: attestors(t, logs,
		workloadattest.Plugin{Name: "k8s", Attestor: hung{}},
		workloadattest.Plugin{Name: "unix", Attestor: unix.New(unix.Config{})},
		workloadattest.Plugin{Name: "docker", Attestor: failing{}},
	)})
	now := e.clk.Now()
	id := mustID(t, "/workload/a")
	e.addIdentity(t, []*cache.Entry{entry("a", id, now, uidSelector())},
		map[string]*cache.X509SVID{"a": e.ca.svid(t, id, now.Add(-time.Minute), now.Add(time.Hour))})

	svid, err := workloadapi.FetchX509SVID(ctxT(t), workloadapi.WithAddr(e.addr))
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	if svid.ID != id {
		t.Fatalf("served %s, want %s", svid.ID, id)
	}
	l := logs.String()
	for _, want := range []string{`"Workload attestor timed out" attestor=k8s`, `"Workload attestor failed" attestor=docker`} {
		if !strings.Contains(l, want) {
			t.Errorf("log lacks %s:\n%s", want, l)
		}
	}
}

// TestAllAttestorsFailIsUnavailable: when no plugin attests the caller,
// the call fails with Unavailable naming the plugins (not their errors),
// instead of the PermissionDenied of a caller without identity.
func TestAllAttestorsFailIsUnavailable(t *testing.T) {
	logs := &syncBuffer{}
	e := startEnv(t, envOpts{attestor: attestors(t, logs,
		workloadattest.Plugin{Name: "k8s", Attestor: hung{}},
		workloadattest.Plugin{Name: "docker", Attestor: failing{}},
	)})
	_, err := workloadapi.FetchX509SVID(ctxT(t), workloadapi.WithAddr(e.addr))
	st := status.Convert(err)
	if st.Code() != codes.Unavailable {
		t.Fatalf("FetchX509SVID: %v, want Unavailable", err)
	}
	if want := `workload attestation failed: WorkloadAttestor "k8s" timed out, WorkloadAttestor "docker" failed`; st.Message() != want {
		t.Errorf("message %q, want %q", st.Message(), want)
	}
	if !strings.Contains(logs.String(), "cannot reach the container runtime") {
		t.Errorf("the plugin's error is not in the log: %s", logs)
	}
}
