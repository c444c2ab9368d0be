// Package startup measures how long a sigil-server restarted on a large
// datastore takes to serve: a SQLite datastore with N registration entries
// and M attested agents is generated once (through the datastore API, in
// big transactions, straight into the file: creating a million entries
// through the gRPC API would take too long), kept in a directory given by
// flag so later runs reuse it, and a real sigil-server process is started
// on it and timed from the process start to
//
//   - its agent API accepting TCP connections,
//   - its admin API's health check answering SERVING,
//   - a new agent's first join-token attestation succeeding,
//   - an agent already in the datastore (the probe agent, attested while
//     the datastore was generated) getting every one of its entries from
//     a sync round,
//
// with the server's peak RSS (VmHWM) and CPU time read from /proc.
//
// Everything lives in _test.go files: TestStartup (its flags in
// startup_test.go) is the measurement; TestStartupSmoke is a small run in
// CI so it cannot rot. bench/RESULTS.md ("Start-up on 1,000,000 entries
// and 100,000 agents") has the commands and figures.
package startup
