package endpoints

import (
	"context"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
)

// Failed-attestation log limits: each source gets failureLogBurst WARN
// lines per failureLogWindow; the failures beyond are counted and reported
// in one summary line per source at the end of the window. At most
// failureLogMaxSources sources are counted apiece; the rest together.
const (
	failureLogBurst      = 10
	failureLogWindow     = time.Minute
	failureLogMaxSources = 10_000
	// maxLoggedClientText bounds any client-supplied text in a log line.
	maxLoggedClientText = 128
)

// failureLog writes one WARN line per failed node attestation (source,
// attestation type, reason; never the credential), limited per source so
// a flood of bad attempts cannot flood the log.
type failureLog struct {
	log *slog.Logger
	clk clock.Clock

	mu      sync.Mutex
	sources map[string]*failureCount
	other   int // failures not logged, of sources beyond failureLogMaxSources
}

type failureCount struct {
	logged, suppressed int
	attType, reason    string // of the last suppressed failure
}

func newFailureLog(log *slog.Logger, clk clock.Clock) *failureLog {
	return &failureLog{log: log, clk: clk, sources: make(map[string]*failureCount)}
}

// failed logs (or counts) one failed attestation. reason is the error
// returned to the client; penalty how long its answer is held back.
func (f *failureLog) failed(ctx context.Context, t transport, addr netip.Addr, attType, reason string, penalty time.Duration) {
	source, key := "local", "local"
	if t == tcpTransport {
		source, key = "unknown", "unknown"
		if addr.IsValid() {
			source = addr.String()
			key = sourceName(ratelimit.Source(addr))
		}
	}
	attType, reason = clip.Cut(attType, maxLoggedClientText), clip.Cut(reason, maxLoggedClientText)

	f.mu.Lock()
	c, ok := f.sources[key]
	if !ok {
		if len(f.sources) >= failureLogMaxSources {
			f.other++
			f.mu.Unlock()
			return
		}
		c = &failureCount{}
		f.sources[key] = c
	}
	if c.logged >= failureLogBurst {
		c.suppressed++
		c.attType, c.reason = attType, reason
		f.mu.Unlock()
		return
	}
	c.logged++
	f.mu.Unlock()

	attrs := []any{"source", source, "attestation_type", attType, "reason", reason}
	if penalty > 0 {
		attrs = append(attrs, "answer_delayed", penalty.Round(time.Millisecond))
	}
	f.log.WarnContext(ctx, "Failed node attestation", attrs...)
}

// flush writes the summaries of the window that ends and starts a new one.
func (f *failureLog) flush() {
	f.mu.Lock()
	sources, other := f.sources, f.other
	f.sources, f.other = make(map[string]*failureCount), 0
	f.mu.Unlock()

	keys := make([]string, 0, len(sources))
	for k, c := range sources {
		if c.suppressed > 0 {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		c := sources[k]
		f.log.Warn("Failed node attestations not logged", "source", k, "count", c.suppressed, "window", failureLogWindow,
			"last_attestation_type", c.attType, "last_reason", c.reason)
	}
	if other > 0 {
		f.log.Warn("Failed node attestations not logged", "source", "other sources", "count", other, "window", failureLogWindow)
	}
}

// run flushes every failureLogWindow until ctx is done, then once more.
func (f *failureLog) run(ctx context.Context) {
	defer f.flush()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.clk.After(failureLogWindow):
			f.flush()
		}
	}
}

// sourceName names a limiter source: the address of an IPv4 source, the
// /64 of an IPv6 one.
func sourceName(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}
