package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestSecondAgentOnSameSocket: an agent with its own data_dir but the
// Workload API socket of a running agent refuses to start; the running
// agent keeps its socket (the same file, also after the second exited)
// and keeps serving its workloads.
func TestSecondAgentOnSameSocket(t *testing.T) {
	s := newStack(t)
	id := s.register(t, "/first", uidSelector)
	testutil.RequireSVID(t, s.agent.SocketAddr(), id, deadline)
	socket := s.agent.Config.SocketPath
	before, err := os.Lstat(socket)
	if err != nil {
		t.Fatal(err)
	}

	cfg := testutil.AgentFor(t, s.srv, "/agent/edge-2", "")
	cfg.SocketPath = socket
	second := testutil.NewAgent(t, cfg)
	logs := second.StartProcess(t).WaitExit(t, deadline)
	if want := "socket " + socket + " is in use by another process"; !strings.Contains(logs, want) {
		t.Fatalf("second agent's log lacks %q:\n%s", want, logs)
	}

	after, err := os.Lstat(socket)
	if err != nil {
		t.Fatalf("first agent's socket gone after the second agent exited: %v", err)
	}
	if !os.SameFile(before, after) {
		t.Fatal("first agent's socket was replaced")
	}
	testutil.RequireSVID(t, s.agent.SocketAddr(), id, deadline)
	// It stopped before contacting the server: its join token is unused.
	if n := len(s.srv.Admin(t).ListAgents(t)); n != 1 {
		t.Fatalf("%d attested agents, want 1: the refused agent attested", n)
	}
}

// TestSecondServerOnSameDataDir: a second sigil-server on the data_dir of
// a running one (its own socket and port) refuses to start, naming the
// first one's pid; the first keeps serving.
func TestSecondServerOnSameDataDir(t *testing.T) {
	first := testutil.StartServer(t, testutil.ServerConfig{})
	second := testutil.NewServer(t, testutil.ServerConfig{
		DataDir:    first.Config.DataDir,
		SocketPath: filepath.Join(testutil.ShortTempDir(t), "api.sock"),
	})
	logs := second.StartProcess(t).WaitExit(t, deadline)
	if want := fmt.Sprintf("data_dir %s is in use by pid %d", first.Config.DataDir, first.Proc.Pid()); !strings.Contains(logs, want) {
		t.Fatalf("second server's log lacks %q:\n%s", want, logs)
	}
	first.Admin(t).ListEntries(t)
}

// TestSecondAgentOnSameDataDir: a second sigil-agent on the data_dir of a
// running one (its own socket) refuses to start, naming the first one's
// pid; the first keeps serving. After the first is killed (SIGKILL), the
// data_dir is free again: no stale lock.
func TestSecondAgentOnSameDataDir(t *testing.T) {
	s := newStack(t)
	id := s.register(t, "/first", uidSelector)
	testutil.RequireSVID(t, s.agent.SocketAddr(), id, deadline)

	cfg := s.agent.Config
	cfg.SocketPath = filepath.Join(testutil.ShortTempDir(t), "api.sock")
	cfg.JoinToken = ""
	second := testutil.NewAgent(t, cfg)
	logs := second.StartProcess(t).WaitExit(t, deadline)
	if want := fmt.Sprintf("data_dir %s is in use by pid %d", cfg.DataDir, s.agent.Proc.Pid()); !strings.Contains(logs, want) {
		t.Fatalf("second agent's log lacks %q:\n%s", want, logs)
	}
	testutil.RequireSVID(t, s.agent.SocketAddr(), id, deadline)

	s.agent.Proc.Kill()
	second.Start(t)
	testutil.RequireSVID(t, second.SocketAddr(), id, deadline)
}

// TestAgentKilledMidWrite: a real agent under entry churn is killed
// (SIGKILL) the moment it starts an atomic write of its state, a dozen
// times. At least one kill leaves a temporary file (it may hold every
// workload key of that moment). Each restart removes what the killed run
// left before serving, and once the agent has caught up with the server,
// no private key of a deleted entry is left anywhere in its data_dir.
func TestAgentKilledMidWrite(t *testing.T) {
	const kills = 12
	s := newStack(t)
	dataDir := s.agent.Config.DataDir
	keysDir := filepath.Join(dataDir, "keys")
	// The agent is attested (its SVID persisted) before the first kill, so
	// every restart re-uses it.
	testutil.RequireSVID(t, s.agent.SocketAddr(), s.register(t, "/workload", uidSelector), deadline)
	s.agent.Config.JoinToken = ""

	adm := s.srv.Admin(t)
	const n = 20
	for i := 0; i < n; i++ {
		adm.CreateEntry(t, s.srv.ID(fmt.Sprintf("/churn/initial-%d", i)), s.agentID, "unix:uid:4242")
	}
	waitPersisted(t, dataDir, func(keys map[string]string) bool { return len(keys) >= n+1 })
	ctx, cancel := context.WithCancel(context.Background())
	churnErr := make(chan error, 1)
	go func() { churnErr <- churnEntries(ctx, adm, s.agentID, n) }()
	stopChurn := func() {
		if cancel != nil {
			cancel()
			cancel = nil
			if err := <-churnErr; err != nil {
				t.Fatalf("churn: %v", err)
			}
		}
	}
	defer stopChurn()

	events := watchDir(t, dataDir)
	seen := map[string]string{} // entry ID -> base64 PKCS#8 key, every one found on disk
	var left []string           // temporary files the kills left
	for i := 0; i < kills; i++ {
		if i > 0 {
			s.agent.Start(t)
		}
		drain(events)
		// Kill while this run writes a temporary file: right after it
		// created one (empty), or after a write to it, i.e. typically
		// during its fsync (complete, keys and all), alternately.
		want := uint32(unix.IN_CREATE)
		if i%2 == 1 {
			want = unix.IN_MODIFY
		}
		waitFor(t, events, func(ev fsEvent) bool { return ev.mask&want != 0 && isTemp(ev.name) })
		s.agent.Proc.Kill()
		for _, dir := range []string{dataDir, keysDir} {
			for _, name := range tempFiles(t, dir) {
				left = append(left, filepath.Join(dir, name))
			}
		}
		collectKeys(t, dataDir, seen)
	}
	stopChurn()
	// While the agent is down, delete every churned entry: all keys seen
	// but the workload's now belong to deleted entries.
	var gone []string
	for _, e := range adm.ListEntries(t) {
		if strings.HasPrefix(e.GetSpiffeId().GetPath(), "/churn/") {
			gone = append(gone, e.GetId())
		}
	}
	adm.DeleteEntries(t, gone...)
	t.Logf("%d kills left %d temporary files; %d workload keys seen on disk", kills, len(left), len(seen))
	if len(left) == 0 {
		t.Fatal("no kill left a temporary file: this run proves nothing about the clean-up")
	}
	if len(seen) == 0 {
		t.Fatal("no workload key found in the agent's files (has the cache format changed?)")
	}

	s.agent.Start(t)
	for _, p := range left {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left by a killed run still there after the restart (%v)", p, err)
		}
	}

	// Once the agent holds exactly the server's entries, keys of deleted
	// entries must be nowhere on disk.
	live := map[string]bool{}
	for _, e := range adm.ListEntries(t) {
		live[e.GetId()] = true
	}
	waitPersisted(t, dataDir, func(keys map[string]string) bool {
		if len(keys) != len(live) {
			return false
		}
		for id := range keys {
			if !live[id] {
				return false
			}
		}
		return true
	})
	s.agent.Stop(t)
	for _, dir := range []string{dataDir, keysDir} {
		if names := tempFiles(t, dir); len(names) > 0 {
			t.Errorf("temporary files in %s after a clean stop: %v", dir, names)
		}
	}
	deleted, survived := 0, 0
	for id, key := range seen {
		if live[id] {
			continue
		}
		deleted++
		if files := filesContaining(t, dataDir, key); len(files) > 0 {
			if survived++; survived <= 3 {
				t.Errorf("private key of deleted entry %s still on disk in %v", id, files)
			}
		}
	}
	if survived > 0 {
		t.Errorf("keys of %d of %d deleted entries still on disk", survived, deleted)
	}
	if deleted == 0 {
		t.Fatal("no key of a deleted entry was seen on disk: this run proves nothing about them")
	}
}

// waitPersisted waits until the workload SVIDs in the agent's persisted
// cache (entry ID -> key) satisfy ok.
func waitPersisted(t *testing.T, dataDir string, ok func(map[string]string) bool) {
	t.Helper()
	var keys map[string]string
	err := testutil.Poll(deadline, 20*time.Millisecond, func() (bool, error) {
		keys = map[string]string{}
		collectKeysFrom(filepath.Join(dataDir, "workload-cache.json"), keys)
		return ok(keys), nil
	})
	if err != nil {
		t.Fatalf("agent's persisted cache (%d SVIDs) never reached the expected state: %v", len(keys), err)
	}
}

// churnEntries keeps n entries under parent, replacing the oldest with a
// new one in a loop until ctx is done.
func churnEntries(ctx context.Context, adm *testutil.Admin, parent spiffeid.ID, n int) error {
	// ctx only stops the loop: each call runs to its end on its own
	// context, so that once churnEntries has returned no write of it is
	// still in flight (a call cancelled client-side may still commit on the
	// server after the caller's next read).
	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	}
	var ids []string
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		id := spiffeid.RequireFromPathf(parent.TrustDomain(), "/churn/%d", i)
		e, err := adminclient.NewEntry(id, parent, "unix:uid:4242")
		if err != nil {
			return err
		}
		cctx, cancel := call()
		eid, err := adm.Client.CreateEntry(cctx, e)
		cancel()
		if err != nil {
			return err
		}
		ids = append(ids, eid)
		if len(ids) <= n {
			continue
		}
		cctx, cancel = call()
		err = adm.Client.DeleteEntries(cctx, ids[0])
		cancel()
		if err != nil {
			return err
		}
		ids = ids[1:]
	}
}

type fsEvent struct {
	name string
	mask uint32
}

// watchDir reports files created in or written to dir (inotify).
func watchDir(t *testing.T, dir string) <-chan fsEvent {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MODIFY); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	t.Cleanup(func() { f.Close() })
	ch := make(chan fsEvent, 4096)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := f.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				mask := binary.NativeEndian.Uint32(buf[off+4:])
				nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
				name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+nameLen]), "\x00")
				off += unix.SizeofInotifyEvent + nameLen
				select {
				case ch <- fsEvent{name: name, mask: mask}:
				default: // the test only needs the latest events
				}
			}
		}
	}()
	return ch
}

func drain(ch <-chan fsEvent) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func waitFor(t *testing.T, ch <-chan fsEvent, match func(fsEvent) bool) {
	t.Helper()
	timeout := time.After(deadline)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("inotify watch ended")
			}
			if match(ev) {
				return
			}
		case <-timeout:
			t.Fatalf("no matching file event within %v", deadline)
		}
	}
}

// isTemp matches keys.WriteFileAtomic's temporary names.
var tempName = regexp.MustCompile(`^\..+\.tmp-[0-9]+$`)

func isTemp(name string) bool { return tempName.MatchString(name) }

func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if isTemp(de.Name()) {
			out = append(out, de.Name())
		}
	}
	return out
}

// svidKey finds persisted workload SVIDs (entry ID, base64 PKCS#8 key) in
// the agent cache's JSON, also in a file cut short by a kill.
var svidKey = regexp.MustCompile(`"([A-Za-z0-9-]+)":\{"chain":\[[^\]]*\],"key":"([A-Za-z0-9+/=]+)"`)

func collectKeysFrom(path string, into map[string]string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	for _, m := range svidKey.FindAllSubmatch(b, -1) {
		into[string(m[1])] = string(m[2])
	}
}

func collectKeys(t *testing.T, dir string, into map[string]string) {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		if de.Type().IsRegular() {
			collectKeysFrom(filepath.Join(dir, de.Name()), into)
		}
	}
}

// filesContaining lists the files under root whose content contains s.
func filesContaining(t *testing.T, root, s string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.Contains(string(b), s) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestStartRemovesLeftovers: temporary files of interrupted atomic writes
// in the server's data_dir and key directory and in the agent's are
// removed when each starts; other files are left alone.
func TestStartRemovesLeftovers(t *testing.T) {
	s := newStack(t)
	s.agent.Stop(t)
	s.srv.Stop(t)
	s.agent.Config.JoinToken = ""
	dirs := []string{
		s.srv.Config.DataDir, filepath.Join(s.srv.Config.DataDir, "keys"),
		s.agent.Config.DataDir, filepath.Join(s.agent.Config.DataDir, "keys"),
	}
	for _, d := range dirs {
		for name, data := range map[string]string{
			".x509-ca-a.pem.tmp-1234567":         "-----BEGIN PRIVATE KEY-----",
			".workload-cache.json.tmp-987654321": `{"svids":`,
			"keep.tmp-1":                         "not ours",
		} {
			if err := os.WriteFile(filepath.Join(d, name), []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.srv.Start(t)
	s.agent.Start(t)
	for _, d := range dirs {
		for _, name := range []string{".x509-ca-a.pem.tmp-1234567", ".workload-cache.json.tmp-987654321"} {
			if _, err := os.Lstat(filepath.Join(d, name)); !os.IsNotExist(err) {
				t.Errorf("%s left in %s after start (%v)", name, d, err)
			}
		}
		if _, err := os.Stat(filepath.Join(d, "keep.tmp-1")); err != nil {
			t.Errorf("unrelated file in %s removed: %v", d, err)
		}
	}
}
