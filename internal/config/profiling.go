package config

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Profiling is SPIRE's profiling_* keys of the server block (undocumented
// in SPIRE's reference, but accepted by it and common in its examples).
// sigil-server serves net/http/pprof on localhost:Port and, every Freq,
// writes the Names profiles to the .profiles directory of its working
// directory, as spire-server does. sigil-agent refuses the keys (see
// agentProfilingRefusal).
type Profiling struct {
	// Enabled is profiling_enabled; the other fields are used only then.
	Enabled bool
	// Port is profiling_port: net/http/pprof on localhost:Port. 0 (the
	// default): no listener, as SPIRE.
	Port int
	// Freq is profiling_freq (whole seconds in the file): how often the
	// Names profiles are written to disk. 0 (the default): never.
	Freq time.Duration
	// Names is profiling_names, duplicates dropped, each one of
	// ProfileNames.
	Names []string
}

// ProfileNames are the profiles profiling_names may list: SPIRE's set
// (case-sensitive, as SPIRE).
var ProfileNames = []string{"goroutine", "threadcreate", "heap", "block", "mutex", "trace", "cpu"}

// profilingKeys are the server block's profiling keys.
var profilingKeys = []string{"profiling_enabled", "profiling_port", "profiling_freq", "profiling_names"}

// profiling reads the profiling_* keys of the server block. Every check
// needs the file's line, so all are made here (Validate repeats the range
// checks for configurations built in code).
func (d *decoder) profiling(b *block, p *Profiling) {
	b.boolean("profiling_enabled", &p.Enabled)
	b.port("profiling_port", &p.Port)
	var freq int64
	if b.integer("profiling_freq", &freq) {
		if freq < 0 || freq > math.MaxInt64/int64(time.Second) {
			d.errorf(b.kids["profiling_freq"].pos, "invalid value for %q in %s: %d is not a number of seconds >= 0", "profiling_freq", b.desc, freq)
		} else {
			p.Freq = time.Duration(freq) * time.Second
		}
	}
	var names []string
	if b.strings("profiling_names", &names) {
		for _, n := range names {
			if !slices.Contains(ProfileNames, n) {
				d.errorf(b.kids["profiling_names"].pos, "invalid value for %q in %s: unknown profile %.64q; must be one of %s", "profiling_names", b.desc, n, strings.Join(ProfileNames, ", "))
				continue
			}
			if !slices.Contains(p.Names, n) {
				p.Names = append(p.Names, n)
			}
		}
	}
	if !p.Enabled {
		return
	}
	// SPIRE starts nothing for these; Sigil says so instead of starting
	// a profiler that does nothing.
	en := b.kids["profiling_enabled"].pos
	switch {
	case p.Port == 0 && p.Freq == 0:
		d.errorf(en, "%q is true in %s but %q is not set: set it to serve net/http/pprof on localhost at that port (and/or set %q and %q to write profiles to disk)",
			"profiling_enabled", b.desc, "profiling_port", "profiling_freq", "profiling_names")
	case p.Freq > 0 && len(names) == 0:
		d.errorf(b.kids["profiling_freq"].pos, "%q is set in %s but %q lists no profile to write; list some of %s",
			"profiling_freq", b.desc, "profiling_names", strings.Join(ProfileNames, ", "))
	}
}

func (p Profiling) validate() error {
	if !p.Enabled {
		return nil
	}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(validatePort("profiling_port", p.Port, true))
	if p.Freq < 0 {
		add(fmt.Errorf("profiling_freq must be >= 0, got %s", p.Freq))
	}
	for _, n := range p.Names {
		if !slices.Contains(ProfileNames, n) {
			add(fmt.Errorf("profiling_names: unknown profile %.64q; must be one of %s", n, strings.Join(ProfileNames, ", ")))
		}
	}
	if p.Port == 0 && p.Freq == 0 {
		add(errors.New("profiling_enabled is true but profiling_port is not set (nor profiling_freq)"))
	}
	if p.Freq > 0 && len(p.Names) == 0 {
		add(errors.New("profiling_freq is set but profiling_names lists no profile"))
	}
	return errors.Join(errs...)
}

// agentProfilingRefusal refuses the profiling_* keys in the agent block,
// saying why: serving net/http/pprof would take sigil-agent's release
// binary past its size budget.
func (d *decoder) agentProfilingRefusal(b *block) {
	for _, k := range profilingKeys {
		if e := b.take(k); e != nil {
			d.errorf(e.pos, "unsupported key %q in %s: profiling is supported by sigil-server but not by sigil-agent (net/http/pprof would add ~500 KB to the agent binary, past its 15 MiB size budget); remove it", k, b.desc)
		}
	}
}
