package testutil

import (
	"context"
	"fmt"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// SVIDTimeout bounds NewX509Source's wait for a first SVID.
const SVIDTimeout = 30 * time.Second

// PickID makes an X509Source serve the SVID with the given ID when the
// Workload API hands the process several (e.g. several entries match its
// uid). Without a match it falls back to the first SVID.
func PickID(id spiffeid.ID) workloadapi.X509SourceOption {
	return workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
		for _, s := range svids {
			if s.ID == id {
				return s
			}
		}
		return svids[0]
	})
}

// NewX509Source is a go-spiffe X509Source on the given Workload API
// address (unix://...), waiting up to SVIDTimeout for its first update;
// closed on cleanup.
func NewX509Source(t testing.TB, addr string, opts ...workloadapi.X509SourceOption) *workloadapi.X509Source {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), SVIDTimeout)
	defer cancel()
	opts = append([]workloadapi.X509SourceOption{workloadapi.WithClientOptions(workloadapi.WithAddr(addr))}, opts...)
	src, err := workloadapi.NewX509Source(ctx, opts...)
	if err != nil {
		t.Fatalf("X509Source on %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// FetchX509SVIDs fetches the caller's X509-SVIDs once, on a new connection.
func FetchX509SVIDs(ctx context.Context, addr string) ([]*x509svid.SVID, error) {
	return workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(addr))
}

// WaitForSVID watches the Workload API at addr until it serves the caller
// an X509-SVID for id, and returns it. The Workload API pushes every
// change, so this returns as soon as the agent has the SVID; a fresh
// connection is opened when the stream fails (e.g. PermissionDenied
// while the agent has no entry for the caller yet).
func WaitForSVID(ctx context.Context, addr string, id spiffeid.ID) (*x509svid.SVID, error) {
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr), workloadapi.WithBackoffStrategy(fixedBackoff(50*time.Millisecond)))
	if err != nil {
		return nil, err
	}
	defer client.Close()
	w := &svidWatcher{id: id, found: make(chan *x509svid.SVID, 1)}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- client.WatchX509Context(ctx, w) }()
	select {
	case s := <-w.found:
		return s, nil
	case err := <-done:
		return nil, fmt.Errorf("watch for %s: %w (last error: %v)", id, err, w.lastErr)
	}
}

// RequireSVID is WaitForSVID bounded by timeout, failing the test.
func RequireSVID(t testing.TB, addr string, id spiffeid.ID, timeout time.Duration) *x509svid.SVID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s, err := WaitForSVID(ctx, addr, id)
	if err != nil {
		t.Fatalf("no X509-SVID for %s within %v: %v", id, timeout, err)
	}
	return s
}

type svidWatcher struct {
	id      spiffeid.ID
	found   chan *x509svid.SVID
	lastErr error
}

func (w *svidWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	for _, s := range c.SVIDs {
		if s.ID == w.id {
			select {
			case w.found <- s:
			default:
			}
			return
		}
	}
}

func (w *svidWatcher) OnX509ContextWatchError(err error) { w.lastErr = err }

// fixedBackoff retries at a constant short interval: tests wait for a
// local agent, not a remote service to recover.
type fixedBackoff time.Duration

func (b fixedBackoff) NewBackoff() workloadapi.Backoff { return b }
func (b fixedBackoff) Next() time.Duration             { return time.Duration(b) }
func (fixedBackoff) Reset()                            {}

// WatchIDs opens one Workload API stream at addr and sends the SPIFFE IDs
// of every X509 context update it receives (a full state each time). The
// stream ends on cleanup. Errors (e.g. PermissionDenied before the agent
// has an entry for the caller) are retried every 50ms.
func WatchIDs(t testing.TB, addr string) <-chan []spiffeid.ID {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr), workloadapi.WithBackoffStrategy(fixedBackoff(50*time.Millisecond)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	updates := make(chan []spiffeid.ID, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = client.WatchX509Context(ctx, idWatcher{ctx: ctx, updates: updates})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = client.Close()
	})
	return updates
}

type idWatcher struct {
	ctx     context.Context
	updates chan<- []spiffeid.ID
}

func (w idWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	ids := make([]spiffeid.ID, 0, len(c.SVIDs))
	for _, s := range c.SVIDs {
		ids = append(ids, s.ID)
	}
	select {
	case w.updates <- ids:
	case <-w.ctx.Done():
	}
}

func (idWatcher) OnX509ContextWatchError(error) {}

// WaitForID reads updates from WatchIDs until one contains id.
func WaitForID(t testing.TB, updates <-chan []spiffeid.ID, id spiffeid.ID, timeout time.Duration) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var last []spiffeid.ID
	for {
		select {
		case ids := <-updates:
			for _, x := range ids {
				if x == id {
					return
				}
			}
			last = ids
		case <-timer.C:
			t.Fatalf("no Workload API update with %s within %v (last update: %v)", id, timeout, last)
		}
	}
}

// OpenX509Stream opens a raw Workload API FetchX509SVID stream on the unix
// socket at socketPath (the protocol go-spiffe speaks, without its
// client's retries, so a test sees exactly what the agent sends), bounded by
// timeout, and returns it with its first response; no first response fails
// the test.
func OpenX509Stream(t testing.TB, socketPath string, timeout time.Duration) (grpc.ServerStreamingClient[workloadpb.X509SVIDResponse], *workloadpb.X509SVIDResponse) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	stream, err := workloadpb.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("first X509-SVID response: %v", err)
	}
	return stream, first
}

// StreamEnd reads stream until it fails and returns the error.
func StreamEnd[T any](stream grpc.ServerStreamingClient[T]) error {
	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
	}
}

// WorkloadAPIClient is a raw Workload API client on the unix socket at
// socketPath (closed on cleanup), for tests that must see exactly what an
// agent sends (go-spiffe's client retries, and skips a repeated hint).
// Calls need WorkloadAPIContext's header.
func WorkloadAPIClient(t testing.TB, socketPath string) workloadpb.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return workloadpb.NewSpiffeWorkloadAPIClient(conn)
}

// WorkloadAPIContext adds the Workload API's security header to ctx.
func WorkloadAPIContext(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}
