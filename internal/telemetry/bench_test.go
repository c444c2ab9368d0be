package telemetry

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// What recording costs on the hot paths: one server API call (counter and
// histogram, two label lookups), one agent socket call, one datastore
// operation.
func BenchmarkServerRPC(b *testing.B) {
	m := NewServer(NewRegistry(ServerPrefix))
	b.ReportAllocs()
	for b.Loop() {
		m.RPC("/spire.api.server.svid.v1.SVID/BatchNewX509SVID", "OK", 300*time.Microsecond)
	}
}

func BenchmarkAgentCallDone(b *testing.B) {
	m := NewAgent(NewRegistry(AgentPrefix))
	b.ReportAllocs()
	for b.Loop() {
		m.CallDone("/SpiffeWorkloadAPI/FetchX509SVID", codes.OK, 200*time.Microsecond)
	}
}

func BenchmarkDatastoreOperation(b *testing.B) {
	m := NewServer(NewRegistry(ServerPrefix))
	b.ReportAllocs()
	for b.Loop() {
		m.DatastoreOperation("GetNode", 50*time.Microsecond, false)
	}
}

// BenchmarkScrapeServer is one scrape of a busy server's registry: 40 API
// methods x 3 codes, 40 datastore operations, the state gauges.
func BenchmarkScrapeServer(b *testing.B) {
	reg := NewRegistry(ServerPrefix)
	m := NewServer(reg)
	m.ObserveState(reg, func() ServerState { return ServerState{Entries: 1000, Agents: 100} })
	for i := range 40 {
		for _, code := range []string{"OK", "NotFound", "PermissionDenied"} {
			m.RPC(fmt.Sprintf("/spire.api.server.x.v1.X/M%d", i), code, time.Millisecond)
		}
		m.DatastoreOperation(fmt.Sprintf("Op%d", i), time.Millisecond, false)
	}
	h := reg.Handler()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(discard{http.Header{}}, req)
	}
}

type discard struct{ h http.Header }

func (d discard) Header() http.Header         { return d.h }
func (d discard) Write(p []byte) (int, error) { return io.Discard.Write(p) }
func (d discard) WriteHeader(int)             {}
