package testutil

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Partition is a pair of network namespaces joined by a veth pair: the
// server side (ServerNS, ServerIP) and the device side (AgentNS, AgentIP).
// Only link-local addresses inside the two namespaces are used, so nothing
// leaks to the host's network. Processes are put in a namespace with
// Wrap; namespaces split only the network, so unix sockets and files are
// shared with the test.
//
// The cuts are LinkDown (the device's interface goes down: connections
// fail fast) and Drop (nftables in the device namespace silently drops
// everything to and from the server: connections hang); Heal undoes both.
type Partition struct {
	ServerNS, AgentNS string
	ServerIP, AgentIP string
	// Device-side veth interface (in AgentNS) and the nftables table used
	// by Drop.
	AgentIf, Table string

	serverIf string
}

var partitionSeq atomic.Int32

// NeedPartition skips the test unless network namespaces can be made:
// root, and the ip and nft tools.
func NeedPartition(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %q (packages iproute2, nftables) for network partitions", tool)
		}
	}
}

// NewPartition creates the namespaces and the veth pair (link up, no
// filtering); everything is deleted on cleanup, even if the test fails.
func NewPartition(t testing.TB) *Partition {
	t.Helper()
	NeedPartition(t)
	n := partitionSeq.Add(1)
	tag := fmt.Sprintf("%d-%d", os.Getpid(), n)
	// Interface names are limited to 15 bytes.
	short := fmt.Sprintf("%x%x", os.Getpid()&0xfffff, n&0xff)
	p := &Partition{
		ServerNS: "sigil-srv-" + tag,
		AgentNS:  "sigil-dev-" + tag,
		ServerIP: fmt.Sprintf("169.254.%d.1", 100+int(n%100)),
		AgentIP:  fmt.Sprintf("169.254.%d.2", 100+int(n%100)),
		serverIf: "sgs" + short,
		AgentIf:  "sgd" + short,
		Table:    "sigil_partition",
	}
	t.Cleanup(func() {
		// Deleting a namespace deletes its veth end (and so the pair)
		// and its nftables tables.
		for _, ns := range []string{p.ServerNS, p.AgentNS} {
			if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
				t.Logf("ip netns delete %s: %v: %s", ns, err, out)
			}
		}
	})
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", p.ServerNS)
	run("ip", "netns", "add", p.AgentNS)
	run("ip", "link", "add", p.serverIf, "netns", p.ServerNS, "type", "veth", "peer", "name", p.AgentIf, "netns", p.AgentNS)
	for _, c := range [][]string{
		{p.ServerNS, "addr", "add", p.ServerIP + "/30", "dev", p.serverIf},
		{p.AgentNS, "addr", "add", p.AgentIP + "/30", "dev", p.AgentIf},
		{p.ServerNS, "link", "set", "lo", "up"},
		{p.AgentNS, "link", "set", "lo", "up"},
		{p.ServerNS, "link", "set", p.serverIf, "up"},
		{p.AgentNS, "link", "set", p.AgentIf, "up"},
	} {
		run(append([]string{"ip", "-n"}, c...)...)
	}
	return p
}

// Wrap is the command prefix that runs a process inside ns.
func (p *Partition) Wrap(ns string) []string { return []string{"ip", "netns", "exec", ns} }

// LinkDown takes the device's veth interface down.
func (p *Partition) LinkDown(t testing.TB) {
	t.Helper()
	p.ip(t, "-n", p.AgentNS, "link", "set", p.AgentIf, "down")
}

// Drop makes the device namespace silently drop all traffic to and from
// the server: no RST, no ICMP, so open connections hang.
func (p *Partition) Drop(t testing.TB) {
	t.Helper()
	rules := fmt.Sprintf(`table inet %[1]s {
	chain output {
		type filter hook output priority 0; policy accept;
		ip daddr %[2]s drop
	}
	chain input {
		type filter hook input priority 0; policy accept;
		ip saddr %[2]s drop
	}
}
`, p.Table, p.ServerIP)
	cmd := exec.Command("ip", "netns", "exec", p.AgentNS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft drop rules in %s: %v: %s", p.AgentNS, err, out)
	}
}

// Heal brings the link up and removes the drop rules (both idempotent).
func (p *Partition) Heal(t testing.TB) {
	t.Helper()
	p.ip(t, "-n", p.AgentNS, "link", "set", p.AgentIf, "up")
	out, err := exec.Command("ip", "netns", "exec", p.AgentNS, "nft", "delete", "table", "inet", p.Table).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		t.Fatalf("nft delete table in %s: %v: %s", p.AgentNS, err, out)
	}
}

func (p *Partition) ip(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// DialIn dials a TCP address from inside the network namespace ns (e.g. an
// agent's health listener bound to 127.0.0.1 there): the socket is made
// by a thread switched into ns and back, and works from any goroutine
// after (a socket stays in the namespace it was made in).
//
// The thread must be switched back rather than left to exit: processes
// started by the test (Start) get SIGKILL when the thread that forked them
// exits (Pdeathsig is per thread), and any thread may have forked one.
func DialIn(ctx context.Context, ns, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := dialInThread(ctx, ns, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// dialInThread dials from ns on the calling goroutine's thread, locked
// meanwhile, and unlocks it once it is back in its own namespace. If it
// could not switch back, the thread stays locked and exits with the
// goroutine, so nothing else ever runs in ns (rare).
func dialInThread(ctx context.Context, ns, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	c, restored, err := dialIn(ctx, ns, addr)
	if restored {
		runtime.UnlockOSThread()
	}
	return c, err
}

// dialIn runs on a locked thread: it switches the thread into ns, dials,
// and switches back; restored is false only if switching back failed.
func dialIn(ctx context.Context, ns, addr string) (c net.Conn, restored bool, err error) {
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return nil, true, err
	}
	defer self.Close()
	target, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		return nil, true, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, true, fmt.Errorf("setns %s: %w", ns, err)
	}
	c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if rerr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); rerr != nil {
		if c != nil {
			_ = c.Close()
		}
		return nil, false, fmt.Errorf("setns back from %s: %w", ns, rerr)
	}
	return c, true, err
}

// HTTPClientIn is an HTTP client whose connections are made inside the
// network namespace ns (DialIn).
func HTTPClientIn(ns string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return DialIn(ctx, ns, addr) },
	}}
}
