// Package stack assembles a real Sigil server (SQLite, disk keys) and
// agents in-process for the end-to-end benchmarks, the way
// internal/app/dev does: the admin API is driven with the spire-api-sdk
// clients over the server's unix socket, agents attest with join tokens.
//
// It takes a testing.TB so setup failures stop the benchmark, and
// registers every shutdown with TB.Cleanup. Use it only from _test.go files.
package stack

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
	agentapp "github.com/sigil-spiffe/sigil/internal/app/agent"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
)

// TrustDomain is the benchmarks' trust domain.
var TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")

// Logger is what the components log to: a text handler at the default
// production level (INFO) writing to io.Discard, so per-request log
// formatting is part of what is measured, as it would be in production.
func Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// Server is a running in-process sigil-server with admin clients.
type Server struct {
	Dir     string // short temp dir holding the data dir and sockets
	Socket  string // admin unix socket
	Addr    string // agent endpoint host:port
	Conn    *grpc.ClientConn
	Agents  agentv1.AgentClient
	Entries entryv1.EntryClient
	Bundles bundlev1.BundleClient
	SVIDs   svidv1.SVIDClient
	// Pid is the server's process ID when it runs as a separate process
	// (StartServerProcess), 0 when in-process.
	Pid int

	proc     *testutil.Process // set by StartServerProcess
	agentSeq atomic.Int64
}

// ShortTempDir returns a fresh directory with a short name (unix socket
// paths are limited to 108 bytes; b.TempDir names are long), removed on
// cleanup.
func ShortTempDir(tb testing.TB) string { return testutil.ShortTempDir(tb) }

// StartServer runs a server on SQLite with a disk key manager and the
// join_token attestor, rate limits at their defaults, until cleanup.
// BENCH_SQLITE_SYNCHRONOUS, when set, is the datastore's
// sqlite_synchronous ("full", the default, or "normal"), to compare the
// two in one binary.
func StartServer(tb testing.TB) *Server {
	tb.Helper()
	dir := ShortTempDir(tb)
	port, err := testutil.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	cfg := inproc.ServerConfig(TrustDomain, filepath.Join(dir, "server"), filepath.Join(dir, "server.sock"), port)
	cfg.SetPlugin(inproc.SQLDataStore(cfg.DataDir, os.Getenv("BENCH_SQLITE_SYNCHRONOUS")))
	srv, err := inproc.StartServer(cfg, Logger(), serverapp.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := srv.Stop(); err != nil && !errors.Is(err, context.Canceled) {
			tb.Logf("server stopped: %v", err)
		}
	})
	s := dialAdmin(tb, cfg.SocketPath, srv.Srv.TCPAddr().String())
	s.Dir = dir
	return s
}

// StartServerProcess runs a real sigil-server binary (built once per test
// binary by internal/testutil; SQLite, disk keys, join_token, log level
// INFO to a file) so its CPU time can be measured apart from the client's
// (ProcessCPUTime). The caller's TestMain must call testutil.Main.
func StartServerProcess(tb testing.TB) *Server {
	tb.Helper()
	p := testutil.StartServer(tb, testutil.ServerConfig{TrustDomain: TrustDomain.Name(), LogLevel: "INFO"})
	tb.Cleanup(func() { _ = p.Proc.Stop() }) // graceful first; testutil kills as a fallback
	s := dialAdmin(tb, p.Config.SocketPath, p.Addr())
	s.Dir, s.Pid, s.proc = p.Config.DataDir, p.Proc.Pid(), p.Proc
	return s
}

func dialAdmin(tb testing.TB, socket, addr string) *Server {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return &Server{
		Socket:  socket,
		Addr:    addr,
		Conn:    conn,
		Agents:  agentv1.NewAgentClient(conn),
		Entries: entryv1.NewEntryClient(conn),
		Bundles: bundlev1.NewBundleClient(conn),
		SVIDs:   svidv1.NewSVIDClient(conn),
	}
}

// JoinToken creates a join token for a new agent SPIFFE ID.
func (s *Server) JoinToken(tb testing.TB) (token string, agentID spiffeid.ID) {
	tb.Helper()
	agentID = spiffeid.RequireFromSegments(TrustDomain, "bench", "agent", fmt.Sprint(s.agentSeq.Add(1)))
	resp, err := s.Agents.CreateJoinToken(context.Background(), &agentv1.CreateJoinTokenRequest{
		Ttl:     600,
		AgentId: &types.SPIFFEID{TrustDomain: TrustDomain.Name(), Path: agentID.Path()},
	})
	if err != nil {
		tb.Fatalf("create join token: %v", err)
	}
	return resp.Value, agentID
}

// Entry builds a registration entry for id under parent with one selector
// ("unix", value).
func Entry(parent, id spiffeid.ID, unixSelector string) *types.Entry {
	return &types.Entry{
		SpiffeId:  &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()},
		ParentId:  &types.SPIFFEID{TrustDomain: parent.TrustDomain().Name(), Path: parent.Path()},
		Selectors: []*types.Selector{{Type: "unix", Value: unixSelector}},
	}
}

// CreateEntries creates entries (at most the API's batch size per call is
// the caller's business) and returns their IDs; any failure is fatal.
func (s *Server) CreateEntries(tb testing.TB, entries ...*types.Entry) []string {
	tb.Helper()
	ids, err := s.TryCreateEntries(context.Background(), entries...)
	if err != nil {
		tb.Fatal(err)
	}
	return ids
}

// TryCreateEntries is CreateEntries returning the error, for use off the
// benchmark goroutine.
func (s *Server) TryCreateEntries(ctx context.Context, entries ...*types.Entry) ([]string, error) {
	resp, err := s.Entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: entries})
	if err != nil {
		return nil, fmt.Errorf("BatchCreateEntry: %w", err)
	}
	ids := make([]string, len(resp.Results))
	for i, r := range resp.Results {
		if r.GetStatus().GetCode() != int32(codes.OK) {
			return nil, fmt.Errorf("BatchCreateEntry result %d: %s", i, r.GetStatus().GetMessage())
		}
		ids[i] = r.GetEntry().GetId()
	}
	return ids, nil
}

// DeleteEntries deletes entries by ID.
func (s *Server) DeleteEntries(ctx context.Context, ids ...string) error {
	resp, err := s.Entries.BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: ids})
	if err != nil {
		return fmt.Errorf("BatchDeleteEntry: %w", err)
	}
	for i, r := range resp.Results {
		if r.GetStatus().GetCode() != int32(codes.OK) {
			return fmt.Errorf("BatchDeleteEntry result %d: %s", i, r.GetStatus().GetMessage())
		}
	}
	return nil
}

// BundleCerts returns the server's X.509 authorities.
func (s *Server) BundleCerts(tb testing.TB) []*x509.Certificate {
	tb.Helper()
	resp, err := s.Bundles.GetBundle(context.Background(), &bundlev1.GetBundleRequest{})
	if err != nil {
		tb.Fatalf("get bundle: %v", err)
	}
	var certs []*x509.Certificate
	for _, a := range resp.X509Authorities {
		c, err := x509.ParseCertificate(a.Asn1)
		if err != nil {
			tb.Fatalf("parse bundle: %v", err)
		}
		certs = append(certs, c)
	}
	return certs
}

// AttestedClient attests a new agent with a join token through
// internal/agent/client and returns a client connected with its SVID (mTLS).
func (s *Server) AttestedClient(tb testing.TB) (*client.Client, spiffeid.ID) {
	tb.Helper()
	token, agentID := s.JoinToken(tb)
	bundle := s.BundleCerts(tb)
	bootstrap, err := client.Dial(client.Config{Addr: s.Addr, TrustDomain: TrustDomain, Bundle: func() []*x509.Certificate { return bundle }})
	if err != nil {
		tb.Fatal(err)
	}
	defer bootstrap.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		tb.Fatal(err)
	}
	chain, err := bootstrap.AttestJoinToken(context.Background(), token, csr)
	if err != nil {
		tb.Fatalf("attest: %v", err)
	}
	svid := &x509svid.SVID{ID: agentID, Certificates: chain, PrivateKey: key}
	c, err := client.Dial(client.Config{
		Addr:        s.Addr,
		TrustDomain: TrustDomain,
		Bundle:      func() []*x509.Certificate { return bundle },
		SVID:        func() *x509svid.SVID { return svid },
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c, agentID
}

// WriteBundlePEM writes the server's bundle to dir/bundle.pem.
func (s *Server) WriteBundlePEM(tb testing.TB, dir string) string {
	tb.Helper()
	var data []byte
	for _, c := range s.BundleCerts(tb) {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	path := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}

// AgentConfig returns the configuration of an agent with data dir dir
// (created), the unix workload attestor and, when token is set, join-token
// attestation.
func (s *Server) AgentConfig(tb testing.TB, dir, token string) *config.Agent {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	host, port, err := net.SplitHostPort(s.Addr)
	if err != nil {
		tb.Fatal(err)
	}
	portNum, err := strconv.Atoi(port)
	if err != nil {
		tb.Fatal(err)
	}
	cfg := inproc.AgentConfig(TrustDomain, dir, filepath.Join(dir, "api.sock"), host, portNum, s.WriteBundlePEM(tb, dir), token)
	if err := cfg.Validate(); err != nil {
		tb.Fatalf("agent configuration: %v", err)
	}
	return cfg
}

// Agent is a running in-process agent.
type Agent struct {
	Socket string // Workload API address, "unix://..."
	a      *inproc.Agent
}

// StartAgent builds and runs an agent until Stop or cleanup, and waits for
// its Workload API socket.
func StartAgent(tb testing.TB, cfg *config.Agent) *Agent {
	tb.Helper()
	a, err := RunAgent(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(a.Stop)
	return a
}

// RunAgent is StartAgent without a TB: agent.New, Run in a goroutine, wait
// for Ready. The caller must Stop it.
func RunAgent(cfg *config.Agent) (*Agent, error) {
	a, err := inproc.StartAgent(cfg, Logger(), agentapp.Options{})
	if err != nil {
		return nil, err
	}
	return &Agent{Socket: a.SocketAddr(), a: a}, nil
}

// Stop stops the agent and waits for Run to return. It is idempotent.
func (a *Agent) Stop() { _ = a.a.Stop() }
