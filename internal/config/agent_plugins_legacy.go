package config

// TEMPORARY (issue 8): the agent's plugins as fields, decoded here until the
// agent's catalog (internal/catalog/agent) parses them from Agent.Plugins
// the way the server's does; then this file goes away.

import (
	"errors"
	"fmt"
)

// Plugin names of KeyManager (both binaries).
const (
	KeyManagerDisk   = "disk"
	KeyManagerMemory = "memory"
)

// unsupportedAgentPluginTypes are spire-agent plugin types Sigil does not
// implement.
var unsupportedAgentPluginTypes = map[string]bool{"SVIDStore": true}

// AgentNodeAttestor names the agent's (single) node attestor.
type AgentNodeAttestor struct {
	JoinToken bool // NodeAttestor "join_token"
}

// AgentKeyManager is KeyManager "disk" or "memory".
type AgentKeyManager struct {
	Kind      string // "disk" or "memory"
	Directory string // disk: directory, as given
}

// WorkloadAttestors lists the enabled workload attestors (at least one).
type WorkloadAttestors struct {
	Unix *UnixWorkloadAttestor // WorkloadAttestor "unix"
}

// UnixWorkloadAttestor is WorkloadAttestor "unix".
type UnixWorkloadAttestor struct {
	DiscoverWorkloadPath bool
	// WorkloadSizeLimit: 0 no limit, negative never hash the binary.
	WorkloadSizeLimit int64
}

func (d *decoder) agentPlugins(decls []pluginDecl, a *Agent) {
	once := d.onePerType()
	for _, p := range decls {
		a.Plugins = append(a.Plugins, p.plugin)
		switch p.typ {
		case "NodeAttestor":
			if p.name != "join_token" {
				d.unknownPlugin(p, "join_token")
				continue
			}
			if once(p) {
				a.NodeAttestor.JoinToken = true
				p.data.done()
			}
		case "KeyManager":
			d.keyManager(p, once, &a.KeyManager.Kind, "directory", &a.KeyManager.Directory)
		case "WorkloadAttestor":
			switch p.name {
			case "unix":
				u := &UnixWorkloadAttestor{}
				p.data.boolean("discover_workload_path", &u.DiscoverWorkloadPath)
				p.data.integer("workload_size_limit", &u.WorkloadSizeLimit)
				p.data.done()
				a.WorkloadAttestors.Unix = u
			default:
				d.unknownPlugin(p, "unix")
			}
		default:
			d.unknownPluginType(p, unsupportedAgentPluginTypes, "NodeAttestor, KeyManager, WorkloadAttestor")
		}
	}
}

func (a *Agent) validateLegacyPlugins() error {
	var errs []error
	if !a.NodeAttestor.JoinToken {
		errs = append(errs, errors.New(`exactly one NodeAttestor plugin must be configured: NodeAttestor "join_token"`))
	}
	if err := validateKeyManager(a.KeyManager.Kind, "directory", a.KeyManager.Directory); err != nil {
		errs = append(errs, err)
	}
	if a.WorkloadAttestors == (WorkloadAttestors{}) {
		errs = append(errs, errors.New(`at least one WorkloadAttestor plugin must be configured: WorkloadAttestor "unix"`))
	}
	return errors.Join(errs...)
}

// onePerType returns a check that accepts the first plugin of each type and
// reports every later one as a duplicate.
func (d *decoder) onePerType() func(pluginDecl) bool {
	first := map[string]pluginDecl{}
	return func(p pluginDecl) bool {
		if prev, dup := first[p.typ]; dup {
			d.errorf(p.pos, "plugin %s %q: only one %s plugin may be configured (%q is on line %d)", p.typ, p.name, p.typ, prev.name, prev.pos.Line)
			return false
		}
		first[p.typ] = p
		return true
	}
}

// keyManager decodes KeyManager "disk" (its path setting named pathKey) or
// "memory" into kind and path.
func (d *decoder) keyManager(p pluginDecl, once func(pluginDecl) bool, kind *string, pathKey string, path *string) {
	switch p.name {
	case KeyManagerDisk, KeyManagerMemory:
		if !once(p) {
			return
		}
		*kind = p.name
		if p.name == KeyManagerDisk {
			p.data.str(pathKey, path)
		}
		p.data.done()
	default:
		d.unknownPlugin(p, "disk, memory")
	}
}

// validateKeyManager checks that one KeyManager is configured and that the
// disk one has its path setting pathKey.
func validateKeyManager(kind, pathKey, path string) error {
	switch kind {
	case KeyManagerDisk:
		if path == "" {
			return fmt.Errorf("plugin KeyManager %q: %s must be configured", KeyManagerDisk, pathKey)
		}
	case KeyManagerMemory:
	case "":
		return errors.New(`exactly one KeyManager plugin must be configured: KeyManager "disk" or "memory"`)
	default:
		return fmt.Errorf("unknown KeyManager %q", kind)
	}
	return nil
}

func (d *decoder) unknownPlugin(p pluginDecl, builtins string) {
	d.errorf(p.pos, "unknown plugin %s %q: Sigil's built-in %s plugins are: %s", p.typ, p.name, p.typ, builtins)
}

func (d *decoder) unknownPluginType(p pluginDecl, unsupported map[string]bool, known string) {
	if unsupported[p.typ] {
		d.errorf(p.pos, "unsupported plugin type %s (plugin %s %q): a SPIRE plugin type Sigil does not implement", p.typ, p.typ, p.name)
		return
	}
	d.errorf(p.pos, "unknown plugin type %q (plugin %s %q): known types are %s", p.typ, p.typ, p.name, known)
}
