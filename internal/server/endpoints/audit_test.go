package endpoints_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"

	"github.com/sigil-spiffe/sigil/internal/server/audit"
	"github.com/sigil-spiffe/sigil/internal/server/endpoints"
)

// auditCapture keeps the JSON lines of a logger.
type auditCapture struct {
	mu       sync.Mutex
	buf, all bytes.Buffer
}

func (c *auditCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.all.Write(p)
	return c.buf.Write(p)
}

// take returns the audit lines written since the last take. It waits (up
// to 10 s) until there are at least min of them: a streaming call's line
// is written when its handler returns, which may be after the client has
// read the response.
func (c *auditCapture) take(t *testing.T, min int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		n := strings.Count(c.buf.String(), "\n")
		c.mu.Unlock()
		if n >= min || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(c.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		if m["msg"] != audit.Message || m["type"] != "audit" {
			t.Fatalf("not an audit line: %v", m)
		}
		out = append(out, m)
	}
	c.buf.Reset()
	return out
}

// text is everything written.
func (c *auditCapture) text() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.all.String()
}

// wantFields checks that line has every field of want (values compared as
// text).
func wantFields(t *testing.T, line map[string]any, want map[string]string) {
	t.Helper()
	for k, v := range want {
		got, ok := line[k]
		if !ok {
			t.Errorf("audit line lacks %s (want %q): %v", k, v, line)
			continue
		}
		var s string
		switch g := got.(type) {
		case string:
			s = g
		case float64:
			s = strconv.FormatFloat(g, 'f', -1, 64)
		case bool:
			s = strconv.FormatBool(g)
		}
		if s != v {
			t.Errorf("audit line %s = %q, want %q: %v", k, s, v, line)
		}
	}
}

func only(t *testing.T, lines []map[string]any) map[string]any {
	t.Helper()
	if len(lines) != 1 {
		t.Fatalf("%d audit lines, want 1: %v", len(lines), lines)
	}
	return lines[0]
}

// TestAuditLog: one line per call, and per item of a batch (sharing the
// request ID), with the caller (the local process's uid, gid and
// executable; an agent's address and SPIFFE ID), the method, the request's
// identifying fields and the result; never a token, a JWT or attestation
// data.
func TestAuditLog(t *testing.T) {
	capture := &auditCapture{}
	h := newHarness(t, harnessOpts{endpoints: endpoints.Config{Audit: audit.New(slog.New(slog.NewJSONHandler(capture, nil)))}})
	ctx := context.Background()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	local := map[string]string{
		"caller_uid": strconv.Itoa(os.Getuid()), "caller_gid": strconv.Itoa(os.Getgid()), "caller_path": exe,
	}
	with := func(base map[string]string, more map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range base {
			out[k] = v
		}
		for k, v := range more {
			out[k] = v
		}
		return out
	}

	// A join token: its SPIFFE ID and TTL, never the token.
	token := h.createToken(&agentv1.CreateJoinTokenRequest{Ttl: 600, AgentId: &types.SPIFFEID{TrustDomain: "example.org", Path: "/agent/a1"}})
	line := only(t, capture.take(t, 1))
	if strings.Contains(capture.text(), token) {
		t.Fatal("the CreateJoinToken line holds the token")
	}
	wantFields(t, line, with(local, map[string]string{"service": "agent.v1.Agent", "method": "CreateJoinToken", "status": "success",
		"spiffe_id": "spiffe://example.org/agent/a1", "ttl": "600"}))
	if _, ok := line["request_id"]; !ok {
		t.Error("no request_id")
	}

	// An attestation over TCP: the attestor and the new agent's ID (which,
	// for join_token, holds the token: spent now, and public as every
	// agent ID). A token never used stays out of the log.
	unused := h.createToken(&agentv1.CreateJoinTokenRequest{Ttl: 600})
	capture.take(t, 1)
	svid, err := h.attest(h.anonConn(), token, newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	line = only(t, capture.take(t, 1))
	wantFields(t, line, map[string]string{"method": "AttestAgent", "status": "success", "node_attestor_type": "join_token", "agent_id": svid.ID.String()})
	if _, ok := line["caller_addr"]; !ok {
		t.Errorf("TCP call without caller_addr: %v", line)
	}
	// A refused one: the result, still without the token.
	_, err = h.attest(h.anonConn(), "guessed-token-value", newKey(t))
	requireCode(t, err, codes.InvalidArgument)
	wantFields(t, only(t, capture.take(t, 1)), map[string]string{"method": "AttestAgent", "status": "error", "status_code": "InvalidArgument", "node_attestor_type": "join_token"})

	// A batch: one line per entry, one request ID, each with its result.
	entries := entryv1.NewEntryClient(h.localConn())
	e := &types.Entry{SpiffeId: &types.SPIFFEID{TrustDomain: "example.org", Path: "/w1"}, ParentId: &types.SPIFFEID{TrustDomain: "example.org", Path: "/agent/a1"},
		Selectors: []*types.Selector{{Type: "unix", Value: "uid:1000"}}}
	resp, err := entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{e, e}})
	if err != nil {
		t.Fatal(err)
	}
	lines := capture.take(t, 2)
	if len(lines) != 2 || lines[0]["request_id"] != lines[1]["request_id"] {
		t.Fatalf("batch of 2: %d lines %v", len(lines), lines)
	}
	for i, l := range lines {
		wantFields(t, l, with(local, map[string]string{"service": "entry.v1.Entry", "method": "BatchCreateEntry",
			"spiffe_id": "spiffe://example.org/w1", "parent_id": "spiffe://example.org/agent/a1", "selectors": "unix:uid:1000"}))
		st := resp.Results[i].GetStatus()
		if st.GetCode() == 0 {
			wantFields(t, l, map[string]string{"status": "success", "entry_id": resp.Results[i].GetEntry().GetId()})
		} else {
			wantFields(t, l, map[string]string{"status": "error", "status_code": codes.Code(st.GetCode()).String()})
		}
	}
	id := resp.Results[0].GetEntry().GetId()
	if _, err := entries.BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: []string{id, "missing"}}); err != nil {
		t.Fatal(err)
	}
	lines = capture.take(t, 2)
	if len(lines) != 2 {
		t.Fatalf("delete batch: %d lines", len(lines))
	}
	wantFields(t, lines[0], map[string]string{"method": "BatchDeleteEntry", "entry_id": id, "status": "success"})
	wantFields(t, lines[1], map[string]string{"method": "BatchDeleteEntry", "entry_id": "missing", "status": "error", "status_code": "NotFound"})

	// A minted JWT-SVID: the ID and audience, never the token.
	jwt, err := svidv1.NewSVIDClient(h.localConn()).MintJWTSVID(ctx, &svidv1.MintJWTSVIDRequest{
		Id: &types.SPIFFEID{TrustDomain: "example.org", Path: "/w2"}, Audience: []string{"aud1", "aud2"}, Ttl: 60})
	if err != nil {
		t.Fatal(err)
	}
	wantFields(t, only(t, capture.take(t, 1)), map[string]string{"method": "MintJWTSVID", "spiffe_id": "spiffe://example.org/w2", "audience": "aud1,aud2", "ttl": "60", "status": "success"})

	// An agent's call: its SPIFFE ID; a call it may not make: refused,
	// still identified.
	agentConn := h.svidConn(svid)
	if _, err := agentv1.NewAgentClient(agentConn).PostStatus(ctx, &agentv1.PostStatusRequest{AgentVersion: "9.9.9"}); err != nil {
		t.Fatal(err)
	}
	wantFields(t, only(t, capture.take(t, 1)), map[string]string{"method": "PostStatus", "caller_id": svid.ID.String(), "version": "9.9.9", "status": "success"})
	_, err = entryv1.NewEntryClient(agentConn).ListEntries(ctx, &entryv1.ListEntriesRequest{Filter: &entryv1.ListEntriesRequest_Filter{
		BySpiffeId: &types.SPIFFEID{TrustDomain: "example.org", Path: "/w1"}}})
	requireCode(t, err, codes.PermissionDenied)
	wantFields(t, only(t, capture.take(t, 1)), map[string]string{"method": "ListEntries", "caller_id": svid.ID.String(), "status": "error",
		"status_code": "PermissionDenied", "by_spiffe_id": "spiffe://example.org/w1"})

	// A ban.
	if _, err := agentv1.NewAgentClient(h.localConn()).BanAgent(ctx, &agentv1.BanAgentRequest{Id: &types.SPIFFEID{TrustDomain: "example.org", Path: svid.ID.Path()}}); err != nil {
		t.Fatal(err)
	}
	wantFields(t, only(t, capture.take(t, 1)), with(local, map[string]string{"method": "BanAgent", "spiffe_id": svid.ID.String(), "status": "success"}))

	// Never a secret, in any line written.
	all := capture.text()
	if !strings.Contains(all, "CreateJoinToken") {
		t.Fatal("the capture lost earlier lines")
	}
	for _, secret := range []string{unused, "guessed-token-value", jwt.GetSvid().GetToken()} {
		if strings.Contains(all, secret) {
			t.Fatalf("the audit log holds a secret %q", secret)
		}
	}
}
