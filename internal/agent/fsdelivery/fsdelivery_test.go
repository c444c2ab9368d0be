//go:build unix

package fsdelivery

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
)

var (
	td        = spiffeid.RequireTrustDomainFromString("example.org")
	partnerTD = spiffeid.RequireTrustDomainFromString("partner.example")
	sensorID  = spiffeid.RequireFromString("spiffe://example.org/sensor")
)

type env struct {
	t       *testing.T
	clk     *clock.Fake
	cache   *cache.Cache
	ca      *testCA
	partner *testCA
}

func newEnv(t *testing.T) *env {
	now := time.Now().Truncate(time.Second)
	clk := clock.NewFake(now)
	return &env{
		t: t, clk: clk,
		cache:   cache.New(cache.Config{TrustDomain: td, Clock: clk}),
		ca:      newTestCA(t, td, now),
		partner: newTestCA(t, partnerTD, now),
	}
}

// issue sets a fresh one-hour SVID for entry id and returns it.
func (e *env) issue(entryID string, id spiffeid.ID) *cache.X509SVID {
	now := e.clk.Now()
	s := e.ca.svid(e.t, id, now.Add(-time.Minute), now.Add(time.Hour))
	mustNoErr(e.t, e.cache.SetX509SVIDs(map[string]*cache.X509SVID{entryID: s}))
	return s
}

func (e *env) delivery(targets ...Target) *Delivery {
	d, err := New(Config{Targets: targets, Cache: e.cache, Clock: e.clk})
	mustNoErr(e.t, err)
	return d
}

func sensorTarget(dir string) Target {
	return Target{Name: "sensor", SPIFFEID: sensorID, Directory: dir, FileMode: 0o640, UID: -1, GID: -1}
}

// checkFiles verifies a target directory against the SVID it must hold.
func checkFiles(t *testing.T, dir string, want *cache.X509SVID) {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, SVIDFile), filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatalf("svid.pem and svid.key do not form a key pair: %v", err)
	}
	if !bytes.Equal(pair.Certificate[0], want.Chain[0].Raw) {
		t.Fatalf("svid.pem leaf has serial %s, want %s", pair.Leaf.SerialNumber, want.Chain[0].SerialNumber)
	}
	if len(pair.Certificate) != len(want.Chain) {
		t.Fatalf("svid.pem has %d certificates, want %d (leaf + intermediates)", len(pair.Certificate), len(want.Chain))
	}
	keyBlock, _ := pem.Decode(readGenFile(t, dir, KeyFile))
	if keyBlock == nil || keyBlock.Type != "PRIVATE KEY" {
		t.Fatalf("svid.key is not a PKCS#8 PEM block: %v", keyBlock)
	}
	if _, err := x509.ParsePKCS8PrivateKey(keyBlock.Bytes); err != nil {
		t.Fatalf("svid.key: %v", err)
	}

	b, err := x509bundle.Load(td, filepath.Join(dir, BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	id, _, err := x509svid.Verify(chain, b, x509svid.WithTime(want.Chain[0].NotBefore.Add(time.Minute)))
	if err != nil {
		t.Fatalf("svid.pem does not verify against bundle.pem: %v", err)
	}
	if id != sensorID {
		t.Fatalf("verified ID %s, want %s", id, sensorID)
	}
	jb, err := spiffebundle.Load(td, filepath.Join(dir, BundleJSONFile))
	if err != nil {
		t.Fatalf("bundle.json: %v", err)
	}
	if len(jb.X509Authorities()) != 1 || len(jb.JWTAuthorities()) != 1 {
		t.Fatalf("bundle.json has %d X.509 and %d JWT authorities, want 1 and 1", len(jb.X509Authorities()), len(jb.JWTAuthorities()))
	}
}

func TestRunWritesRotatesAndFederates(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join(t.TempDir(), "svids", "sensor")
	mustNoErr(t, e.cache.SetBundle(e.ca.bundle(t)))
	mustNoErr(t, e.cache.SetEntries([]*cache.Entry{entry("e1", sensorID, partnerTD)}))
	first := e.issue("e1", sensorID)

	d := e.delivery(sensorTarget(dir))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	gen1 := waitGeneration(t, dir, "")
	checkFiles(t, dir, first)
	for path, want := range map[string]os.FileMode{
		dir:                                       0o750, // group may read the 0640 files
		filepath.Join(dir, GenerationsDir):        0o750,
		filepath.Join(dir, SVIDFile):              0o640,
		filepath.Join(dir, KeyFile):               0o600,
		filepath.Join(dir, BundleFile):            0o640,
		filepath.Join(dir, BundleJSONFile):        0o640,
		filepath.Join(dir, CurrentLink):           0o750,
		filepath.Join(filepath.Dir(dir)):          0o755 &^ umask(),
		filepath.Join(dir, "current", "svid.key"): 0o600,
	} {
		if got := perm(t, path); got != want {
			t.Errorf("mode of %s = %04o, want %04o", path, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, FederatedBundleFile(partnerTD.Name()))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("federated bundle written before the agent has it: %v", err)
	}

	// Rotation: a new SVID in the cache makes a new generation; the
	// previous one stays readable.
	second := e.issue("e1", sensorID)
	gen2 := waitGeneration(t, dir, gen1)
	checkFiles(t, dir, second)
	checkFiles(t, filepath.Join(dir, GenerationsDir, gen1), first)

	// A federated bundle arriving makes another generation with its file.
	mustNoErr(t, e.cache.SetBundle(e.partner.bundle(t)))
	gen3 := waitGeneration(t, dir, gen2)
	fb, err := x509bundle.Load(partnerTD, filepath.Join(dir, FederatedBundleFile(partnerTD.Name())))
	if err != nil {
		t.Fatal(err)
	}
	if !fb.HasX509Authority(e.partner.inter.Root().Cert) || len(fb.X509Authorities()) != 1 {
		t.Errorf("federated bundle does not hold the partner root")
	}
	if _, err := spiffebundle.Load(partnerTD, filepath.Join(dir, FederatedBundleJSONFile(partnerTD.Name()))); err != nil {
		t.Errorf("federated bundle JSON: %v", err)
	}
	checkFiles(t, dir, second)
	// Only the current and the previous generation are kept (pruning
	// follows the swap).
	var gens []os.DirEntry
	waitFor(t, "old generations pruned", func() bool {
		gens, err = os.ReadDir(filepath.Join(dir, GenerationsDir))
		return err == nil && len(gens) <= 2
	})
	if len(gens) != 2 || !hasName(gens, gen2) || !hasName(gens, gen3) {
		t.Errorf("generations %v, want %s and %s", names(gens), gen2, gen3)
	}

	// The entry stops federating: the federated files and links go.
	mustNoErr(t, e.cache.SetEntries([]*cache.Entry{entry("e1", sensorID)}))
	waitGeneration(t, dir, gen3)
	if _, err := os.Lstat(filepath.Join(dir, FederatedBundleFile(partnerTD.Name()))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale federated bundle link left: %v", err)
	}
	checkFiles(t, dir, second)
}

func umask() os.FileMode {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return os.FileMode(m)
}

func hasName(des []os.DirEntry, name string) bool {
	for _, de := range des {
		if de.Name() == name {
			return true
		}
	}
	return false
}

func names(des []os.DirEntry) []string {
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

func TestNothingWrittenUntilReadyNorExpired(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join(t.TempDir(), "sensor")
	d := e.delivery(sensorTarget(dir))
	noDir := func(stage string) {
		t.Helper()
		mustNoErr(t, d.syncAll())
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: directory created: %v", stage, err)
		}
	}
	noDir("no entry")
	mustNoErr(t, e.cache.SetEntries([]*cache.Entry{entry("e1", sensorID), entry("other", spiffeid.RequireFromString("spiffe://example.org/other"))}))
	e.issue("other", spiffeid.RequireFromString("spiffe://example.org/other"))
	noDir("no SVID for this ID")
	now := e.clk.Now()
	expired := e.ca.svid(t, sensorID, now.Add(-2*time.Hour), now.Add(-time.Second))
	mustNoErr(t, e.cache.SetX509SVIDs(map[string]*cache.X509SVID{"e1": expired}))
	noDir("expired SVID")
	s := e.issue("e1", sensorID)
	noDir("no bundle")
	mustNoErr(t, e.cache.SetBundle(e.ca.bundle(t)))
	mustNoErr(t, d.syncAll())
	checkFiles(t, dir, s)
	gen := generation(dir)

	// Unchanged state: no new generation.
	mustNoErr(t, d.syncAll())
	if g := generation(dir); g != gen {
		t.Fatalf("an unchanged state wrote generation %s after %s", g, gen)
	}
	// The SVID expires and no new one comes: the files stay as they were.
	e.clk.Add(2 * time.Hour)
	mustNoErr(t, d.syncAll())
	if g := generation(dir); g != gen {
		t.Fatalf("expiry wrote generation %s", g)
	}
	checkFiles(t, dir, s)
}

func TestPicksLatestSVIDAmongEntriesAndUnionsFederation(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join(t.TempDir(), "sensor")
	mustNoErr(t, e.cache.SetBundle(e.ca.bundle(t)))
	mustNoErr(t, e.cache.SetBundle(e.partner.bundle(t)))
	mustNoErr(t, e.cache.SetEntries([]*cache.Entry{entry("a", sensorID), entry("b", sensorID, partnerTD)}))
	now := e.clk.Now()
	older := e.ca.svid(t, sensorID, now.Add(-time.Minute), now.Add(time.Hour))
	newer := e.ca.svid(t, sensorID, now.Add(-time.Minute), now.Add(2*time.Hour))
	mustNoErr(t, e.cache.SetX509SVIDs(map[string]*cache.X509SVID{"a": newer, "b": older}))
	d := e.delivery(sensorTarget(dir))
	mustNoErr(t, d.syncAll())
	checkFiles(t, dir, newer)
	if _, err := os.Stat(filepath.Join(dir, FederatedBundleFile(partnerTD.Name()))); err != nil {
		t.Errorf("federated bundle of entry b missing: %v", err)
	}
}

func TestRestartKeepsNumberingAndPrunes(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join(t.TempDir(), "sensor")
	mustNoErr(t, e.cache.SetBundle(e.ca.bundle(t)))
	mustNoErr(t, e.cache.SetEntries([]*cache.Entry{entry("e1", sensorID)}))
	var last *cache.X509SVID
	for i := 0; i < 3; i++ {
		last = e.issue("e1", sensorID)
		mustNoErr(t, e.delivery(sensorTarget(dir)).syncAll()) // a fresh Delivery each time: a restart
	}
	if g := generation(dir); g != "3" {
		t.Fatalf("generation after three runs = %q, want 3", g)
	}
	gens, err := os.ReadDir(filepath.Join(dir, GenerationsDir))
	mustNoErr(t, err)
	if strings.Join(names(gens), ",") != "2,3" {
		t.Fatalf("generations %v, want [2 3]", names(gens))
	}
	checkFiles(t, dir, last)
}

// A reader that resolves current once and reads both files from that
// generation never sees a certificate and key that do not match, however
// rotations interleave.
func TestGenerationReadsAlwaysMatch(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join(t.TempDir(), "sensor")
	mustNoErr(t, e.cache.SetBundle(e.ca.bundle(t)))
	mustNoErr(t, e.cache.SetEntries([]*cache.Entry{entry("e1", sensorID)}))
	e.issue("e1", sensorID)
	d := e.delivery(sensorTarget(dir))
	mustNoErr(t, d.syncAll())

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads, mismatches int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			gen, err := os.Readlink(filepath.Join(dir, CurrentLink))
			if err != nil {
				continue
			}
			g := filepath.Join(dir, gen)
			_, err = tls.LoadX509KeyPair(filepath.Join(g, SVIDFile), filepath.Join(g, KeyFile))
			switch {
			case err == nil:
				reads++
			case errors.Is(err, os.ErrNotExist):
				// pruned between readlink and open: a reader retries
			default:
				mismatches++
			}
		}
	}()
	for i := 0; i < 25; i++ {
		e.issue("e1", sensorID)
		mustNoErr(t, d.syncAll())
	}
	close(stop)
	wg.Wait()
	if mismatches > 0 {
		t.Fatalf("%d of %d reads saw a certificate and key that do not match", mismatches, reads+mismatches)
	}
	if reads == 0 {
		t.Fatal("the reader never read a generation")
	}
}

func TestChown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root")
	}
	e := newEnv(t)
	dir := filepath.Join(t.TempDir(), "sensor")
	mustNoErr(t, e.cache.SetBundle(e.ca.bundle(t)))
	mustNoErr(t, e.cache.SetEntries([]*cache.Entry{entry("e1", sensorID)}))
	e.issue("e1", sensorID)
	tg := sensorTarget(dir)
	tg.UID, tg.GID = 4321, 8765
	mustNoErr(t, e.delivery(tg).syncAll())
	for _, p := range []string{dir, filepath.Join(dir, GenerationsDir), filepath.Join(dir, CurrentLink), filepath.Join(dir, KeyFile), filepath.Join(dir, SVIDFile)} {
		fi, err := os.Stat(p)
		mustNoErr(t, err)
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 4321 || st.Gid != 8765 {
			t.Errorf("%s owned by %d:%d, want 4321:8765", p, st.Uid, st.Gid)
		}
	}
	for _, l := range []string{filepath.Join(dir, CurrentLink), filepath.Join(dir, KeyFile)} {
		fi, err := os.Lstat(l)
		mustNoErr(t, err)
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 4321 {
			t.Errorf("symlink %s owned by uid %d, want 4321", l, st.Uid)
		}
	}
}

func TestNewRejectsBadTargets(t *testing.T) {
	c := cache.New(cache.Config{TrustDomain: td})
	ok := sensorTarget("/var/lib/sigil/svids/sensor")
	cases := []struct {
		name    string
		targets []Target
		want    string
	}{
		{"relative directory", []Target{{Name: "s", SPIFFEID: sensorID, Directory: "svids/s", UID: -1, GID: -1}}, `directory "svids/s" must be an absolute path`},
		{"no directory", []Target{{Name: "s", SPIFFEID: sensorID, UID: -1, GID: -1}}, "directory must be set"},
		{"no SPIFFE ID", []Target{{Name: "s", Directory: "/x", UID: -1, GID: -1}}, "spiffe_id must be set"},
		{"foreign trust domain", []Target{{Name: "s", SPIFFEID: spiffeid.RequireFromString("spiffe://other.org/s"), Directory: "/x", UID: -1, GID: -1}}, `spiffe_id "spiffe://other.org/s" is not in the agent's trust domain "example.org"`},
		{"world-writable mode", []Target{{Name: "s", SPIFFEID: sensorID, Directory: "/x", FileMode: 0o666, UID: -1, GID: -1}}, "file_mode 0666 is not allowed"},
		{"unreadable mode", []Target{{Name: "s", SPIFFEID: sensorID, Directory: "/x", FileMode: 0o040, UID: -1, GID: -1}}, "must let the owner read"},
		{"bad uid", []Target{{Name: "s", SPIFFEID: sensorID, Directory: "/x", UID: -2, GID: -1}}, "uid -2 is invalid"},
		{"duplicate directory", []Target{ok, {Name: "again", SPIFFEID: sensorID, Directory: "/var/lib/sigil/svids/sensor/", UID: -1, GID: -1}}, `directory "/var/lib/sigil/svids/sensor" is also used by "sensor"`},
	}
	for _, c2 := range cases {
		t.Run(c2.name, func(t *testing.T) {
			_, err := New(Config{Targets: c2.targets, Cache: c})
			if err == nil || !strings.Contains(err.Error(), c2.want) {
				t.Fatalf("New error = %v, want it to contain %q", err, c2.want)
			}
		})
	}
	if _, err := New(Config{Targets: []Target{ok}, Cache: c}); err != nil {
		t.Fatalf("valid target rejected: %v", err)
	}
}

// A target that cannot be written does not stop the others.
func TestFailingTargetDoesNotBlockOthers(t *testing.T) {
	e := newEnv(t)
	base := t.TempDir()
	blocker := filepath.Join(base, "not-a-dir")
	mustNoErr(t, os.WriteFile(blocker, []byte("x"), 0o600))
	good := filepath.Join(base, "good")
	mustNoErr(t, e.cache.SetBundle(e.ca.bundle(t)))
	mustNoErr(t, e.cache.SetEntries([]*cache.Entry{entry("e1", sensorID)}))
	s := e.issue("e1", sensorID)
	bad := sensorTarget(blocker)
	bad.Name = "bad"
	d := e.delivery(bad, sensorTarget(good))
	err := d.syncAll()
	if err == nil || !strings.Contains(err.Error(), "is not a directory") {
		t.Fatalf("syncAll error = %v, want the bad target's", err)
	}
	checkFiles(t, good, s)
}

// A restarted agent whose files are already up to date writes no new
// generation; a file that differs in content or mode makes one.
func TestRestartAdoptsUpToDateFiles(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join(t.TempDir(), "sensor")
	mustNoErr(t, e.cache.SetBundle(e.ca.bundle(t)))
	mustNoErr(t, e.cache.SetEntries([]*cache.Entry{entry("e1", sensorID)}))
	s := e.issue("e1", sensorID)
	mustNoErr(t, e.delivery(sensorTarget(dir)).syncAll())
	restart := func() string {
		t.Helper()
		mustNoErr(t, e.delivery(sensorTarget(dir)).syncAll())
		return generation(dir)
	}
	// A lost stable link is repaired without a new generation.
	mustNoErr(t, os.Remove(filepath.Join(dir, BundleFile)))
	if g := restart(); g != "1" {
		t.Fatalf("restart with unchanged files wrote generation %s", g)
	}
	checkFiles(t, dir, s)

	mustNoErr(t, os.Chmod(filepath.Join(dir, GenerationsDir, "1", BundleFile), 0o600))
	if g := restart(); g != "2" {
		t.Fatalf("restart after a mode change: generation %s, want 2", g)
	}
	mustNoErr(t, os.Chmod(filepath.Join(dir, GenerationsDir, "2", SVIDFile), 0o600)) // keep the mode, change content
	mustNoErr(t, os.WriteFile(filepath.Join(dir, GenerationsDir, "2", SVIDFile), []byte("tampered"), 0o640))
	mustNoErr(t, os.Chmod(filepath.Join(dir, GenerationsDir, "2", SVIDFile), 0o640))
	if g := restart(); g != "3" {
		t.Fatalf("restart after tampering: generation %s, want 3", g)
	}
	checkFiles(t, dir, s)
}
