package endpoints_test

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
)

// fromIP dials from a chosen loopback source address.
func fromIP(ip string) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return d.DialContext(ctx, "tcp", addr)
	})
}

// logCapture is a slog.Handler keeping every record.
type logCapture struct {
	mu   *sync.Mutex
	recs *[]slog.Record
}

func newLogCapture() logCapture { return logCapture{mu: new(sync.Mutex), recs: new([]slog.Record)} }

func (c logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (c logCapture) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	*c.recs = append(*c.recs, r.Clone())
	return nil
}
func (c logCapture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c logCapture) WithGroup(string) slog.Handler      { return c }

// records returns the records with this message, as attribute maps.
func (c logCapture) records(msg string) []map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []map[string]string
	for _, r := range *c.recs {
		if r.Message != msg {
			continue
		}
		m := map[string]string{"level": r.Level.String()}
		r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
		out = append(out, m)
	}
	return out
}

// The failure budget slows failing attempts and never refuses a valid one:
// a fleet behind one address attests freely; after a burst of failures the
// answers to further failures are held back (here on a fake clock), while
// a valid token from the same address still attests at once.
func TestFailedAttestationsSlowedPerIP(t *testing.T) {
	logs := newLogCapture()
	h := newHarness(t, harnessOpts{log: slog.New(logs),
		rateLimit: ratelimit.Config{Attestation: true, Signing: true, FailureBurst: 5, FailureRate: 1}})
	conn := h.anonConn(fromIP("127.0.0.1"))
	key := newKey(t)

	// A fleet behind one address: many successful attestations, no throttling.
	for i := 0; i < 30; i++ {
		if _, err := h.attest(conn, h.createToken(&agentv1.CreateJoinTokenRequest{}), key); err != nil {
			t.Fatalf("successful attestation %d throttled: %v", i, err)
		}
	}
	// Guessing tokens: the burst of failures is answered at once...
	for i := 0; i < 5; i++ {
		_, err := h.attest(conn, "guess", key)
		requireCode(t, err, codes.InvalidArgument)
	}
	// ... the next failure's answer is held back until the budget refills.
	held := make(chan error, 1)
	go func() {
		_, err := attestWith(conn, "join_token", []byte("guess"), csrFor(t, key), key)
		held <- err
	}()
	waitFor(t, "the held failure's log line", func() bool {
		for _, r := range logs.records("Failed node attestation") {
			if r["answer_delayed"] == "1s" {
				return true
			}
		}
		return false
	})
	// Meanwhile a valid token from the same address attests, and a failure
	// from another address is answered at once.
	if _, err := h.attest(conn, h.createToken(&agentv1.CreateJoinTokenRequest{}), key); err != nil {
		t.Fatalf("valid attestation while a failure is held: %v", err)
	}
	_, err := h.attest(h.anonConn(fromIP("127.0.0.2")), "guess", key)
	requireCode(t, err, codes.InvalidArgument)
	select {
	case err := <-held:
		t.Fatalf("held failure answered before the refill: %v", err)
	default:
	}
	h.rlClk.Add(time.Second)
	requireCode(t, <-held, codes.InvalidArgument)
}

func TestAttestationLimitDisabled(t *testing.T) {
	h := newHarness(t, harnessOpts{rateLimit: ratelimit.Config{FailureBurst: 1, FailureRate: 0.001}})
	conn := h.anonConn()
	key := newKey(t)
	for i := 0; i < 5; i++ { // answered at once, none held (fake clock)
		_, err := h.attest(conn, "guess", key)
		requireCode(t, err, codes.InvalidArgument)
	}
	if _, err := h.attest(conn, h.createToken(&agentv1.CreateJoinTokenRequest{}), key); err != nil {
		t.Fatalf("disabled limit applied: %v", err)
	}
}

// Every failed attestation is logged at WARN with its source, type and
// reason (never the token), up to a burst per source and window; the rest
// are counted in one summary line per source when the window ends.
func TestFailedAttestationLog(t *testing.T) {
	logs := newLogCapture()
	h := newHarness(t, harnessOpts{log: slog.New(logs), rateLimit: ratelimit.Config{Attestation: true, FailureBurst: 1000}})
	conn := h.anonConn(fromIP("127.0.0.1"))
	key := newKey(t)
	csr := csrFor(t, key)
	const n = 50
	secret := "secret-" + strings.Repeat("x", 40)
	for i := 0; i < n; i++ {
		_, err := attestWith(conn, "join_token", []byte(secret), csr, key)
		requireCode(t, err, codes.InvalidArgument)
	}
	long := strings.Repeat("t", 64) // the longest type accepted
	_, err := attestWith(h.anonConn(fromIP("127.0.0.2")), long, []byte(secret), csr, key)
	requireCode(t, err, codes.FailedPrecondition)

	lines := logs.records("Failed node attestation")
	if len(lines) != 11 {
		t.Fatalf("%d WARN lines for %d failures from one source and 1 from another, want 10 + 1", len(lines), n)
	}
	for _, l := range lines[:10] {
		if l["level"] != "WARN" || l["source"] != "127.0.0.1" || l["attestation_type"] != "join_token" ||
			l["reason"] != "failed to attest: join token does not exist or has already been used" {
			t.Fatalf("failure line %v", l)
		}
	}
	if l := lines[10]; l["source"] != "127.0.0.2" || l["attestation_type"] != long || len(l["reason"]) > 128+3 {
		t.Fatalf("failure line %v", l)
	}

	waitFor(t, "the log window's timer", func() bool { return h.rlClk.Waiters() > 0 })
	h.rlClk.Add(time.Minute) // the window ends
	waitFor(t, "the summary line", func() bool { return len(logs.records("Failed node attestations not logged")) > 0 })
	sum := logs.records("Failed node attestations not logged")
	if len(sum) != 1 || sum[0]["source"] != "127.0.0.1" || sum[0]["count"] != "40" || sum[0]["level"] != "WARN" ||
		!strings.Contains(sum[0]["last_reason"], "join token does not exist") {
		t.Fatalf("summary lines %v, want one for 127.0.0.1 counting 40", sum)
	}
	// A new window logs again.
	_, err = attestWith(conn, "join_token", []byte(secret), csr, key)
	requireCode(t, err, codes.InvalidArgument)
	if got := len(logs.records("Failed node attestation")); got != 12 {
		t.Fatalf("%d failure lines after the window, want 12", got)
	}
	// Never the token (nor its hash, nor the join-token agent ID).
	logs.mu.Lock()
	defer logs.mu.Unlock()
	for _, r := range *logs.recs {
		text := r.Message
		r.Attrs(func(a slog.Attr) bool { text += " " + a.Value.String(); return true })
		if strings.Contains(text, "secret-") {
			t.Fatalf("log line carries the token: %s", text)
		}
	}
}
