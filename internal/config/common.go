package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"strings"
)

// HealthChecks is the top-level health_checks section, shared by server and
// agent (SPIRE defaults: disabled, localhost:80, /live, /ready).
type HealthChecks struct {
	ListenerEnabled bool
	BindAddress     string
	BindPort        int
	LivePath        string
	ReadyPath       string
}

func defaultHealthChecks() HealthChecks {
	return HealthChecks{BindAddress: "localhost", BindPort: 80, LivePath: "/live", ReadyPath: "/ready"}
}

func (d *decoder) healthChecks(root *block, hc *HealthChecks) {
	b := root.sub("health_checks", "health_checks block")
	if b == nil {
		return
	}
	b.boolean("listener_enabled", &hc.ListenerEnabled)
	b.str("bind_address", &hc.BindAddress)
	b.port("bind_port", &hc.BindPort)
	b.str("live_path", &hc.LivePath)
	b.str("ready_path", &hc.ReadyPath)
	b.done()
}

func (hc *HealthChecks) validate() error {
	if !hc.ListenerEnabled {
		return nil
	}
	var errs []error
	if hc.BindAddress == "" {
		errs = append(errs, errors.New("health_checks.bind_address must be set when listener_enabled is true"))
	}
	if hc.BindPort < 0 || hc.BindPort > 65535 {
		errs = append(errs, fmt.Errorf("health_checks.bind_port %d out of range 0..65535", hc.BindPort))
	}
	if !strings.HasPrefix(hc.LivePath, "/") {
		errs = append(errs, fmt.Errorf("health_checks.live_path %q must start with /", hc.LivePath))
	}
	if !strings.HasPrefix(hc.ReadyPath, "/") {
		errs = append(errs, fmt.Errorf("health_checks.ready_path %q must start with /", hc.ReadyPath))
	}
	if hc.LivePath == hc.ReadyPath {
		errs = append(errs, fmt.Errorf("health_checks.live_path and ready_path are both %q", hc.LivePath))
	}
	return errors.Join(errs...)
}

func validatePort(name string, p int, allowZero bool) error {
	if (p == 0 && allowZero) || (p >= 1 && p <= 65535) {
		return nil
	}
	return fmt.Errorf("%s %d out of range 1..65535", name, p)
}

func validateLogging(level, format string) error {
	var errs []error
	if _, err := ParseLogLevel(level); err != nil {
		errs = append(errs, fmt.Errorf("log_level: %w", err))
	}
	if _, err := parseLogFormat(format); err != nil {
		errs = append(errs, fmt.Errorf("log_format: %w", err))
	}
	return errors.Join(errs...)
}

// parseFlags parses args with fs, whose output is captured: -h/-help yields
// an error wrapping flag.ErrHelp that carries the usage text; an unknown flag
// yields the flag package's "flag provided but not defined: -x".
func parseFlags(fs *flag.FlagSet, args []string) (set map[string]bool, err error) {
	var out bytes.Buffer
	fs.SetOutput(&out)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, fmt.Errorf("%w\n%s", flag.ErrHelp, out.String())
		}
		return nil, fmt.Errorf("%s: %w", fs.Name(), err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set, nil
}
