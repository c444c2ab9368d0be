package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/resolver"
)

// Servers is the set of servers an agent may connect to (several
// sigil-servers sharing one database): a list of host:port entries, each
// host an IP address or a DNS name that may resolve to several addresses.
// A Client dialled with it (Config.Servers) resolves every entry and
// connects to the first address that answers, in an order that starts at a
// random place fixed for the Servers' lifetime: agents spread over the
// servers, and an agent returns to the same server on every new
// connection while that server is up. When it is not (refused, timed out,
// gone), the connection moves on to the next address, and a new
// connection starts over from the agent's own first choice, so a server
// that comes back gets its agents back as they reconnect.
//
// Names are resolved again whenever gRPC asks (a connection failed), at
// most once per ReresolveInterval.
type Servers struct {
	addrs  []string // host:port, as configured
	offset int
	lookup func(ctx context.Context, host string) ([]string, error)
	// ReresolveInterval bounds how often names are resolved again (0 is
	// DefaultReresolveInterval).
	reresolve time.Duration
}

// DefaultReresolveInterval is the shortest time between two resolutions
// of the server names.
const DefaultReresolveInterval = time.Second

// lookupTimeout bounds one resolution of all names.
const lookupTimeout = 10 * time.Second

// NewServers validates addrs (host:port each, at least one) and picks the
// agent's starting place in them.
func NewServers(addrs []string) (*Servers, error) {
	if len(addrs) == 0 {
		return nil, errors.New("client: at least one server address is required")
	}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("client: server address %q is not host:port", clip(a))
		}
	}
	return &Servers{
		addrs:  slices.Clone(addrs),
		offset: rand.IntN(1 << 30), //nolint:gosec // spreading agents, not a secret
		lookup: net.DefaultResolver.LookupHost,
	}, nil
}

// Addrs returns the configured host:port entries.
func (s *Servers) Addrs() []string { return slices.Clone(s.addrs) }

// String lists the configured servers, for logs.
func (s *Servers) String() string { return strings.Join(s.addrs, ",") }

func clip(s string) string {
	if len(s) > 128 {
		return s[:128] + "..."
	}
	return s
}

// resolve returns the addresses to try, in order: the entries from the
// agent's starting place on (wrapping around), each entry's addresses
// likewise rotated. An entry whose name does not resolve is left out
// (and reported in the error when none resolves).
func (s *Servers) resolve(ctx context.Context) ([]string, error) {
	n := len(s.addrs)
	var out []string
	var errs []error
	seen := map[string]bool{}
	for i := range n {
		entry := s.addrs[(s.offset+i)%n]
		host, port, _ := net.SplitHostPort(entry)
		var ips []string
		if net.ParseIP(host) != nil {
			ips = []string{host}
		} else {
			got, err := s.lookup(ctx, host)
			if err != nil || len(got) == 0 {
				if err == nil {
					err = errors.New("no addresses")
				}
				errs = append(errs, fmt.Errorf("resolve %s: %w", clip(host), err))
				continue
			}
			// The resolver's order varies between calls; the rotation
			// must not.
			ips = slices.Clone(got)
			slices.Sort(ips)
			k := (s.offset / n) % len(ips)
			ips = append(ips[k:], ips[:k]...)
		}
		for _, ip := range ips {
			a := net.JoinHostPort(ip, port)
			if !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// serversScheme is the gRPC resolver scheme of a Servers. The builder is
// passed per connection (grpc.WithResolvers), never registered globally.
const serversScheme = "sigil-servers"

type serversBuilder struct{ s *Servers }

func (b serversBuilder) Scheme() string { return serversScheme }

func (b serversBuilder) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &serversResolver{s: b.s, cc: cc, cancel: cancel, now: make(chan struct{}, 1)}
	r.now <- struct{}{}
	r.wg.Go(func() { r.run(ctx) })
	return r, nil
}

// serversResolver resolves a Servers for one gRPC connection, in its own
// goroutine (stopped by Close).
type serversResolver struct {
	s      *Servers
	cc     resolver.ClientConn
	cancel context.CancelFunc
	now    chan struct{}
	wg     sync.WaitGroup
}

func (r *serversResolver) run(ctx context.Context) {
	interval := r.s.reresolve
	if interval <= 0 {
		interval = DefaultReresolveInterval
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.now:
		}
		lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
		addrs, err := r.s.resolve(lctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			r.cc.ReportError(fmt.Errorf("servers %s: %w", r.s, err))
		} else {
			st := resolver.State{Addresses: make([]resolver.Address, len(addrs))}
			for i, a := range addrs {
				st.Addresses[i] = resolver.Address{Addr: a}
			}
			_ = r.cc.UpdateState(st)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// ResolveNow asks for a new resolution (coalesced; at most one per
// interval).
func (r *serversResolver) ResolveNow(resolver.ResolveNowOptions) {
	select {
	case r.now <- struct{}{}:
	default:
	}
}

func (r *serversResolver) Close() {
	r.cancel()
	r.wg.Wait()
}
