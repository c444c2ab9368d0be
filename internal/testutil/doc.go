// Package testutil runs real sigil-server and sigil-agent processes for
// end-to-end tests: it builds the binaries once per test binary, writes
// their configuration files, starts and stops them with their logs kept in
// files (and printed on failure), waits for readiness, drives the server's
// admin API over its unix socket (Admin), fetches SVIDs like a workload does,
// and cuts the network between two namespaces (netns.go).
//
// It is also where the tests' shared helpers live, one of each:
//
//   - Admin: join tokens, entries, bundle PEM, agents (ban/delete), on
//     internal/adminclient, which `sigil-server dev` uses too;
//   - ShortTempDir (unix socket paths are short) and FreePort;
//   - testca: the test certificate authority (roots, intermediates,
//     X509-SVIDs, x509pop-style leaves, PEM/DER);
//   - inproc: a real server and agent in the test process, on the app's
//     wiring (internal/app/server, internal/app/agent): the server test
//     harness;
//   - serverstack: the hand-wired server stack, the documented exception to
//     inproc for tests that need hooks the app does not expose.
//   - DialSDS, EnvoyNode, SDSRequest/SDSAck, DecodeSecrets: the Envoy side
//     of the agent's SDS (go-control-plane's generated client).
//
// Import it only from _test.go files (and test helpers).
package testutil
