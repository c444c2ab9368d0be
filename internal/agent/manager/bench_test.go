package manager_test

import (
	"fmt"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// BenchmarkNewEntryToWorkload measures an entry created through the admin
// API until its SVID is in the agent's cache (watch push, key generation,
// CSR, signing, cache update).
func BenchmarkNewEntryToWorkload(b *testing.B) {
	srv := newTestServer(b, serverOpts{})
	token, agentID := srv.createToken()
	a := startAgent(b, srv, b.TempDir(), agentOpts{token: token})
	srv.createEntry(agentID, "/warmup", "1")
	a.waitIdentity("1", spiffeid.RequireFromPath(td, "/warmup"))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		uid := fmt.Sprint(100000 + i)
		id := spiffeid.RequireFromPath(td, "/bench/"+uid)
		srv.createEntry(agentID, id.Path(), uid)
		a.waitIdentity(uid, id)
	}
}

// BenchmarkStartToFirstSVID measures a fresh agent, with its entries
// already registered, from start (attestation) to its first workload SVID.
func BenchmarkStartToFirstSVID(b *testing.B) {
	srv := newTestServer(b, serverOpts{})
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		token, agentID := srv.createToken()
		id := spiffeid.RequireFromPath(td, fmt.Sprintf("/start/%d", i))
		srv.createEntry(agentID, id.Path(), "42")
		dir := b.TempDir()
		b.StartTimer()
		a := startAgent(b, srv, dir, agentOpts{token: token})
		a.waitIdentity("42", id)
		b.StopTimer()
		a.stop()
		b.StartTimer()
	}
}
