package stack

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// X509Watch is a go-spiffe workload watching its X.509 context on an
// agent's socket, as the benchmarks' workloads do.
type X509Watch struct {
	// Updates delivers every X509Context the agent pushes.
	Updates <-chan *workloadapi.X509Context
	done    <-chan error
}

// WatchX509 starts watching on socket until ctx ends; the client is closed
// when tb ends.
func WatchX509(tb testing.TB, ctx context.Context, socket string) *X509Watch {
	tb.Helper()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(socket))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	updates := make(chan *workloadapi.X509Context, 16)
	done := make(chan error, 1)
	go func() { done <- c.WatchX509Context(ctx, x509Watcher{updates}) }()
	return &X509Watch{Updates: updates, done: done}
}

// WaitFor consumes updates until has(update) holds; it fails when the
// watch ends or after 30 s.
func (w *X509Watch) WaitFor(has func(*workloadapi.X509Context) bool) error {
	timeout := time.After(30 * time.Second)
	for {
		select {
		case u := <-w.Updates:
			if has(u) {
				return nil
			}
		case err := <-w.done:
			return fmt.Errorf("watch ended: %w", err)
		case <-timeout:
			return errors.New("no matching update after 30s")
		}
	}
}

// HasSVID is true of an update that holds an X509-SVID for id.
func HasSVID(id spiffeid.ID) func(*workloadapi.X509Context) bool {
	return func(u *workloadapi.X509Context) bool {
		for _, s := range u.SVIDs {
			if s.ID == id {
				return true
			}
		}
		return false
	}
}

type x509Watcher struct {
	updates chan<- *workloadapi.X509Context
}

func (w x509Watcher) OnX509ContextUpdate(u *workloadapi.X509Context) { w.updates <- u }
func (x509Watcher) OnX509ContextWatchError(error)                    {}
