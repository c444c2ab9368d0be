package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// harnessFiles are written by the test harness or the process itself, not
// state: the configuration, the log, the lock (it records the pid of the
// last process that took it).
func harnessFile(rel string) bool {
	base := filepath.Base(rel)
	return strings.HasSuffix(base, ".log") || strings.HasSuffix(base, ".conf") || base == "sigil.lock"
}

// snapshot maps every entry under dir (but harness files) to its type and,
// for regular files, content hash and mode.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if harnessFile(rel) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		v := fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			v += " " + hex.EncodeToString(sum[:])
		}
		out[rel] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func requireUnchanged(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, v := range before {
		if w, ok := after[p]; !ok {
			t.Errorf("%s was removed", p)
		} else if w != v {
			t.Errorf("%s changed: %s -> %s", p, v, w)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s was created", p)
		}
	}
}

func requireLogHas(t *testing.T, logs string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(logs, w) {
			t.Errorf("log lacks %q:\n%s", w, logs)
		}
	}
}

// reconfigureServer rewrites the server's configuration with trust domain td.
func reconfigureServer(t *testing.T, s *testutil.Server, td string) {
	t.Helper()
	s.Config.TrustDomain = td
	if err := os.WriteFile(s.ConfigPath, []byte(s.Config.HCL()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestServerRestartWithAnotherTrustDomain: a server restarted on its
// data_dir with another trust_domain stops at start-up with an error
// naming both trust domains and the data_dir, and changes no file in it.
func TestServerRestartWithAnotherTrustDomain(t *testing.T) {
	s := testutil.StartServer(t, testutil.ServerConfig{})
	s.Admin(t).CreateEntry(t, s.ID("/w"), s.ID("/agent"), "unix:uid:1")
	s.Stop(t)
	dir := s.Config.DataDir
	before := snapshot(t, dir)

	reconfigureServer(t, s, "other.org")
	logs := s.StartProcess(t).WaitExit(t, deadline)
	requireLogHas(t, logs, "data_dir "+dir+" belongs to trust domain example.org (recorded in "+filepath.Join(dir, "trust_domain")+"), not to the configured other.org")
	requireUnchanged(t, before, snapshot(t, dir))

	// The data_dir still works for its own trust domain.
	reconfigureServer(t, s, "example.org")
	s.Start(t)
	if n := len(s.Admin(t).ListEntries(t)); n != 1 {
		t.Fatalf("%d entries after the refused start, want 1", n)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "trust_domain")); err != nil || string(b) != "example.org\n" {
		t.Fatalf("trust_domain file: %q, %v", b, err)
	}
}

// TestServerLegacyDataDir: a data_dir of a Sigil that did not record its
// trust domain (no trust_domain file) is recognised by its CA journal: with
// another trust_domain the server stops and changes nothing (the datastore
// included); with its own it starts with its CA, entries and bundle, and
// records the trust domain.
func TestServerLegacyDataDir(t *testing.T) {
	s := testutil.StartServer(t, testutil.ServerConfig{})
	adm := s.Admin(t)
	adm.CreateEntry(t, s.ID("/w"), s.ID("/agent"), "unix:uid:1")
	bundle := adm.BundlePEM(t)
	s.Stop(t)
	dir := s.Config.DataDir
	if err := os.Remove(filepath.Join(dir, "trust_domain")); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	before := snapshot(t, dir)

	reconfigureServer(t, s, "other.org")
	logs := s.StartProcess(t).WaitExit(t, deadline)
	requireLogHas(t, logs, "data_dir "+dir+" belongs to trust domain example.org (per the CA journal in its datastore), not to the configured other.org")
	requireUnchanged(t, before, snapshot(t, dir))

	reconfigureServer(t, s, "example.org")
	s.Start(t)
	if n := len(adm.ListEntries(t)); n != 1 {
		t.Fatalf("%d entries after the upgrade, want 1", n)
	}
	if got := adm.BundlePEM(t); string(got) != string(bundle) {
		t.Fatalf("bundle changed across the upgrade:\n%s\nwant\n%s", got, bundle)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "trust_domain")); err != nil || string(b) != "example.org\n" {
		t.Fatalf("trust_domain not recorded on upgrade: %q, %v", b, err)
	}
}

// TestAgentRestartWithAnotherTrustDomain: an agent restarted on its
// data_dir with another trust_domain stops at start-up with an error
// naming both trust domains and the data_dir, and changes no file in it.
func TestAgentRestartWithAnotherTrustDomain(t *testing.T) {
	s := newStack(t)
	id := s.register(t, "/w", uidSelector)
	testutil.RequireSVID(t, s.agent.SocketAddr(), id, deadline)
	s.agent.Stop(t)
	dir := s.agent.Config.DataDir
	before := snapshot(t, dir)

	s.agent.Config.TrustDomain = "other.org"
	s.agent.Config.JoinToken = ""
	logs := s.agent.StartProcess(t).WaitExit(t, deadline)
	requireLogHas(t, logs, "data_dir "+dir+" belongs to trust domain example.org (per "+filepath.Join(dir, "agent_svid.json")+"), not to the configured other.org")
	requireUnchanged(t, before, snapshot(t, dir))

	s.agent.Config.TrustDomain = "example.org"
	s.agent.Start(t)
	testutil.RequireSVID(t, s.agent.SocketAddr(), id, deadline)
}

// TestDevRestartWithAnotherTrustDomain: `sigil-server dev` run again on
// its data dir with another -trustDomain stops with an error naming both
// trust domains and the directory, and changes no file in it.
func TestDevRestartWithAnotherTrustDomain(t *testing.T) {
	bin, _ := testutil.Binaries(t)
	dir := filepath.Join(testutil.ShortTempDir(t), "dev")
	run := func(args ...string) *testutil.Process {
		return testutil.Start(t, testutil.Command{
			Name: "sigil-server-dev", Path: bin,
			Args: append([]string{"dev", "-exit", "-dataDir", dir}, args...),
		})
	}
	p := run()
	logs := p.WaitExit(t, deadline)
	if err := p.Err(); err != nil {
		t.Fatalf("first dev run: %v\n%s", err, logs)
	}
	before := snapshot(t, dir)

	p = run("-trustDomain", "other.org")
	logs = p.WaitExit(t, deadline)
	if p.Err() == nil {
		t.Fatalf("dev with another trust domain succeeded:\n%s", logs)
	}
	requireLogHas(t, logs, dir+" holds a dev environment of trust domain example.org", "not of other.org")
	requireUnchanged(t, before, snapshot(t, dir))
}
