package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
)

// TestRestartKeepsCAAndEntries runs the assembled server twice on one data
// dir: the second run has the same trust bundle (same CA, same JWT key) and
// the entries created in the first.
func TestRestartKeepsCAAndEntries(t *testing.T) {
	cfg := testConfig(t, testutil.ShortTempDir(t))

	type state struct {
		bundle  *types.Bundle
		entries []*types.Entry
	}
	run := func(create bool) state {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		srv := inproc.RunServer(t, cfg, nil, server.Options{})
		defer srv.StopT(t)
		adm := srv.Admin(t)
		if create {
			adm.CreateEntry(t, spiffeid.RequireFromPath(td, "/web"), spiffeid.RequireFromPath(td, "/node"), "unix:uid:1000")
		}
		b, err := adm.Bundle.GetBundle(ctx, &bundlev1.GetBundleRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return state{bundle: b, entries: adm.ListEntries(t)}
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

var td = spiffeid.RequireTrustDomainFromString("example.org")

func testConfig(t *testing.T, dir string) *config.Server {
	t.Helper()
	cfg := inproc.ServerConfig(td, filepath.Join(dir, "data"), filepath.Join(dir, "api.sock"), 0)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestJoinTokenNeedsItsNodeAttestor: without NodeAttestor "join_token" in
// the config, a valid join token does not attest an agent.
func TestJoinTokenNeedsItsNodeAttestor(t *testing.T) {
	for _, enabled := range []bool{true, false} {
		cfg := testConfig(t, testutil.ShortTempDir(t))
		if !enabled { // no NodeAttestor "join_token"
			cfg.Plugins = slices.DeleteFunc(cfg.Plugins, func(p config.Plugin) bool { return p.Type == "NodeAttestor" })
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		srv := inproc.RunServer(t, cfg, nil, server.Options{})
		tok := srv.Admin(t).CreateJoinToken(t, spiffeid.ID{})
		cl, err := client.Dial(client.Config{Addr: srv.Addr(), TrustDomain: cfg.TrustDomain, InsecureBootstrap: true})
		if err != nil {
			t.Fatal(err)
		}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		_, err = cl.AttestJoinToken(ctx, tok, csr)
		cl.Close()
		switch {
		case enabled && err != nil:
			t.Errorf("join_token enabled: attestation failed: %v", err)
		case !enabled && status.Code(err) != codes.FailedPrecondition:
			t.Errorf("join_token not configured: attestation got %v, want FailedPrecondition", err)
		}
		cancel()
		srv.StopT(t)
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
		srv, err := server.New(context.Background(), cfg, slog.New(slog.NewTextHandler(&logs, nil)), server.Options{})
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

// rawPayload is an agent half that sends fixed attestation data and has no
// answer to a challenge.
type rawPayload []byte

func (p rawPayload) Payload() []byte { return p }
func (rawPayload) Respond(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("no challenge expected")
}

// TestSeveralNodeAttestorsWired: every NodeAttestor block of the file is
// built by the catalog and reaches the agent API, which picks one by the
// attestation type the agent sends: join_token attests, tpm answers for
// itself (malformed data: InvalidArgument), x509pop, not configured, is
// FailedPrecondition.
func TestSeveralNodeAttestorsWired(t *testing.T) {
	cfg := testConfig(t, testutil.ShortTempDir(t))
	cfg.SetPlugin(config.NewPlugin("NodeAttestor", "tpm", map[string]any{"ek_hashes": []string{strings.Repeat("ab", 32)}}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := inproc.RunServer(t, cfg, nil, server.Options{})
	defer srv.StopT(t)
	tok := srv.Admin(t).CreateJoinToken(t, spiffeid.ID{})
	cl, err := client.Dial(client.Config{Addr: srv.Addr(), TrustDomain: cfg.TrustDomain, InsecureBootstrap: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)

	if _, err := cl.AttestJoinToken(ctx, tok, csr); err != nil {
		t.Errorf("join_token: %v", err)
	}
	_, err = cl.AttestAgent(ctx, "tpm", rawPayload("{not tpm data"), csr)
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("tpm with malformed data: %v, want InvalidArgument from the tpm attestor", err)
	}
	_, err = cl.AttestAgent(ctx, "x509pop", rawPayload("data"), csr)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `could not find node attestor type "x509pop"`) {
		t.Errorf("x509pop, not configured: %v, want FailedPrecondition", err)
	}
}
