// Package testutil runs real sigil-server and sigil-agent processes for
// end-to-end tests: it builds the binaries once per test binary, writes
// their configuration files, starts and stops them with their logs kept in
// files (and printed on failure), waits for readiness, drives the server's
// admin API over its unix socket, fetches SVIDs like a workload does, and
// cuts the network between two namespaces (netns.go).
//
// Import it only from _test.go files.
package testutil
