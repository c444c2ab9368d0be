package adminclient_test

import (
	"context"
	"encoding/pem"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// Every helper against a real server: join tokens, entries (a refused
// batch result is a status error with its code), listing, deleting, the
// bundle as PEM and as a SPIFFE bundle.
func TestAgainstServer(t *testing.T) {
	dir := testutil.ShortTempDir(t)
	cfg := inproc.ServerConfig(td, filepath.Join(dir, "data"), filepath.Join(dir, "api.sock"), 0)
	inproc.RunServer(t, cfg, nil, serverapp.Options{})
	c, err := adminclient.Dial(cfg.SocketPath, td)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	agentID := spiffeid.RequireFromPath(td, "/agent/a")
	if tok, err := c.CreateJoinToken(ctx, agentID, time.Minute); err != nil || tok == "" {
		t.Fatalf("join token: %q %v", tok, err)
	}
	if tok, err := c.CreateJoinToken(ctx, spiffeid.ID{}, time.Minute); err != nil || c.JoinTokenAgentID(tok).Path() != "/spire/agent/join_token/"+tok {
		t.Fatalf("join token without agent ID: %q %v", tok, err)
	}

	e, err := adminclient.NewEntry(spiffeid.RequireFromPath(td, "/w"), agentID, "unix:uid:1000", "unix:gid:1000")
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.CreateEntry(ctx, e)
	if err != nil || id == "" {
		t.Fatalf("create entry: %q %v", id, err)
	}
	if _, err := c.CreateEntry(ctx, e); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("create the entry again: %v, want AlreadyExists", err)
	}
	if _, err := adminclient.NewEntry(agentID, agentID, "nocolon"); err == nil {
		t.Fatal("selector without type accepted")
	}
	// The join token with an agent ID added an alias entry for it.
	entries, err := c.ListEntries(ctx)
	if err != nil || len(entries) != 2 {
		t.Fatalf("list entries: %v %v", entries, err)
	}
	for _, got := range entries {
		if got.GetId() == id && len(got.GetSelectors()) != 2 {
			t.Fatalf("entry %s has selectors %v", id, got.GetSelectors())
		}
	}
	if err := c.DeleteAgent(ctx, c.JoinTokenAgentID("unknown")); status.Code(err) != codes.NotFound {
		t.Fatalf("delete an unknown agent: %v, want NotFound", err)
	}
	if err := c.DeleteEntries(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteEntries(ctx, id); status.Code(err) != codes.NotFound {
		t.Fatalf("delete the entry again: %v, want NotFound", err)
	}
	if agents, err := c.ListAgents(ctx); err != nil || len(agents) != 0 {
		t.Fatalf("list agents: %v %v", agents, err)
	}
	if err := c.BanAgent(ctx, c.JoinTokenAgentID("unknown")); status.Code(err) != codes.NotFound {
		t.Fatalf("ban an unknown agent: %v, want NotFound", err)
	}

	b, err := c.SPIFFEBundle(ctx)
	if err != nil || len(b.X509Authorities()) == 0 || len(b.JWTAuthorities()) == 0 || b.TrustDomain() != td {
		t.Fatalf("bundle: %v %v", b, err)
	}
	pemData, err := c.BundlePEM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemData)
	if block == nil || block.Type != "CERTIFICATE" || string(block.Bytes) != string(b.X509Authorities()[0].Raw) {
		t.Fatalf("bundle PEM does not start with the first X.509 authority:\n%s", pemData)
	}
}
