package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func lines(t *testing.T, c Call) []map[string]any {
	t.Helper()
	var buf bytes.Buffer
	New(slog.New(slog.NewJSONHandler(&buf, nil))).Log(context.Background(), c)
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// A batch whose response has fewer results than items (a server error
// mid-way) still writes a line per item; each result's fields and status
// go to its item's line only.
func TestBatchItems(t *testing.T) {
	got := lines(t, Call{
		FullMethod: "/spire.api.server.svid.v1.SVID/BatchNewX509SVID",
		Caller:     Caller{Addr: "10.0.0.1:5000", ID: "spiffe://example.org/spire/agent/x"},
		Request:    &svidv1.BatchNewX509SVIDRequest{Params: []*svidv1.NewX509SVIDParams{{EntryId: "e1", Csr: []byte("CSR-BYTES")}, {EntryId: "e2"}, {EntryId: "e3"}}},
		Response: &svidv1.BatchNewX509SVIDResponse{Results: []*svidv1.BatchNewX509SVIDResponse_Result{
			{Status: &types.Status{}, Svid: &types.X509SVID{Id: &types.SPIFFEID{TrustDomain: "example.org", Path: "/w1"}, ExpiresAt: 99}},
			{Status: &types.Status{Code: int32(codes.NotFound), Message: "entry not found"}},
		}},
	})
	if len(got) != 3 || got[0]["request_id"] != got[2]["request_id"] {
		t.Fatalf("%d lines: %v", len(got), got)
	}
	if got[0]["entry_id"] != "e1" || got[0]["spiffe_id"] != "spiffe://example.org/w1" || got[0]["status"] != "success" || got[0]["caller_id"] != "spiffe://example.org/spire/agent/x" {
		t.Errorf("item 1: %v", got[0])
	}
	if got[1]["status"] != "error" || got[1]["status_code"] != "NotFound" || got[1]["spiffe_id"] != nil {
		t.Errorf("item 2: %v", got[1])
	}
	if got[2]["entry_id"] != "e3" || got[2]["status"] != "success" {
		t.Errorf("item 3 (no result): %v", got[2])
	}
	// A batch refused as a whole: one line, with the error.
	got = lines(t, Call{
		FullMethod: "/spire.api.server.bundle.v1.Bundle/BatchDeleteFederatedBundle",
		Caller:     Caller{Local: true, HasCred: true, UID: 7, GID: 8, Path: "/bin/cli"},
		Request:    &bundlev1.BatchDeleteFederatedBundleRequest{TrustDomains: []string{"a.test", "b.test"}},
		Err:        status.Error(codes.PermissionDenied, "denied"),
	})
	if len(got) != 1 || got[0]["status_code"] != "PermissionDenied" || got[0]["caller_uid"] != float64(7) || got[0]["caller_path"] != "/bin/cli" ||
		got[0]["service"] != "bundle.v1.Bundle" {
		t.Fatalf("refused batch: %v", got)
	}
}

// Secrets never reach a line: a join token given to CreateJoinToken, an
// attestation payload, a CSR; long client values are cut.
func TestNoSecretsAndBoundedValues(t *testing.T) {
	long := "spiffe://example.org/" + strings.Repeat("p", 500)
	for _, c := range []Call{
		{FullMethod: "/spire.api.server.agent.v1.Agent/CreateJoinToken", Request: &agentv1.CreateJoinTokenRequest{Token: "SECRET-TOKEN", Ttl: 60}},
		{FullMethod: "/spire.api.server.agent.v1.Agent/AttestAgent", Request: &agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{
			Params: &agentv1.AttestAgentRequest_Params{Data: &types.AttestationData{Type: "join_token", Payload: []byte("SECRET-TOKEN")}, Params: &agentv1.AgentX509SVIDParams{Csr: []byte("SECRET-CSR")}}}},
			Err: errors.New("failed")},
		{FullMethod: "/spire.api.server.svid.v1.SVID/MintX509SVID", Request: &svidv1.MintX509SVIDRequest{Csr: []byte("SECRET-CSR"), Ttl: 5}},
		{FullMethod: "/spire.api.server.agent.v1.Agent/RenewAgent", Request: &agentv1.RenewAgentRequest{Params: &agentv1.AgentX509SVIDParams{Csr: []byte("SECRET-CSR")}}},
	} {
		for _, l := range lines(t, c) {
			b, _ := json.Marshal(l)
			if strings.Contains(string(b), "SECRET") {
				t.Errorf("%s: %s", c.FullMethod, b)
			}
		}
	}
	got := lines(t, Call{FullMethod: "/spire.api.server.agent.v1.Agent/BanAgent", Request: &agentv1.BanAgentRequest{Id: &types.SPIFFEID{TrustDomain: "example.org", Path: "/" + strings.Repeat("p", 500)}}})
	if v, _ := got[0]["spiffe_id"].(string); !strings.HasPrefix(long, strings.TrimSuffix(v, "...")) || len(v) > MaxValue+3 {
		t.Errorf("a 520-byte SPIFFE ID logged as %d bytes: %q", len(v), v)
	}
	// Health checks are not audited.
	if got := lines(t, Call{FullMethod: "/grpc.health.v1.Health/Check"}); len(got) != 0 {
		t.Errorf("health check audited: %v", got)
	}
}

// BenchmarkBatchCreateEntry is the audit of a 100-entry BatchCreateEntry
// (100 JSON lines).
func BenchmarkBatchCreateEntry(b *testing.B) {
	req := &entryv1.BatchCreateEntryRequest{}
	resp := &entryv1.BatchCreateEntryResponse{}
	for i := range 100 {
		req.Entries = append(req.Entries, &types.Entry{
			SpiffeId:  &types.SPIFFEID{TrustDomain: "example.org", Path: fmt.Sprintf("/workload/%d", i)},
			ParentId:  &types.SPIFFEID{TrustDomain: "example.org", Path: "/agent/a1"},
			Selectors: []*types.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", 1000+i)}},
		})
		resp.Results = append(resp.Results, &entryv1.BatchCreateEntryResponse_Result{Status: &types.Status{}, Entry: &types.Entry{Id: fmt.Sprintf("id-%d", i)}})
	}
	l := New(slog.New(slog.NewJSONHandler(io.Discard, nil)))
	c := Call{FullMethod: "/spire.api.server.entry.v1.Entry/BatchCreateEntry", Caller: Caller{Local: true, HasCred: true, Path: "/usr/bin/sigil-server"}, Request: req, Response: resp}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		l.Log(ctx, c)
	}
}
