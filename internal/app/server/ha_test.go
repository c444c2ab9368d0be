package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/datadir"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// sharedConfig is testConfig with the datastore at db, shared by servers.
func sharedConfig(t *testing.T, db string) *config.Server {
	t.Helper()
	cfg := testConfig(t, testutil.ShortTempDir(t))
	cfg.SetPlugin(config.NewPlugin("DataStore", "sql", map[string]any{"database_type": "sqlite3", "connection_string": db}))
	return cfg
}

func certsEqual(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// TestServersShareOneDatabase: two servers on one datastore each keep
// their own CA (own journal, recorded in their data_dir) and publish it in
// the one bundle: an agent attested through one server (with a join token
// made on the other, consumed once) is accepted by the other with that
// SVID, and a restart keeps each server's CA, the other's untouched.
func TestServersShareOneDatabase(t *testing.T) {
	db := filepath.Join(testutil.ShortTempDir(t), "shared.sqlite3")
	cfgA, cfgB := sharedConfig(t, db), sharedConfig(t, db)
	a := inproc.RunServer(t, cfgA, nil, server.Options{})
	b := inproc.RunServer(t, cfgB, nil, server.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	ja, errA := datadir.ReadCAJournal(cfgA.DataDir)
	jb, errB := datadir.ReadCAJournal(cfgB.DataDir)
	if errA != nil || errB != nil || ja == "" || jb == "" || ja == jb {
		t.Fatalf("CA journals recorded: %q (%v), %q (%v); want two distinct names", ja, errA, jb, errB)
	}
	bundle := b.Admin(t).BundleCerts(t)
	if len(bundle) != 2 || !certsEqual(bundle, a.Admin(t).BundleCerts(t)) {
		t.Fatalf("bundles: %d authorities on B, want the same 2 on both servers", len(bundle))
	}

	// A join token made on B attests through A, once.
	agentID := spiffeid.RequireFromPath(td, "/node-1")
	token := b.Admin(t).CreateJoinToken(t, agentID)
	boot, err := client.Dial(client.Config{Addr: a.Addr(), TrustDomain: td, Bundle: func() []*x509.Certificate { return bundle }})
	if err != nil {
		t.Fatal(err)
	}
	defer boot.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	chain, err := boot.AttestJoinToken(ctx, token, csr)
	if err != nil {
		t.Fatalf("attest through A with B's token: %v", err)
	}
	if _, err := boot.AttestJoinToken(ctx, token, csr); err == nil {
		t.Fatal("the token attested twice")
	}
	svid := &x509svid.SVID{ID: agentID, Certificates: chain, PrivateKey: key}

	// That SVID (from A's CA) authenticates the agent to B.
	onB, err := client.Dial(client.Config{Addr: b.Addr(), TrustDomain: td, Bundle: func() []*x509.Certificate { return bundle },
		SVID: func() *x509svid.SVID { return svid }})
	if err != nil {
		t.Fatal(err)
	}
	defer onB.Close()
	if _, err := onB.SyncEntries(ctx, nil); err != nil {
		t.Fatalf("an agent attested through A, calling B: %v", err)
	}

	// Restarts keep each server's own CA.
	caA, caB := servingCA(t, a.Addr(), bundle), servingCA(t, b.Addr(), bundle)
	if caA.Equal(caB) {
		t.Fatal("both servers sign with the same CA")
	}
	a.StopT(t)
	b.StopT(t)
	b = inproc.RunServer(t, cfgB, nil, server.Options{})
	a = inproc.RunServer(t, cfgA, nil, server.Options{})
	if got := b.Admin(t).BundleCerts(t); !certsEqual(got, bundle) {
		t.Fatalf("after restarting both servers the bundle has %d authorities, want the same 2", len(got))
	}
	if !servingCA(t, a.Addr(), bundle).Equal(caA) || !servingCA(t, b.Addr(), bundle).Equal(caB) {
		t.Fatal("a server's CA changed across the restarts")
	}
}

// servedChain returns the certificate chain the server at addr presents.
func servedChain(t *testing.T, addr string) []*x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only reading the chain
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// servingCA returns the authority of bundle that signed the X509-SVID the
// server at addr presents.
func servingCA(t *testing.T, addr string, bundle []*x509.Certificate) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only reading the chain
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	leaf := conn.ConnectionState().PeerCertificates[0]
	for _, c := range bundle {
		if leaf.CheckSignatureFrom(c) == nil {
			return c
		}
	}
	t.Fatalf("the server at %s presents an SVID no authority of the bundle signed", addr)
	return nil
}

// TestServersShareOneUpstream: two servers on one datastore with one
// UpstreamAuthority "disk" each get their own intermediate CA from it; the
// bundle holds only the upstream root, and each server's SVIDs verify
// with it.
func TestServersShareOneUpstream(t *testing.T) {
	dir := testutil.ShortTempDir(t)
	root := testca.New(t, testca.TrustDomain(td))
	upstream := map[string]any{
		"cert_file_path": testca.WriteCertsPEM(t, filepath.Join(dir, "upstream.crt"), root.Cert),
		"key_file_path":  testca.WriteKeyPEM(t, filepath.Join(dir, "upstream.key"), root.Key),
	}
	db := filepath.Join(dir, "shared.sqlite3")
	var addrs []string
	var first *inproc.Server
	for range 2 {
		cfg := sharedConfig(t, db)
		cfg.SetPlugin(config.NewPlugin("UpstreamAuthority", "disk", upstream))
		srv := inproc.RunServer(t, cfg, nil, server.Options{})
		if first == nil {
			first = srv
		}
		addrs = append(addrs, srv.Addr())
	}
	bundle := first.Admin(t).BundleCerts(t)
	if len(bundle) != 1 || !bundle[0].Equal(root.Cert) {
		t.Fatalf("bundle: %d authorities, want the upstream root only", len(bundle))
	}
	var issuers []*x509.Certificate
	for _, addr := range addrs {
		chain := servedChain(t, addr)
		if len(chain) < 2 {
			t.Fatalf("the server at %s presents no intermediate", addr)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool(root.Cert), Intermediates: pool(chain[1:]...), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("the SVID of the server at %s does not verify with the upstream root: %v", addr, err)
		}
		issuers = append(issuers, chain[1])
	}
	if issuers[0].Equal(issuers[1]) {
		t.Fatal("both servers sign with the same intermediate")
	}
}

// TestServerPrunesJournals: a running server prunes the change journals
// (they grew forever: nothing called PruneEvents): an hour after an
// entry's creation its events are gone and the journal's horizon
// recorded, while the entry itself stays.
func TestServerPrunesJournals(t *testing.T) {
	db := filepath.Join(testutil.ShortTempDir(t), "shared.sqlite3")
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	srv := inproc.RunServer(t, sharedConfig(t, db), nil, server.Options{Clock: clk})
	id := spiffeid.RequireFromPath(td, "/w")
	srv.Admin(t).CreateEntry(t, id, spiffeid.RequireFromPath(td, "/agent"), "unix:uid:1")
	// The test reads the journal through a store of its own, as another
	// server would.
	ctx := context.Background()
	st, err := sqlstore.Open(ctx, sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: db})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if evs, err := st.ListEntryEvents(ctx, 0, 0); err != nil || len(evs) == 0 {
		t.Fatalf("entry events after a creation: %v, %v", evs, err)
	}
	// A minute of the server's time per poll: how many pass before a
	// prune round runs depends on the machine's load, so only a real-time
	// timeout bounds the wait.
	start := clk.Now()
	if err := testutil.Poll(time.Minute, 5*time.Millisecond, func() (bool, error) {
		evs, err := st.ListEntryEvents(ctx, 0, 0)
		if err != nil || len(evs) == 0 {
			return err == nil, err
		}
		clk.Add(time.Minute)
		return false, nil
	}); err != nil {
		t.Fatalf("the entry journal still holds events %s after they were written: %v", clk.Now().Sub(start), err)
	}
	if h, err := st.JournalHorizons(ctx); err != nil || h.Entry == 0 {
		t.Fatalf("JournalHorizons = %+v, %v", h, err)
	}
	if es := srv.Admin(t).ListEntries(t); len(es) != 1 || es[0].GetSpiffeId().GetPath() != "/w" {
		t.Fatalf("entries after the prune: %v", es)
	}
}
