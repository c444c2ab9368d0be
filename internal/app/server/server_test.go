package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/client"

	"github.com/sigil-spiffe/sigil/internal/config"
)

// TestRestartKeepsCAAndEntries runs the assembled server twice on one data
// dir: the second run has the same trust bundle (same CA, same JWT key) and
// the entries created in the first.
func TestRestartKeepsCAAndEntries(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)

	type state struct {
		bundle  *types.Bundle
		entries []*types.Entry
	}
	run := func(create bool) state {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		srv, err := New(ctx, cfg, slog.New(slog.DiscardHandler), Options{})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- srv.Run(runCtx) }()
		defer func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
		select {
		case <-srv.Ready():
		case err := <-done:
			t.Fatalf("server stopped: %v", err)
		}
		conn, err := grpc.NewClient("unix://"+cfg.SocketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if create {
			resp, err := entryv1.NewEntryClient(conn).BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{{
				SpiffeId:  &types.SPIFFEID{TrustDomain: "example.org", Path: "/web"},
				ParentId:  &types.SPIFFEID{TrustDomain: "example.org", Path: "/node"},
				Selectors: []*types.Selector{{Type: "unix", Value: "uid:1000"}},
			}}})
			if err != nil || resp.Results[0].Status.Code != 0 {
				t.Fatalf("create entry: %v %v", err, resp)
			}
		}
		b, err := bundlev1.NewBundleClient(conn).GetBundle(ctx, &bundlev1.GetBundleRequest{})
		if err != nil {
			t.Fatal(err)
		}
		l, err := entryv1.NewEntryClient(conn).ListEntries(ctx, &entryv1.ListEntriesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return state{bundle: b, entries: l.Entries}
	}
	first := run(true)
	second := run(false)

	if len(first.bundle.X509Authorities) == 0 || len(first.bundle.JwtAuthorities) == 0 {
		t.Fatalf("first run published no authorities: %v", first.bundle)
	}
	if len(second.bundle.X509Authorities) != len(first.bundle.X509Authorities) {
		t.Fatalf("X.509 authorities changed across restart: %d -> %d", len(first.bundle.X509Authorities), len(second.bundle.X509Authorities))
	}
	for i := range first.bundle.X509Authorities {
		if string(first.bundle.X509Authorities[i].Asn1) != string(second.bundle.X509Authorities[i].Asn1) {
			t.Fatal("the CA changed across a restart")
		}
	}
	if first.bundle.JwtAuthorities[0].KeyId != second.bundle.JwtAuthorities[0].KeyId {
		t.Fatal("the JWT signing key changed across a restart")
	}
	if len(second.entries) != 1 || second.entries[0].Id != first.entries[0].Id {
		t.Fatalf("entries after restart: %v, want %v", second.entries, first.entries)
	}
}

func testConfig(t *testing.T, dir string) *config.Server {
	t.Helper()
	cfg := config.DefaultServer()
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = "127.0.0.1"
	cfg.BindPort = 0
	cfg.SocketPath = filepath.Join(dir, "api.sock")
	cfg.Plugins = []config.Plugin{
		config.NewPlugin("DataStore", "sql", map[string]any{"database_type": "sqlite3", "connection_string": filepath.Join(dir, "data", "ds.sqlite3")}),
		config.NewPlugin("KeyManager", "disk", map[string]any{"keys_path": filepath.Join(dir, "data", "keys")}),
		config.NewPlugin("NodeAttestor", "join_token", nil),
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestJoinTokenNeedsItsNodeAttestor: without NodeAttestor "join_token" in
// the config, a valid join token does not attest an agent.
func TestJoinTokenNeedsItsNodeAttestor(t *testing.T) {
	for _, enabled := range []bool{true, false} {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		if !enabled {
			cfg.Plugins = cfg.Plugins[:2] // no NodeAttestor "join_token"
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		srv, err := New(ctx, cfg, slog.New(slog.DiscardHandler), Options{})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		<-srv.Ready()

		conn, err := grpc.NewClient("unix://"+cfg.SocketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := agentv1.NewAgentClient(conn).CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{Ttl: 600})
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		cl, err := client.Dial(client.Config{Addr: srv.TCPAddr().String(), TrustDomain: cfg.TrustDomain, InsecureBootstrap: true})
		if err != nil {
			t.Fatal(err)
		}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		_, err = cl.AttestJoinToken(ctx, tok.Value, csr)
		cl.Close()
		switch {
		case enabled && err != nil:
			t.Errorf("join_token enabled: attestation failed: %v", err)
		case !enabled && status.Code(err) != codes.FailedPrecondition:
			t.Errorf("join_token not configured: attestation got %v, want FailedPrecondition", err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

// TestSQLiteSynchronousIsWired: the datastore opens with the configured
// sqlite_synchronous (its "Datastore opened" line says which), FULL when
// unset.
func TestSQLiteSynchronousIsWired(t *testing.T) {
	for _, c := range []struct{ set, want string }{{"", "synchronous=full"}, {"normal", "synchronous=normal"}, {"full", "synchronous=full"}} {
		cfg := testConfig(t, t.TempDir())
		data := map[string]any{"database_type": "sqlite3", "connection_string": filepath.Join(cfg.DataDir, "ds.sqlite3")}
		if c.set != "" {
			data["sqlite_synchronous"] = c.set
		}
		cfg.SetPlugin(config.NewPlugin("DataStore", "sql", data))
		var logs strings.Builder
		srv, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(&logs, nil)), Options{})
		if err != nil {
			t.Fatal(err)
		}
		srv.Close()
		var opened string
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, `msg="Datastore opened"`) {
				opened = line
			}
		}
		if !strings.Contains(opened, c.want) {
			t.Errorf("sqlite_synchronous %q: %q, want %s", c.set, opened, c.want)
		}
	}
}
