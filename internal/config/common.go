package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
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

// HelpError is what LoadServer and LoadAgent return for -h, -help or
// --help: it wraps flag.ErrHelp and carries the flags' usage.
type HelpError struct{ Usage string }

func (e *HelpError) Error() string { return "flag: help requested" }

// Unwrap makes errors.Is(err, flag.ErrHelp) hold.
func (e *HelpError) Unwrap() error { return flag.ErrHelp }

// FlagUsage returns the flags' usage (one entry per flag, as
// flag.PrintDefaults).
func (e *HelpError) FlagUsage() string { return e.Usage }

// parseFlags parses args with fs, whose output is captured: -h/-help yields
// a *HelpError carrying the flags' usage; an unknown flag yields the flag
// package's "flag provided but not defined: -x".
func parseFlags(fs *flag.FlagSet, args []string) (set map[string]bool, err error) {
	var out bytes.Buffer
	fs.SetOutput(&out)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			out.Reset()
			fs.PrintDefaults()
			return nil, &HelpError{Usage: out.String()}
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

// decodeFile decodes a SPIRE-style configuration file over the defaults the
// callbacks write into: its main block key (server or agent, whose SPIRE
// options Sigil lacks are in unsupported) through section, the
// health_checks block into hc, the telemetry block into tel and the enabled
// plugins into plugins. Nothing is validated beyond what decoding checks.
func decodeFile(name string, src []byte, key string, unsupported map[string]bool, hc *HealthChecks, tel *Telemetry,
	section func(*decoder, *block), plugins *[]Plugin) error {
	es, err := parseFile(name, src)
	if err != nil {
		return err
	}
	d := &decoder{file: name}
	root := d.newBlock("top level", es)
	root.unsupported = unsupportedTopLevel
	if b := root.sub(key, key+" block"); b != nil {
		b.unsupported = unsupported
		section(d, b)
		b.done()
	}
	d.healthChecks(root, hc)
	d.telemetry(root, tel)
	*plugins = d.plugins(root)
	root.done()
	return d.err()
}

// trustDomain decodes the trust_domain setting of b into dst.
func (d *decoder) trustDomain(b *block, dst *spiffeid.TrustDomain) {
	var td string
	if !b.str("trust_domain", &td) {
		return
	}
	v, err := parseTrustDomain(td)
	if err != nil {
		d.errorf(b.kids["trust_domain"].pos, "invalid trust_domain %q: %v", td, err)
		return
	}
	*dst = v
}

// maxTrustDomainLength bounds a trust domain name (SPIFFE ID spec: at most
// 255 bytes; go-spiffe does not check it).
const maxTrustDomainLength = 255

// parseTrustDomain is spiffeid.TrustDomainFromString with the SPIFFE
// spec's length limit.
func parseTrustDomain(s string) (spiffeid.TrustDomain, error) {
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return spiffeid.TrustDomain{}, err
	}
	if n := len(td.Name()); n > maxTrustDomainLength {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain name is %d bytes long; the maximum is %d", n, maxTrustDomainLength)
	}
	return td, nil
}

type validator interface{ Validate() error }

// parseValidated decodes a configuration file's content with parse, then
// validates it, naming the file in validation errors.
func parseValidated[C validator](name string, src []byte, parse func(string, []byte) (C, error)) (C, error) {
	var zero C
	c, err := parse(name, src)
	if err != nil {
		return zero, err
	}
	if err := c.Validate(); err != nil {
		return zero, fmt.Errorf("%s: %w", name, err)
	}
	return c, nil
}

// load handles `run` arguments: it parses them with fs (whose -config and
// -expandEnv flags write to config and expandEnv), reads and decodes the
// file with parse, lets override apply the flags given (set holds their
// names) and validates the result, naming the file in validation errors.
func load[C validator](fs *flag.FlagSet, args []string, config *string, expandEnv *bool,
	parse func(string, []byte) (C, error), override func(set map[string]bool, c C) error) (C, error) {
	var zero C
	set, err := parseFlags(fs, args)
	if err != nil {
		return zero, err
	}
	src, err := readConfigFile(*config, *expandEnv)
	if err != nil {
		return zero, err
	}
	c, err := parse(*config, src)
	if err != nil {
		return zero, err
	}
	if err := override(set, c); err != nil {
		return zero, err
	}
	if err := c.Validate(); err != nil {
		return zero, fmt.Errorf("%s: %w", *config, err)
	}
	return c, nil
}

// overrideFlag sets *dst to val when the flag name was given.
func overrideFlag[T any](set map[string]bool, name string, val T, dst *T) {
	if set[name] {
		*dst = val
	}
}

// overrideTrustDomain sets *dst from -trustDomain when it was given.
func overrideTrustDomain(set map[string]bool, val string, dst *spiffeid.TrustDomain) error {
	if !set["trustDomain"] {
		return nil
	}
	td, err := parseTrustDomain(val)
	if err != nil {
		return fmt.Errorf("-trustDomain: invalid trust domain %q: %w", val, err)
	}
	*dst = td
	return nil
}
