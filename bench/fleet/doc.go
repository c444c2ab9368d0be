// Package fleet is the fleet simulator: N simulated agents in one process,
// each a real client of a server's agent APIs (spire-api-sdk agent/v1,
// entry/v1, svid/v1) over its own mTLS connection, through the agent's own
// client (internal/agent/client): join-token attestation, watch-mode entry
// sync (SPIRE's one-round streams, polled, against a server that does not
// push), CSR batches for every authorized entry, agent and workload SVID
// renewal, and entry churn while every watch stream is open.
//
// The server is a separate real process (sigil-server, or spire-server for
// a ratio), so its CPU time and peak RSS are read from /proc apart from the
// simulator's own work (key generation and CSRs of every agent).
//
// Everything lives in _test.go files: the simulator is driven by `go test`
// (TestFleet, its flags in fleet_test.go; TestFleetSmoke is the short CI run
// that keeps it from rotting). bench/RESULTS.md ("Fleet scale") has the
// commands and figures.
package fleet
