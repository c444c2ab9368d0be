package config

import (
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/keys"
)

// SPIRE's server defaults.
const (
	DefaultServerConfigPath  = "conf/server/server.conf"
	DefaultServerBindAddress = "0.0.0.0"
	DefaultServerBindPort    = 8081
	DefaultServerSocketPath  = "/tmp/spire-server/private/api.sock"
	DefaultLogLevel          = "INFO"
	DefaultLogFormat         = "text"
	DefaultCATTL             = 24 * time.Hour
	DefaultX509SVIDTTL       = time.Hour
	DefaultJWTSVIDTTL        = 5 * time.Minute
	defaultCASubjectCountry  = "US"
	defaultCASubjectOrg      = "SPIFFE"
)

// Server is sigil-server's configuration: defaults applied, validated.
type Server struct {
	// Path is the configuration file it was read from ("" when built in code).
	Path string

	BindAddress string
	BindPort    int // 0 means an ephemeral port (tests)
	SocketPath  string
	TrustDomain spiffeid.TrustDomain
	DataDir     string

	LogLevel  string
	LogFormat string
	LogFile   string

	CATTL              time.Duration
	DefaultX509SVIDTTL time.Duration
	DefaultJWTSVIDTTL  time.Duration
	// AgentTTL is the lifetime of agent SVIDs; it defaults to DefaultX509SVIDTTL.
	AgentTTL   time.Duration
	CAKeyType  keys.Type
	JWTKeyType keys.Type // defaults to CAKeyType
	JWTIssuer  string
	CASubject  pkix.Name // default C=US, O=SPIFFE, as SPIRE

	RateLimit    RateLimit
	HealthChecks HealthChecks
	// Federation is server.federation (nil when absent).
	Federation *Federation
	Telemetry  Telemetry
	// AuditLogEnabled is server.audit_log_enabled: one log line per API
	// call (SPIRE's audit log).
	AuditLogEnabled bool
	// Profiling is SPIRE's profiling_* keys: net/http/pprof on loopback
	// and periodic profile dumps.
	Profiling Profiling

	// Plugins are the enabled plugins of the plugins section, in file
	// order, each with its plugin_data for the plugin to parse. Which
	// types and names exist, and how many of each, is the server's
	// catalog's business (internal/catalog/server), not this package's.
	Plugins []Plugin
}

// RateLimit is server.ratelimit; both default to true, as SPIRE.
type RateLimit struct {
	Attestation bool
	Signing     bool
}

// DefaultServer returns a Server holding SPIRE's defaults; TrustDomain,
// DataDir and Plugins are left for the caller.
func DefaultServer() *Server {
	return &Server{
		BindAddress:        DefaultServerBindAddress,
		BindPort:           DefaultServerBindPort,
		SocketPath:         DefaultServerSocketPath,
		LogLevel:           DefaultLogLevel,
		LogFormat:          DefaultLogFormat,
		CATTL:              DefaultCATTL,
		DefaultX509SVIDTTL: DefaultX509SVIDTTL,
		DefaultJWTSVIDTTL:  DefaultJWTSVIDTTL,
		AgentTTL:           DefaultX509SVIDTTL,
		CAKeyType:          keys.ECP256,
		JWTKeyType:         keys.ECP256,
		CASubject:          defaultCASubject(),
		RateLimit:          RateLimit{Attestation: true, Signing: true},
		HealthChecks:       defaultHealthChecks(),
	}
}

func defaultCASubject() pkix.Name {
	return pkix.Name{Country: []string{defaultCASubjectCountry}, Organization: []string{defaultCASubjectOrg}}
}

// SPIRE server options Sigil does not implement: named as unsupported rather
// than unknown.
var (
	unsupportedTopLevel = map[string]bool{}
	unsupportedServer   = map[string]bool{
		"admin_ids": true, "experimental": true,
		"log_source_location": true, "prune_attested_nodes_expired_for": true,
		"prune_tofu_nodes": true, "proxy_protocol_trusted_cidrs": true, "disable_jwt_svids": true,
		"use_legacy_downstream_x509_ca_ttl": true, "default_svid_ttl": true,
	}
)

// ParseServer parses a server configuration file's content (name is used in
// messages), applies defaults and validates it.
func ParseServer(name string, src []byte) (*Server, error) {
	return parseValidated(name, src, parseServer)
}

// serverFlags are SPIRE's `spire-server run` flags that Sigil supports.
type serverFlags struct {
	config, bindAddress, socketPath, trustDomain, dataDir string
	logLevel, logFormat, logFile                          string
	serverPort                                            int
	expandEnv                                             bool
}

func newServerFlagSet(f *serverFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&f.config, "config", DefaultServerConfigPath, "Path to a SPIRE-style server config file")
	fs.StringVar(&f.bindAddress, "bindAddress", "", "IP address or DNS name of the server")
	fs.IntVar(&f.serverPort, "serverPort", 0, "Port number of the server")
	fs.StringVar(&f.socketPath, "socketPath", "", "Path to bind the server API socket to")
	fs.StringVar(&f.trustDomain, "trustDomain", "", "The trust domain that this server belongs to")
	fs.StringVar(&f.dataDir, "dataDir", "", "Directory to store runtime data to")
	fs.StringVar(&f.logLevel, "logLevel", "", "'debug', 'info', 'warn', or 'error'")
	fs.StringVar(&f.logFormat, "logFormat", "", "'text' or 'json'")
	fs.StringVar(&f.logFile, "logFile", "", "File to write logs to")
	fs.BoolVar(&f.expandEnv, "expandEnv", false, "Expand environment variables in the config file")
	return fs
}

// LoadServer handles `sigil-server run` arguments: it parses the flags,
// reads -config, lets set flags override the file, applies defaults and
// validates. -h yields an error wrapping flag.ErrHelp carrying the usage.
func LoadServer(args []string) (*Server, error) {
	var f serverFlags
	return load(newServerFlagSet(&f), args, &f.config, &f.expandEnv, parseServer, func(set map[string]bool, s *Server) error {
		overrideFlag(set, "bindAddress", f.bindAddress, &s.BindAddress)
		overrideFlag(set, "serverPort", f.serverPort, &s.BindPort)
		overrideFlag(set, "socketPath", f.socketPath, &s.SocketPath)
		overrideFlag(set, "dataDir", f.dataDir, &s.DataDir)
		overrideFlag(set, "logLevel", f.logLevel, &s.LogLevel)
		overrideFlag(set, "logFormat", f.logFormat, &s.LogFormat)
		overrideFlag(set, "logFile", f.logFile, &s.LogFile)
		return overrideTrustDomain(set, f.trustDomain, &s.TrustDomain)
	})
}

// parseServer decodes the file over DefaultServer without validating.
func parseServer(name string, src []byte) (*Server, error) {
	s := DefaultServer()
	s.Path = name
	err := decodeFile(name, src, "server", unsupportedServer, &s.HealthChecks, &s.Telemetry,
		func(d *decoder, b *block) { d.serverSection(b, s) },
		&s.Plugins)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (d *decoder) serverSection(b *block, s *Server) {
	b.str("bind_address", &s.BindAddress)
	b.port("bind_port", &s.BindPort)
	b.str("socket_path", &s.SocketPath)
	d.trustDomain(b, &s.TrustDomain)
	b.str("data_dir", &s.DataDir)
	b.str("log_level", &s.LogLevel)
	b.str("log_format", &s.LogFormat)
	b.str("log_file", &s.LogFile)
	b.duration("ca_ttl", &s.CATTL)
	b.duration("default_x509_svid_ttl", &s.DefaultX509SVIDTTL)
	b.duration("default_jwt_svid_ttl", &s.DefaultJWTSVIDTTL)
	if !b.duration("agent_ttl", &s.AgentTTL) {
		s.AgentTTL = s.DefaultX509SVIDTTL
	}
	s.CAKeyType = d.keyType(b, "ca_key_type", s.CAKeyType)
	s.JWTKeyType = d.keyType(b, "jwt_key_type", s.CAKeyType)
	b.str("jwt_issuer", &s.JWTIssuer)
	b.boolean("audit_log_enabled", &s.AuditLogEnabled)
	d.profiling(b, &s.Profiling)

	if cs := b.sub("ca_subject", "ca_subject block"); cs != nil {
		var subj pkix.Name
		cs.strings("country", &subj.Country)
		cs.strings("organization", &subj.Organization)
		cs.str("common_name", &subj.CommonName)
		cs.done()
		// SPIRE keeps its default when ca_subject is present but empty.
		if !reflect.DeepEqual(subj, pkix.Name{}) {
			s.CASubject = subj
		}
	}
	if rl := b.sub("ratelimit", "ratelimit block"); rl != nil {
		rl.boolean("attestation", &s.RateLimit.Attestation)
		rl.boolean("signing", &s.RateLimit.Signing)
		rl.done()
	}
	d.federation(b, &s.Federation)
}

// keyType reads a SPIRE key type (case-insensitive, as SPIRE).
func (d *decoder) keyType(b *block, key string, def keys.Type) keys.Type {
	var raw string
	if !b.str(key, &raw) {
		return def
	}
	t, err := keys.ParseType(strings.ToLower(raw))
	if err != nil || raw == "" {
		d.errorf(b.kids[key].pos, "invalid value for %q in %s: key type %q is unknown; must be one of rsa-2048, rsa-4096, ec-p256, ec-p384", key, b.desc, raw)
		return def
	}
	return t
}

// Validate checks the whole configuration, naming each offending setting.
func (s *Server) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if s.TrustDomain.IsZero() {
		add(errors.New("trust_domain must be configured"))
	}
	if s.BindAddress == "" {
		add(errors.New("bind_address must be configured"))
	}
	add(validatePort("bind_port", s.BindPort, true))
	if s.SocketPath == "" {
		add(errors.New("socket_path must be configured"))
	}
	if s.DataDir == "" {
		add(errors.New("data_dir must be configured"))
	}
	add(validateLogging(s.LogLevel, s.LogFormat))
	for _, ttl := range []struct {
		name string
		v    time.Duration
	}{
		{"ca_ttl", s.CATTL},
		{"default_x509_svid_ttl", s.DefaultX509SVIDTTL},
		{"default_jwt_svid_ttl", s.DefaultJWTSVIDTTL},
		{"agent_ttl", s.AgentTTL},
	} {
		if ttl.v <= 0 {
			add(fmt.Errorf("%s must be positive, got %s", ttl.name, ttl.v))
		}
	}
	add(validateKeyType("ca_key_type", s.CAKeyType))
	add(validateKeyType("jwt_key_type", s.JWTKeyType))
	if reflect.DeepEqual(s.CASubject, pkix.Name{}) {
		add(errors.New("ca_subject must not be empty"))
	}
	add(s.HealthChecks.validate())
	add(s.Federation.validate(s.TrustDomain))
	add(s.Telemetry.validate())
	add(s.Profiling.validate())
	return errors.Join(errs...)
}

func validateKeyType(name string, t keys.Type) error {
	if t == "" {
		return fmt.Errorf("%s must be set", name)
	}
	if _, err := keys.ParseType(string(t)); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
