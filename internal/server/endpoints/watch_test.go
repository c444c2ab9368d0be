package endpoints_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
	agentapi "github.com/sigil-spiffe/sigil/internal/server/api/agent"
	entryapi "github.com/sigil-spiffe/sigil/internal/server/api/entry"
	"github.com/sigil-spiffe/sigil/internal/server/endpoints"
)

// failAfter bounds a wait that must complete: it only turns a hang into a
// failure and asserts nothing about speed.
const failAfter = 30 * time.Second

// attestedAgent attests a new agent with a join token and gives it one
// workload entry.
func (h *harness) attestedAgent(token string) *x509svid.SVID {
	h.t.Helper()
	h.createToken(&agentv1.CreateJoinTokenRequest{Token: token})
	svid, err := h.attest(h.anonConn(), token, newKey(h.t))
	if err != nil {
		h.t.Fatalf("attest %s: %v", token, err)
	}
	h.createEntry(&datastore.Entry{SPIFFEID: "spiffe://example.org/w/" + token, ParentID: svid.ID.String(),
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:1"}}})
	return svid
}

// openWatch opens a watch-mode SyncAuthorizedEntries stream on conn and
// reads its first round, which must hold want entries.
func openWatch(t *testing.T, ctx context.Context, conn *grpc.ClientConn, want int) entryv1.Entry_SyncAuthorizedEntriesClient {
	t.Helper()
	ctx = metadata.AppendToOutgoingContext(ctx, entryapi.SyncModeHeader, entryapi.SyncModeWatch)
	stream, err := entryv1.NewEntryClient(conn).SyncAuthorizedEntries(ctx)
	if err != nil {
		t.Fatalf("SyncAuthorizedEntries: %v", err)
	}
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{}); err != nil {
		t.Fatalf("send first request: %v", err)
	}
	requireRound(t, stream, want)
	md, err := stream.Header()
	if err != nil || len(md.Get(entryapi.SyncModeHeader)) != 1 || md.Get(entryapi.SyncModeHeader)[0] != entryapi.SyncModeWatch {
		t.Fatalf("watch mode not confirmed: header %v, %v", md, err)
	}
	return stream
}

// requireRound reads one full round of want entries.
func requireRound(t *testing.T, stream entryv1.Entry_SyncAuthorizedEntriesClient, want int) {
	t.Helper()
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("receive round: %v", err)
	}
	if len(resp.Entries) != want || resp.More || len(resp.EntryRevisions) != 0 {
		t.Fatalf("round = %d entries (more=%v, %d revisions), want %d entries", len(resp.Entries), resp.More, len(resp.EntryRevisions), want)
	}
}

func TestWatchStreamEndsWhenAgentIsBannedOrDeleted(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), failAfter)
	defer cancel()
	admin := agentv1.NewAgentClient(h.localConn())

	bystander := h.attestedAgent("bystander")
	bystanderStream := openWatch(t, ctx, h.svidConn(bystander), 1)

	for _, tc := range []struct {
		name       string
		remove     func(id *types.SPIFFEID) error
		wantReason types.PermissionDeniedDetails_Reason
	}{
		{"ban", func(id *types.SPIFFEID) error {
			_, err := admin.BanAgent(ctx, &agentv1.BanAgentRequest{Id: id})
			return err
		}, types.PermissionDeniedDetails_AGENT_BANNED},
		{"delete", func(id *types.SPIFFEID) error {
			_, err := admin.DeleteAgent(ctx, &agentv1.DeleteAgentRequest{Id: id})
			return err
		}, types.PermissionDeniedDetails_AGENT_NOT_ATTESTED},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svid := h.attestedAgent("victim-" + tc.name)
			stream := openWatch(t, ctx, h.svidConn(svid), 1)

			if err := tc.remove(&types.SPIFFEID{TrustDomain: td.Name(), Path: svid.ID.Path()}); err != nil {
				t.Fatalf("%s agent: %v", tc.name, err)
			}
			// The node change wakes the stream, which re-checks the agent.
			resp, err := stream.Recv()
			if err == nil {
				t.Fatalf("stream still open after %s: got a round of %d entries", tc.name, len(resp.Entries))
			}
			requireCode(t, err, codes.PermissionDenied)
			if r := deniedReason(err); r != tc.wantReason {
				t.Fatalf("reason = %v (%v), want %v", r, err, tc.wantReason)
			}
		})
	}

	// The agent in good standing keeps its stream and still gets changes.
	h.createEntry(&datastore.Entry{SPIFFEID: "spiffe://example.org/w/bystander-2", ParentID: bystander.ID.String(),
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:2"}}})
	requireRound(t, bystanderStream, 2)
}

func TestRunEndsOpenStreamsOnStop(t *testing.T) {
	// A grace longer than failAfter: only a stop that ends the streams
	// itself lets Run return before the wait below gives up.
	h := newHarness(t, harnessOpts{endpoints: endpoints.Config{GracefulStopTimeout: 2 * failAfter}})
	ctx, cancel := context.WithTimeout(context.Background(), failAfter)
	defer cancel()

	agent := h.attestedAgent("agent-1")
	stream := openWatch(t, ctx, h.svidConn(agent), 1)
	// A health watch on the admin socket is a long-lived stream too.
	hw, err := grpc_health_v1.NewHealthClient(h.localConn()).Watch(ctx, &grpc_health_v1.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := hw.Recv(); err != nil || r.Status != grpc_health_v1.HealthCheckResponse_SERVING {
		t.Fatalf("health watch: %v, %v", r, err)
	}

	h.cancel()
	select {
	case <-h.stopped:
	case <-ctx.Done():
		t.Fatal("Run did not return while watch streams were open")
	}
	if h.runErr() != nil {
		t.Fatalf("Run: %v", h.runErr())
	}

	_, err = stream.Recv()
	requireCode(t, err, codes.Unavailable)
	if msg := status.Convert(err).Message(); msg != status.Convert(endpoints.ErrShuttingDown).Message() {
		t.Fatalf("watch stream ended with %q, want the server's shutdown status", msg)
	}
	for {
		r, err := hw.Recv()
		if err != nil {
			requireCode(t, err, codes.Unavailable)
			break
		}
		if r.Status != grpc_health_v1.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("health watch after stop: %v", r.Status)
		}
	}
}

// stuckAttestor blocks, ignoring its context, until released: a handler
// that does not notice shutdown.
type stuckAttestor struct {
	entered chan struct{}
	release chan struct{}
}

func (a stuckAttestor) Attest(context.Context, []byte, node.ChallengeFunc) (*node.Result, error) {
	close(a.entered)
	<-a.release
	return nil, errors.New("released")
}

func TestRunCutsStuckStreamsAfterGrace(t *testing.T) {
	a := stuckAttestor{entered: make(chan struct{}), release: make(chan struct{})}
	h := newHarness(t, harnessOpts{
		attestors: map[string]agentapi.NodeAttestor{"stuck": a},
		endpoints: endpoints.Config{GracefulStopTimeout: 100 * time.Millisecond},
	})
	defer close(a.release)
	ctx, cancel := context.WithTimeout(context.Background(), failAfter)
	defer cancel()

	stream, err := agentv1.NewAgentClient(h.anonConn()).AttestAgent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{Params: &agentv1.AttestAgentRequest_Params{
		Data:   &types.AttestationData{Type: "stuck", Payload: []byte("x")},
		Params: &agentv1.AgentX509SVIDParams{Csr: csrFor(t, newKey(t))},
	}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.entered:
	case <-ctx.Done():
		t.Fatal("attestor not called")
	}

	h.cancel()
	select {
	case <-h.stopped:
	case <-ctx.Done():
		t.Fatal("Run did not return with a stuck stream handler")
	}
	_, err = stream.Recv()
	requireCode(t, err, codes.Unavailable)
}

// pingCounter wraps client transport credentials and counts the HTTP/2
// PING frames (not acks) the server sends, read from the decrypted stream.
type pingCounter struct {
	credentials.TransportCredentials
	pings *atomic.Int64
}

func (c pingCounter) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, ai, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		return nil, nil, err
	}
	return &frameSniffer{Conn: conn, pings: c.pings}, ai, nil
}

func (c pingCounter) Clone() credentials.TransportCredentials {
	return pingCounter{TransportCredentials: c.TransportCredentials.Clone(), pings: c.pings}
}

// frameSniffer follows the HTTP/2 frames read through it.
type frameSniffer struct {
	net.Conn
	pings *atomic.Int64
	hdr   []byte // partial frame header
	skip  int    // payload bytes of the current frame still to come
}

func (f *frameSniffer) Read(p []byte) (int, error) {
	n, err := f.Conn.Read(p)
	b := p[:n]
	for len(b) > 0 {
		if f.skip > 0 {
			k := min(f.skip, len(b))
			f.skip -= k
			b = b[k:]
			continue
		}
		k := min(9-len(f.hdr), len(b))
		f.hdr = append(f.hdr, b[:k]...)
		b = b[k:]
		if len(f.hdr) == 9 {
			length := int(f.hdr[0])<<16 | int(f.hdr[1])<<8 | int(f.hdr[2])
			const typePing, flagAck = 0x6, 0x1
			if f.hdr[3] == typePing && f.hdr[4]&flagAck == 0 {
				f.pings.Add(1)
			}
			f.skip, f.hdr = length, f.hdr[:0]
		}
	}
	return n, err
}

// keepaliveConn is svidConn with client keepalive kp (nil: none), counting
// the server's pings.
func (h *harness) keepaliveConn(svid *x509svid.SVID, kp *keepalive.ClientParameters, pings *atomic.Int64) *grpc.ClientConn {
	cfg := tlsconfig.MTLSClientConfig(svid, h.bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromPath(td, "/spire/server")))
	var opts []grpc.DialOption
	if kp != nil {
		opts = append(opts, grpc.WithKeepaliveParams(*kp))
	}
	return h.dial(pingCounter{TransportCredentials: credentials.NewTLS(cfg), pings: pings}, opts...)
}

// idleThenRound keeps stream idle for d, then checks it is alive: a new
// entry for agent must arrive as a round of want entries.
func idleThenRound(t *testing.T, h *harness, stream entryv1.Entry_SyncAuthorizedEntriesClient, agent spiffeid.ID, d time.Duration, want int) {
	t.Helper()
	time.Sleep(d)
	h.createEntry(&datastore.Entry{SPIFFEID: "spiffe://example.org/w/after-idle", ParentID: agent.String(),
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:3"}}})
	requireRound(t, stream, want)
}

// The server pings an idle watch connection every KeepaliveTime; the
// client answers and the stream survives several intervals.
func TestKeepaliveServerPingsIdleWatchStream(t *testing.T) {
	h := newHarness(t, harnessOpts{endpoints: endpoints.Config{KeepaliveTime: time.Second, KeepaliveTimeout: 2 * time.Second}})
	ctx, cancel := context.WithTimeout(context.Background(), failAfter)
	defer cancel()
	agent := h.attestedAgent("agent-1")
	var pings atomic.Int64
	stream := openWatch(t, ctx, h.keepaliveConn(agent, nil, &pings), 1)

	// Pings sent while the watch was set up (BDP estimation) are not
	// keepalive: count from here. The client sends nothing meanwhile, so
	// only keepalive makes the server ping.
	before := pings.Load()
	idleThenRound(t, h, stream, agent.ID, 4*time.Second, 2)
	if got := pings.Load() - before; got < 2 {
		t.Fatalf("server sent %d pings on the connection idle for 4 keepalive intervals, want at least 2", got)
	}
}

// The agent client pings every 15s, PermitWithoutStream (internal/agent/
// client). gRPC clients cannot ping more often than every 10s, so this
// uses 10s: stricter than the agent, against the server's default
// enforcement (DefaultKeepaliveMinTime). The server sends a
// "too_many_pings" GOAWAY, ending the stream, on the third ping that comes
// too early; the control (a MinTime above the client's interval) shows the
// test detects that.
func TestKeepaliveAgentPingsAreAccepted(t *testing.T) {
	if testing.Short() {
		t.Skip("holds idle streams across three 10s client keepalive intervals")
	}
	clientKP := keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}
	if endpoints.DefaultKeepaliveMinTime > clientKP.Time {
		t.Fatalf("DefaultKeepaliveMinTime %s exceeds the client ping interval %s", endpoints.DefaultKeepaliveMinTime, clientKP.Time)
	}
	idle := 3*clientKP.Time + 5*time.Second
	for _, tc := range []struct {
		name    string
		minTime time.Duration // 0: the default
		wantOK  bool
	}{
		{"default enforcement", 0, true},
		{"control: stricter than the client", 3 * clientKP.Time, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOpts{endpoints: endpoints.Config{KeepaliveMinTime: tc.minTime}})
			ctx, cancel := context.WithTimeout(context.Background(), idle+failAfter)
			defer cancel()
			agent := h.attestedAgent("agent-1")
			var pings atomic.Int64
			stream := openWatch(t, ctx, h.keepaliveConn(agent, &clientKP, &pings), 1)
			if tc.wantOK {
				idleThenRound(t, h, stream, agent.ID, idle, 2)
				return
			}
			_, err := stream.Recv()
			requireCode(t, err, codes.Unavailable)
			if !strings.Contains(status.Convert(err).Message(), "too_many_pings") {
				t.Fatalf("stream ended with %v, want a too_many_pings GOAWAY", err)
			}
		})
	}
}
