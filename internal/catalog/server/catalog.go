// Package server is sigil-server's plugin catalog: the built-in plugins of
// each type, how each parses its plugin_data and how it is built. The
// server's app (internal/app/server) asks it for what a configuration
// declares (Parse, then the Plugins methods) and has no case per plugin;
// the config package only reads the plugins section.
//
// Rules of the plugins section, per type (as spire-server's catalog):
//
//	DataStore          exactly one      "sql"
//	KeyManager         exactly one      "disk", "memory"
//	NodeAttestor       zero or more     "join_token", and those of the files built in
//	UpstreamAuthority  at most one      "disk", "spire"
//
// A type the server does not know, a name that is not built in, a second
// plugin of a one-only type and every error in a plugin_data stop start-up,
// each with its file:line; SPIRE plugin types Sigil does not implement are
// named as unsupported.
//
// # Adding a plugin
//
// One file per plugin in this package registers it from init, with the
// build tag that can leave it out (`//go:build !sigil_omit_<name>`); the
// plugin's package holds its parse function (from *config.PluginData) and
// constructor. nodeattestor_tpm.go is a complete example:
//
//	//go:build !sigil_omit_tpm
//
//	package server
//
//	import "github.com/sigil-spiffe/sigil/internal/attest/node/tpm"
//
//	func init() {
//		registerNodeAttestor(tpm.Type, tpm.ParseServerConfig,
//			func(_ context.Context, c tpm.ServerConfig, d NodeAttestorDeps) (NodeAttestor, error) {
//				return tpm.NewServer(d.TrustDomain, c)
//			})
//	}
//
// A node attestor's name is the attestation data type agents send, which
// the agent API dispatches on. registerDataStore, registerKeyManager and
// registerUpstreamAuthority work alike. The whole recipe (selector kinds,
// tests, README) is in the package documentation of internal/catalog.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// Plugin types of the server.
const (
	DataStoreType         = "DataStore"
	KeyManagerType        = "KeyManager"
	NodeAttestorType      = "NodeAttestor"
	UpstreamAuthorityType = "UpstreamAuthority"
)

// unsupportedTypes are spire-server plugin types Sigil does not implement.
var unsupportedTypes = []string{"BundlePublisher", "CredentialComposer", "NodeResolver", "Notifier"}

// DataStore is what the server keeps its state in.
type DataStore interface {
	datastore.DataStore
	PruneJoinTokens(ctx context.Context, before time.Time) (int, error)
	PruneEntries(ctx context.Context, before time.Time) (int, error)
	// PruneEvents deletes the change journals' events created before t
	// and records how far each journal was pruned (its horizon).
	PruneEvents(ctx context.Context, before time.Time) (int, error)
}

// NodeAttestor is the server half of a node attestor (see package
// internal/attest/node), as the agent API runs it.
type NodeAttestor interface {
	Attest(ctx context.Context, payload []byte, challenge node.ChallengeFunc) (*node.Result, error)
}

// UpstreamAuthority signs the server's CA. One that holds resources also
// implements io.Closer; the server closes it when it stops.
type UpstreamAuthority = ca.UpstreamAuthority

// DataStoreDeps are what a DataStore is built with.
type DataStoreDeps struct {
	Log   *slog.Logger
	Clock clock.Clock
}

// KeyManagerDeps are what a KeyManager is built with.
type KeyManagerDeps struct{}

// UpstreamAuthorityDeps are what an UpstreamAuthority is built with.
type UpstreamAuthorityDeps struct {
	TrustDomain spiffeid.TrustDomain
	Log         *slog.Logger
	Clock       clock.Clock
}

// NodeAttestorDeps are what a NodeAttestor is built with.
type NodeAttestorDeps struct {
	TrustDomain spiffeid.TrustDomain
	// Store is the server's datastore (join_token reads its tokens there).
	Store datastore.DataStore
	Clock clock.Clock
	Log   *slog.Logger
}

// builtIn is one catalog entry: configure parses a plugin_data and returns
// the plugin's build step.
type builtIn[D, T any] struct {
	name      string
	configure func(*config.PluginData) (func(context.Context, D) (T, error), error)
}

// kind is the catalog of one plugin type.
type kind[D, T any] struct {
	typ      string
	min, max int // how many the configuration may declare (max 0: any)
	builtIns map[string]builtIn[D, T]
}

func newKind[D, T any](typ string, min, max int) *kind[D, T] {
	return &kind[D, T]{typ: typ, min: min, max: max, builtIns: map[string]builtIn[D, T]{}}
}

var (
	dataStores          = newKind[DataStoreDeps, DataStore](DataStoreType, 1, 1)
	keyManagers         = newKind[KeyManagerDeps, keys.Manager](KeyManagerType, 1, 1)
	nodeAttestors       = newKind[NodeAttestorDeps, NodeAttestor](NodeAttestorType, 0, 0)
	upstreamAuthorities = newKind[UpstreamAuthorityDeps, UpstreamAuthority](UpstreamAuthorityType, 0, 1)
)

// register adds a built-in plugin to k: parse reads its plugin_data into
// its configuration C, build makes the plugin from it. A name registered
// twice is a programming error (it panics at start-up).
func register[C, D, T any](k *kind[D, T], name string, parse func(*config.PluginData) (C, error), build func(context.Context, C, D) (T, error)) {
	if _, dup := k.builtIns[name]; dup || name == "" {
		panic(fmt.Sprintf("catalog: %s %q registered twice or unnamed", k.typ, name))
	}
	k.builtIns[name] = builtIn[D, T]{name: name, configure: func(d *config.PluginData) (func(context.Context, D) (T, error), error) {
		c, err := parse(d)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, deps D) (T, error) { return build(ctx, c, deps) }, nil
	}}
}

func registerDataStore[C any](name string, parse func(*config.PluginData) (C, error), build func(context.Context, C, DataStoreDeps) (DataStore, error)) {
	register(dataStores, name, parse, build)
}

func registerKeyManager[C any](name string, parse func(*config.PluginData) (C, error), build func(context.Context, C, KeyManagerDeps) (keys.Manager, error)) {
	register(keyManagers, name, parse, build)
}

func registerNodeAttestor[C any](name string, parse func(*config.PluginData) (C, error), build func(context.Context, C, NodeAttestorDeps) (NodeAttestor, error)) {
	register(nodeAttestors, name, parse, build)
}

func registerUpstreamAuthority[C any](name string, parse func(*config.PluginData) (C, error), build func(context.Context, C, UpstreamAuthorityDeps) (UpstreamAuthority, error)) {
	register(upstreamAuthorities, name, parse, build)
}

// names lists the built-in names, sorted.
func (k *kind[D, T]) names() []string {
	out := make([]string, 0, len(k.builtIns))
	for n := range k.builtIns {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// BuiltIns returns the built-in plugin names of each server plugin type,
// sorted (for documentation and `validate`).
func BuiltIns() map[string][]string {
	return map[string][]string{
		DataStoreType:         dataStores.names(),
		KeyManagerType:        keyManagers.names(),
		NodeAttestorType:      nodeAttestors.names(),
		UpstreamAuthorityType: upstreamAuthorities.names(),
	}
}

// Configured is one declared plugin, parsed and ready to build.
type Configured[D, T any] struct {
	plugin config.Plugin
	build  func(context.Context, D) (T, error)
}

// Plugin is the declaration.
func (c Configured[D, T]) Plugin() config.Plugin { return c.plugin }

// Build builds the plugin; errors name it: `UpstreamAuthority "disk": ...`.
func (c Configured[D, T]) Build(ctx context.Context, deps D) (T, error) {
	v, err := c.build(ctx, deps)
	if err != nil {
		var zero T
		return zero, fmt.Errorf("%s: %w", c.plugin, err)
	}
	return v, nil
}

// Plugins are the plugins a configuration declares, checked against the
// catalog and with their plugin_data parsed: nothing is built, opened or
// created yet (a parse reads the files its plugin_data names to check
// them, as x509pop its CA bundles and tpm its EK directories, so that
// validate reports what run would: see the package doc of
// internal/catalog).
type Plugins struct {
	dataStore     Configured[DataStoreDeps, DataStore]
	keyManager    Configured[KeyManagerDeps, keys.Manager]
	upstream      []Configured[UpstreamAuthorityDeps, UpstreamAuthority] // 0 or 1
	nodeAttestors []Configured[NodeAttestorDeps, NodeAttestor]
}

// Parse checks the plugins cfg declares against the catalog and parses
// each one's plugin_data; it builds nothing (see Plugins). The error lists every problem,
// each with its file:line (or the file, for a missing plugin).
func Parse(cfg *config.Server) (*Plugins, error) {
	p := &Plugins{}
	var errs []error
	seen := map[string][]config.Plugin{}
	for _, pl := range cfg.Plugins {
		var err error
		switch pl.Type {
		case DataStoreType:
			err = add(dataStores, pl, seen, func(c Configured[DataStoreDeps, DataStore]) { p.dataStore = c })
		case KeyManagerType:
			err = add(keyManagers, pl, seen, func(c Configured[KeyManagerDeps, keys.Manager]) { p.keyManager = c })
		case NodeAttestorType:
			err = add(nodeAttestors, pl, seen, func(c Configured[NodeAttestorDeps, NodeAttestor]) { p.nodeAttestors = append(p.nodeAttestors, c) })
		case UpstreamAuthorityType:
			err = add(upstreamAuthorities, pl, seen, func(c Configured[UpstreamAuthorityDeps, UpstreamAuthority]) { p.upstream = append(p.upstream, c) })
		default:
			if slices.Contains(unsupportedTypes, pl.Type) {
				err = pl.Pos.Errorf("unsupported plugin type %s (plugin %s): a SPIRE plugin type Sigil does not implement", pl.Type, pl)
			} else {
				err = pl.Pos.Errorf("unknown plugin type %q (plugin %s): known types are %s, %s, %s, %s", pl.Type, pl,
					DataStoreType, KeyManagerType, NodeAttestorType, UpstreamAuthorityType)
			}
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	file := config.Pos{File: cfg.Path}
	missing := func(typ string, names []string) error {
		quoted := make([]string, len(names))
		for i, n := range names {
			quoted[i] = fmt.Sprintf("%s %q", typ, n)
		}
		msg := fmt.Sprintf("exactly one %s plugin must be configured: %s", typ, strings.Join(quoted, " or "))
		if file.File == "" {
			return errors.New(msg)
		}
		return file.Errorf("%s", msg)
	}
	if len(seen[DataStoreType]) == 0 {
		errs = append(errs, missing(DataStoreType, dataStores.names()))
	}
	if len(seen[KeyManagerType]) == 0 {
		errs = append(errs, missing(KeyManagerType, keyManagers.names()))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// add checks pl against k (its name, how many of its type) and parses its
// plugin_data; set keeps the result.
func add[D, T any](k *kind[D, T], pl config.Plugin, seen map[string][]config.Plugin, set func(Configured[D, T])) error {
	b, ok := k.builtIns[pl.Name]
	if !ok {
		return pl.Pos.Errorf("unknown plugin %s: Sigil's built-in %s plugins are: %s", pl, k.typ, strings.Join(k.names(), ", "))
	}
	prev := seen[k.typ]
	seen[k.typ] = append(prev, pl)
	if k.max > 0 && len(prev) >= k.max {
		return pl.Pos.Errorf("plugin %s: only one %s plugin may be configured (%q is on line %d)", pl, k.typ, prev[0].Name, prev[0].Pos.Line)
	}
	build, err := b.configure(pl.Data())
	if err != nil {
		return err
	}
	set(Configured[D, T]{plugin: pl, build: build})
	return nil
}

// DataStore is the configured DataStore plugin.
func (p *Plugins) DataStore() Configured[DataStoreDeps, DataStore] { return p.dataStore }

// KeyManager is the configured KeyManager plugin.
func (p *Plugins) KeyManager() Configured[KeyManagerDeps, keys.Manager] { return p.keyManager }

// UpstreamAuthority is the configured UpstreamAuthority plugin; ok is false
// when there is none (the CA is self-signed).
func (p *Plugins) UpstreamAuthority() (c Configured[UpstreamAuthorityDeps, UpstreamAuthority], ok bool) {
	if len(p.upstream) == 0 {
		return c, false
	}
	return p.upstream[0], true
}

// NodeAttestors builds every configured NodeAttestor, by name (the
// attestation type agents send).
func (p *Plugins) NodeAttestors(ctx context.Context, deps NodeAttestorDeps) (map[string]NodeAttestor, error) {
	out := make(map[string]NodeAttestor, len(p.nodeAttestors))
	for _, c := range p.nodeAttestors {
		a, err := c.Build(ctx, deps)
		if err != nil {
			return nil, err
		}
		out[c.plugin.Name] = a
	}
	return out, nil
}

// Names returns the declared plugins, `Type "name"`: DataStore, KeyManager,
// UpstreamAuthority, then the NodeAttestors (for the start-up log).
func (p *Plugins) Names() []string {
	var out []string
	add := func(pl config.Plugin) { out = append(out, pl.String()) }
	add(p.dataStore.plugin)
	add(p.keyManager.plugin)
	for _, c := range p.upstream {
		add(c.plugin)
	}
	for _, c := range p.nodeAttestors {
		add(c.plugin)
	}
	return out
}
