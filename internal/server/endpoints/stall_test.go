package endpoints_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/sigil-spiffe/sigil/internal/server/api/agent"
	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
)

// TestStalledAttestationsAreCut: an attestation exchange is bounded in
// time as a whole (on the rate limiter's clock, fake here), whichever
// message the client owes: one that never sends its data and one that
// never answers its challenge both end with DeadlineExceeded once it
// passes, freeing their streams; and a source may have only MaxAwaiting
// exchanges waiting on their clients' answers at once (the next one is
// refused before its challenge). Stalls are logged as failures but not
// charged; a prompt agent of the same source then attests.
func TestStalledAttestationsAreCut(t *testing.T) {
	logs := newLogCapture()
	h := newHarness(t, harnessOpts{log: slog.New(logs), rateLimit: ratelimit.Config{Attestation: true, MaxAwaiting: 2, FailureBurst: 1},
		attestors: map[string]agentapi.NodeAttestor{"echo": echoAttestor{}}})
	// Generous: only reached if the server never cuts the stalled streams.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := agentv1.NewAgentClient(h.anonConn())
	waitFor(t, "the failure log's timer", func() bool { return h.rlClk.Waiters() > 0 })
	timers := h.rlClk.Waiters()

	// Never sends its attestation data.
	silent, err := client.AttestAgent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the silent exchange's deadline", func() bool { return h.rlClk.Waiters() > timers })
	// Send their data, get their challenge, never answer it.
	open := func(host string) (agentv1.Agent_AttestAgentClient, error) {
		s, err := client.AttestAgent(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{Params: &agentv1.AttestAgentRequest_Params{
			Data:   &types.AttestationData{Type: "echo", Payload: []byte(host)},
			Params: &agentv1.AgentX509SVIDParams{Csr: csrFor(t, newKey(t))},
		}}}); err != nil {
			t.Fatal(err)
		}
		resp, err := s.Recv()
		if err == nil && resp.GetChallenge() == nil {
			t.Fatalf("%s: got %v, want a challenge", host, resp)
		}
		return s, err
	}
	var stalled []agentv1.Agent_AttestAgentClient
	for _, host := range []string{"s1", "s2"} {
		s, err := open(host)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		stalled = append(stalled, s)
	}
	// A third one waiting on its client is one too many for the source.
	_, err = open("s3")
	requireCode(t, err, codes.ResourceExhausted)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "2 attestations from this address await challenge answers") {
		t.Errorf("refusal %q", msg)
	}

	// The deadline passes: every stalled exchange is cut by the server.
	h.rlClk.Add(ratelimit.DefaultMaxExchange)
	for i, s := range append([]agentv1.Agent_AttestAgentClient{silent}, stalled...) {
		_, err := s.Recv()
		requireCode(t, err, codes.DeadlineExceeded)
		if msg := status.Convert(err).Message(); msg != "attestation did not complete within 1m0s" {
			t.Errorf("stream %d: %q", i, msg)
		}
	}
	var reasons []string
	for _, l := range logs.records("Failed node attestation") {
		reasons = append(reasons, l["attestation_type"]+": "+l["reason"])
	}
	slices.Sort(reasons)
	want := []string{
		": attestation did not complete within 1m0s",
		"echo: attestation did not complete within 1m0s",
		"echo: attestation did not complete within 1m0s",
		"echo: rejecting request due to attestation rate limiting: rate limited: 2 attestations from this address await challenge answers",
	}
	if !slices.Equal(reasons, want) {
		t.Errorf("failure lines:\n%s\nwant:\n%s", strings.Join(reasons, "\n"), strings.Join(want, "\n"))
	}

	// The stalls cost the source nothing: a prompt agent attests, and
	// the answer to a wrong challenge response is not held back (with a
	// failure burst of 1, it would be had any stall been charged).
	res, err := attestEcho(t, h, "s4", true)
	if err != nil {
		t.Fatalf("prompt agent: %v", err)
	}
	if res.Svid.Id.Path != "/spire/agent/echo/s4" {
		t.Fatalf("result %v", res)
	}
	s, err := open("s5")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_ChallengeResponse{ChallengeResponse: []byte("wrong")}}); err != nil {
		t.Fatal(err)
	}
	_, err = s.Recv()
	requireCode(t, err, codes.PermissionDenied)
	lines := logs.records("Failed node attestation")
	if l := lines[len(lines)-1]; !strings.Contains(l["reason"], "wrong challenge response") || l["answer_delayed"] != "" {
		t.Errorf("the wrong answer's failure line %v: want it answered at once", l)
	}
}
