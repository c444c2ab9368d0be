// Package agent is sigil-agent's plugin catalog: the built-in plugins of
// each type, how each parses its plugin_data and how it is built. The
// agent's app (internal/app/agent) asks it for what a configuration
// declares (Parse, then the Plugins methods) and has no case per plugin;
// the config package only reads the plugins section.
//
// Rules of the plugins section, per type (as spire-agent's catalog):
//
//	NodeAttestor       exactly one      "join_token", and those of the files built in
//	KeyManager         exactly one      "disk", "memory", and those of the files built in
//	WorkloadAttestor   one or more      "unix"
//
// A type the agent does not know, a name that is not built in, a second
// plugin of a one-only type (or a second with the same name) and every
// error in a plugin_data stop start-up, each with its file:line; SPIRE
// plugin types Sigil does not implement are named as unsupported.
//
// # Adding a plugin
//
// One file per plugin in this package registers it from init, so a build
// tag can leave it out of a binary: `//go:build !sigil_omit_<name>` (the
// tags a device build may set are listed in the README; the agent's
// deps test proves what such a build links). The plugin's own package
// holds a parse function from *config.PluginData to its typed
// configuration (reading each key, checking values with Errorf, returning
// Done's error) and a constructor; the agent half of a node attestor has
// Type() and Begin(ctx) (node.Session, error). A node attestor's entry:
//
//	//go:build !sigil_omit_x509pop
//
//	package agent
//
//	import "github.com/sigil-spiffe/sigil/internal/attest/node/x509pop"
//
//	func init() {
//		registerNodeAttestor(x509pop.Type, x509pop.ParseAgentConfig,
//			func(_ context.Context, c x509pop.AgentConfig, _ NodeAttestorDeps) (NodeAttestor, error) {
//				return x509pop.NewAgent(c)
//			})
//	}
//
// The name is the attestation data type the agent sends. registerKeyManager
// and registerWorkloadAttestor work alike.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/keys"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Plugin types of the agent.
const (
	KeyManagerType       = "KeyManager"
	NodeAttestorType     = "NodeAttestor"
	WorkloadAttestorType = "WorkloadAttestor"
)

// unsupportedTypes are spire-agent plugin types Sigil does not implement.
var unsupportedTypes = []string{"SVIDStore"}

// NodeAttestor is the agent half of a node attestor (see package
// internal/attest/node), as the agent's manager runs it.
type NodeAttestor interface {
	// Type is the attestation data type (the plugin's name).
	Type() string
	// Begin starts one attestation.
	Begin(ctx context.Context) (node.Session, error)
}

// WorkloadAttestor produces the selectors of a process.
type WorkloadAttestor interface {
	Attest(ctx context.Context, pid int32) ([]selector.Selector, error)
}

// KeyManager keeps the agent SVID's key. One whose keys live in files
// also has Dir() string, the directory the agent cleans of a killed
// predecessor's temporary files at start-up.
type KeyManager = keys.Manager

// NodeAttestorDeps are what a NodeAttestor is built with.
type NodeAttestorDeps struct {
	TrustDomain spiffeid.TrustDomain
	// JoinToken is the agent's join_token (or -joinToken); only
	// NodeAttestor "join_token" uses it.
	JoinToken string
	// DataDir is the agent's data_dir.
	DataDir string
	Clock   clock.Clock
	Log     *slog.Logger
}

// KeyManagerDeps are what a KeyManager is built with.
type KeyManagerDeps struct {
	// DataDir is the agent's data_dir.
	DataDir string
	Log     *slog.Logger
}

// WorkloadAttestorDeps are what a WorkloadAttestor is built with.
type WorkloadAttestorDeps struct {
	Clock clock.Clock
	Log   *slog.Logger
}

// builtIn is one catalog entry: configure parses a plugin_data and returns
// the plugin's build step.
type builtIn[D, T any] struct {
	configure func(*config.PluginData) (func(context.Context, D) (T, error), error)
}

// kind is the catalog of one plugin type.
type kind[D, T any] struct {
	typ      string
	max      int // how many the configuration may declare (0: any number)
	builtIns map[string]builtIn[D, T]
}

func newKind[D, T any](typ string, max int) *kind[D, T] {
	return &kind[D, T]{typ: typ, max: max, builtIns: map[string]builtIn[D, T]{}}
}

var (
	keyManagers       = newKind[KeyManagerDeps, KeyManager](KeyManagerType, 1)
	nodeAttestors     = newKind[NodeAttestorDeps, NodeAttestor](NodeAttestorType, 1)
	workloadAttestors = newKind[WorkloadAttestorDeps, WorkloadAttestor](WorkloadAttestorType, 0)
)

// register adds a built-in plugin to k: parse reads its plugin_data into
// its configuration C, build makes the plugin from it. A name registered
// twice is a programming error (it panics at start-up).
func register[C, D, T any](k *kind[D, T], name string, parse func(*config.PluginData) (C, error), build func(context.Context, C, D) (T, error)) {
	if _, dup := k.builtIns[name]; dup || name == "" {
		panic(fmt.Sprintf("catalog: %s %q registered twice or unnamed", k.typ, name))
	}
	k.builtIns[name] = builtIn[D, T]{configure: func(d *config.PluginData) (func(context.Context, D) (T, error), error) {
		c, err := parse(d)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, deps D) (T, error) { return build(ctx, c, deps) }, nil
	}}
}

func registerKeyManager[C any](name string, parse func(*config.PluginData) (C, error), build func(context.Context, C, KeyManagerDeps) (KeyManager, error)) {
	register(keyManagers, name, parse, build)
}

func registerNodeAttestor[C any](name string, parse func(*config.PluginData) (C, error), build func(context.Context, C, NodeAttestorDeps) (NodeAttestor, error)) {
	register(nodeAttestors, name, parse, build)
}

func registerWorkloadAttestor[C any](name string, parse func(*config.PluginData) (C, error), build func(context.Context, C, WorkloadAttestorDeps) (WorkloadAttestor, error)) {
	register(workloadAttestors, name, parse, build)
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

// BuiltIns returns the built-in plugin names of each agent plugin type,
// sorted (for documentation, `validate` and the deps test).
func BuiltIns() map[string][]string {
	return map[string][]string{
		KeyManagerType:       keyManagers.names(),
		NodeAttestorType:     nodeAttestors.names(),
		WorkloadAttestorType: workloadAttestors.names(),
	}
}

// Configured is one declared plugin, parsed and ready to build.
type Configured[D, T any] struct {
	plugin config.Plugin
	build  func(context.Context, D) (T, error)
}

// Plugin is the declaration.
func (c Configured[D, T]) Plugin() config.Plugin { return c.plugin }

// Build builds the plugin; errors name it: `KeyManager "disk": ...`.
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
// them, as x509pop its device certificate and key, so that validate
// reports what run would: see the package doc of internal/catalog).
type Plugins struct {
	nodeAttestor      Configured[NodeAttestorDeps, NodeAttestor]
	keyManager        Configured[KeyManagerDeps, KeyManager]
	workloadAttestors []Configured[WorkloadAttestorDeps, WorkloadAttestor]
}

// Parse checks the plugins cfg declares against the catalog and parses
// each one's plugin_data; it builds nothing (see Plugins). The error lists every problem,
// each with its file:line (or the file, for a missing plugin).
func Parse(cfg *config.Agent) (*Plugins, error) {
	p := &Plugins{}
	var errs []error
	seen := map[string][]config.Plugin{}
	for _, pl := range cfg.Plugins {
		var err error
		switch pl.Type {
		case NodeAttestorType:
			err = add(nodeAttestors, pl, seen, func(c Configured[NodeAttestorDeps, NodeAttestor]) { p.nodeAttestor = c })
		case KeyManagerType:
			err = add(keyManagers, pl, seen, func(c Configured[KeyManagerDeps, KeyManager]) { p.keyManager = c })
		case WorkloadAttestorType:
			err = add(workloadAttestors, pl, seen, func(c Configured[WorkloadAttestorDeps, WorkloadAttestor]) {
				p.workloadAttestors = append(p.workloadAttestors, c)
			})
		default:
			if slices.Contains(unsupportedTypes, pl.Type) {
				err = pl.Pos.Errorf("unsupported plugin type %s (plugin %s): a SPIRE plugin type Sigil does not implement", pl.Type, pl)
			} else {
				err = pl.Pos.Errorf("unknown plugin type %q (plugin %s): known types are %s, %s, %s", pl.Type, pl,
					KeyManagerType, NodeAttestorType, WorkloadAttestorType)
			}
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	file := config.Pos{File: cfg.Path}
	atFile := func(msg string) error {
		if file.File == "" {
			return errors.New(msg)
		}
		return file.Errorf("%s", msg)
	}
	missing := func(typ, how string, names []string) error {
		quoted := make([]string, len(names))
		for i, n := range names {
			quoted[i] = fmt.Sprintf("%s %q", typ, n)
		}
		return atFile(fmt.Sprintf("%s %s plugin must be configured: %s", how, typ, strings.Join(quoted, " or ")))
	}
	if len(seen[NodeAttestorType]) == 0 {
		errs = append(errs, missing(NodeAttestorType, "exactly one", nodeAttestors.names()))
	}
	if len(seen[KeyManagerType]) == 0 {
		errs = append(errs, missing(KeyManagerType, "exactly one", keyManagers.names()))
	}
	if len(seen[WorkloadAttestorType]) == 0 {
		errs = append(errs, missing(WorkloadAttestorType, "at least one", workloadAttestors.names()))
	}
	if cfg.JoinToken != "" {
		if na := seen[NodeAttestorType]; len(na) > 0 && na[0].Name != JoinTokenName {
			errs = append(errs, atFile(fmt.Sprintf("a join token is set (join_token or -joinToken) but the NodeAttestor is %q: only NodeAttestor %q uses it",
				na[0].Name, JoinTokenName)))
		}
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
	for _, q := range prev {
		if q.Name == pl.Name {
			return pl.Pos.Errorf("plugin %s is declared twice (also on line %d)", pl, q.Pos.Line)
		}
	}
	build, err := b.configure(pl.Data())
	if err != nil {
		return err
	}
	set(Configured[D, T]{plugin: pl, build: build})
	return nil
}

// NodeAttestor is the configured NodeAttestor plugin.
func (p *Plugins) NodeAttestor() Configured[NodeAttestorDeps, NodeAttestor] { return p.nodeAttestor }

// KeyManager is the configured KeyManager plugin.
func (p *Plugins) KeyManager() Configured[KeyManagerDeps, KeyManager] { return p.keyManager }

// WorkloadAttestors are the configured WorkloadAttestor plugins, in file
// order.
func (p *Plugins) WorkloadAttestors() []Configured[WorkloadAttestorDeps, WorkloadAttestor] {
	return slices.Clone(p.workloadAttestors)
}

// Names returns the declared plugins, `Type "name"`: NodeAttestor,
// KeyManager, then the WorkloadAttestors (for the start-up log).
func (p *Plugins) Names() []string {
	out := []string{p.nodeAttestor.plugin.String(), p.keyManager.plugin.String()}
	for _, c := range p.workloadAttestors {
		out = append(out, c.plugin.String())
	}
	return out
}
