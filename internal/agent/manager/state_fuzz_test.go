package manager

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	agentcatalog "github.com/sigil-spiffe/sigil/internal/catalog/agent"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/keys"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var fuzzTD = spiffeid.RequireTrustDomainFromString("example.org")

// fuzzAgentKey is the fixed agent SVID key under id, so that the SVIDs of
// the committed seed files match the keys of every run.
func fuzzAgentKey(tb testing.TB, id string) *ecdsa.PrivateKey {
	d := sha256.Sum256([]byte("sigil fuzz " + id))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// fuzzKeyDir is a KeyManager "disk" directory holding both agent key IDs.
func fuzzKeyDir(tb testing.TB) string {
	dir := tb.TempDir()
	km, err := keys.NewDisk(dir)
	if err != nil {
		tb.Fatal(err)
	}
	for _, id := range []string{agentKeyA, agentKeyB} {
		der, err := x509.MarshalPKCS8PrivateKey(fuzzAgentKey(tb, id))
		if err != nil {
			tb.Fatal(err)
		}
		pemData := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		if err := os.WriteFile(filepath.Join(km.Dir(), id+".pem"), pemData, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

// fuzzStateFile returns an agent_svid.json written by saveState: an agent
// SVID (key keyID) issued by a CA in the bundle, valid from 2025 to 2100.
func fuzzStateFile(tb testing.TB, keyID string) []byte {
	nb, na := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	root := testca.New(tb, testca.TrustDomain(fuzzTD), testca.Subject("fuzz CA"), testca.Serial(1), testca.Validity(nb, na),
		testca.KeyUsage(x509.KeyUsageCertSign))
	ca := root.Cert
	leaf := root.SVID(tb, spiffeid.RequireFromPath(fuzzTD, "/spire/agent/join_token/abc"), testca.Serial(2), testca.Validity(nb, na),
		testca.Key(fuzzAgentKey(tb, keyID)), testca.KeyUsage(x509.KeyUsageDigitalSignature), testca.ExtKeyUsage()).Certificates[0]
	dir := tb.TempDir()
	if err := saveState(dir, fuzzTD.Name(), &agentState{svid: []*x509.Certificate{leaf}, keyID: keyID, bundle: []*x509.Certificate{ca}}); err != nil {
		tb.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// FuzzLoadState writes arbitrary content as the persisted agent state
// (agent_svid.json) and builds a manager on it, as the agent does at
// start-up. Nothing panics; loadState's errors name the file and stay
// short; the manager always starts, and restores an identity only when its
// SVID is in the trust domain, matches the key its key ID names and (with a
// persisted bundle) chains to that bundle.
func FuzzLoadState(f *testing.F) {
	keyDir := fuzzKeyDir(f)
	valid := fuzzStateFile(f, agentKeyA)
	f.Add(valid)
	f.Add(fuzzStateFile(f, agentKeyB))
	f.Add([]byte(strings.Replace(string(valid), `"key_id":"agent-svid-a"`, `"key_id":"agent-svid-b"`, 1)))
	f.Add([]byte(strings.Replace(string(valid), `"key_id":"agent-svid-a"`, `"key_id":"../../etc/passwd"`, 1)))
	f.Add([]byte(strings.Replace(string(valid), `"trust_domain":"example.org"`, `"trust_domain":"other.org"`, 1)))
	f.Add([]byte(strings.Replace(string(valid), `"version":1`, `"version":2`, 1)))
	f.Add([]byte(`{"version":1,"trust_domain":"example.org","svid":[""],"key_id":"agent-svid-a"}`))
	f.Add([]byte(`{"version":1,"trust_domain":"example.org","svid":[],"key_id":"agent-svid-a"}`))
	f.Add([]byte(`{"version":1,"trust_domain":"` + strings.Repeat("t", 4096) + `"}`))
	f.Add([]byte(strings.Replace(string(valid), `"key_id":"agent-svid-a"`, `"key_id":"`+strings.Repeat("k", 4096)+`"`, 1)))
	f.Add([]byte(`null`))
	f.Add([]byte{})
	km, err := keys.NewDisk(keyDir)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, stateFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadState(dir, fuzzTD.Name()); err != nil {
			if !strings.Contains(err.Error(), stateFile) {
				t.Fatalf("error does not name %s: %v", stateFile, err)
			}
			if len(err.Error()) > 1024 {
				t.Fatalf("error of %d bytes: %.300s...", len(err.Error()), err)
			}
		}
		var logs bytes.Buffer
		m, err := New(Config{
			Servers: []string{"127.0.0.1:1"}, TrustDomain: fuzzTD, DataDir: dir, Keys: km, Attestor: agentcatalog.JoinToken{},
			Cache: cache.New(cache.Config{TrustDomain: fuzzTD}), Clock: clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)),
			AvailabilityTarget: time.Hour, Log: slog.New(slog.NewTextHandler(&logs, nil)),
		})
		if err != nil {
			t.Fatalf("the manager does not start on this state file: %v", err)
		}
		for line := range strings.SplitSeq(logs.String(), "\n") {
			if len(line)-len(dir) > 1024 {
				t.Fatalf("log line of %d bytes: %.300s...", len(line), line)
			}
		}
		if m.id == nil {
			return
		}
		svid := m.id.svid
		if !svid.ID.MemberOf(fuzzTD) || len(svid.Certificates) == 0 {
			t.Fatalf("restored an agent SVID for %q", svid.ID)
		}
		key, err := km.GetKey(t.Context(), m.id.keyID)
		if err != nil {
			t.Fatalf("restored an identity whose key %q is not in the key manager: %v", m.id.keyID, err)
		}
		leafKey, ok := svid.Certificates[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !leafKey.Equal(key.Public()) {
			t.Fatalf("restored an agent SVID that does not match key %q", m.id.keyID)
		}
		if len(m.id.bundle) > 0 {
			at := svid.Certificates[0].NotBefore.Add(time.Second)
			if _, _, err := x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(fuzzTD, m.id.bundle), x509svid.WithTime(at)); err != nil {
				t.Fatalf("restored an agent SVID that does not chain to its bundle: %v", err)
			}
		}
	})
}
