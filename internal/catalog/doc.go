// Package catalog lists what Sigil has built in: the selector types
// (Selectors) here, and the plugins of each binary in its sub-packages,
// internal/catalog/server (sigil-server) and internal/catalog/agent
// (sigil-agent). The config package only reads a file's plugins section
// into config.Plugin values (type, name, file:line, plugin_data); a binary's
// catalog knows which types and names exist, how many of each a
// configuration may declare, and how to build each, and its app
// (internal/app/server, internal/app/agent) asks the catalog instead of
// switching on plugin names.
//
// # Selector types
//
// Each attestor's package declares the selector kinds it produces, next to
// the code that produces them (jointoken.SelectorKinds, unix.SelectorKind);
// Selectors lists them, plus the types of SPIRE's attestors Sigil does not
// implement yet, accepted without value checks so that entries for them
// (from spire-controller-manager, or ahead of the Sigil release that adds
// the attestor) are not refused.
//
// # Adding a plugin
//
// First, the plugin's package (a node attestor: internal/attest/node/<name>,
// both halves in one package) holds its typed configuration and a parse
// function from *config.PluginData: it reads every key it supports with the
// getters (String, Int, Port, Bool, Duration, Strings, Ints, Block), names
// the SPIRE keys it knowingly lacks with Unsupported, checks values with
// Errorf (which names the key's file:line) and returns Done's error, which
// adds every key it did not read. The parse is where file-backed options
// are checked: it reads the files and directories its plugin_data names
// (or, for one the plugin creates, checks it can be), with the very
// function the constructor uses, and reports a problem on the key's line,
// so that `validate`, which parses but builds nothing, refuses what start-up
// would (x509pop's CA bundles and device files, tpm's ek_ca_path and
// ek_hash_path, the key managers' directories). It never creates or
// changes anything. Next to it, a constructor taking that configuration
// and what the catalog passes (the binary's Deps types: trust domain,
// datastore, clock, log).
//
// Second, one file per plugin in the binary's catalog registers the two
// from init, under the build tag that can leave it out of a binary,
// `//go:build !sigil_omit_<name>` (internal/catalog/server/nodeattestor_tpm.go
// is the model, about ten lines; the server package's documentation shows
// it). The name is what the configuration spells (`NodeAttestor "x509pop"`)
// and, for a node attestor, the attestation data type agents send: the
// server's agent API dispatches on it over every configured attestor.
//
// Third, its selector kinds: a selectors_<name>.go here, under the same
// tag, adds them to Selectors (and the name to omittable, so a build
// without it still accepts its selectors). Then its tests next to it (parse
// errors with their file:line) and its line in the README's plugin table.
//
// Nothing else changes: not config, not the apps. `go build -tags
// sigil_omit_<name>` leaves the plugin out; cmd/sigil-server's deps test
// checks that such a build links none of the plugin's package.
package catalog
