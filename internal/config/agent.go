package config

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SPIRE's agent defaults.
const (
	DefaultAgentConfigPath  = "conf/agent/agent.conf"
	DefaultAgentSocketPath  = "/tmp/spire-agent/public/api.sock"
	DefaultAgentDataDir     = "."
	TrustBundleFormatPEM    = "pem"
	TrustBundleFormatSPIFFE = "spiffe"
	// MinAvailabilityTarget is SPIRE's lower bound for availability_target.
	MinAvailabilityTarget = 24 * time.Hour
)

// Agent is sigil-agent's configuration: defaults applied, validated.
type Agent struct {
	// Path is the configuration file it was read from ("" when built in code).
	Path string

	// ServerAddress and ServerPort are SPIRE's server_address and
	// server_port. ServerAddresses is server_addresses (a Sigil
	// extension): several servers, "host" or "host:port" each, the port
	// defaulting to ServerPort; exactly one of ServerAddress and
	// ServerAddresses is set. Servers returns them as host:port.
	ServerAddress   string
	ServerPort      int
	ServerAddresses []string
	SocketPath      string
	TrustDomain     spiffeid.TrustDomain
	DataDir         string // default "."

	// Bootstrap trust: exactly one of TrustBundlePath, TrustBundleURL
	// (https) or InsecureBootstrap.
	TrustBundlePath   string
	TrustBundleURL    string
	TrustBundleFormat string // "pem" (default) or "spiffe"
	InsecureBootstrap bool

	// JoinToken is secret: never log it.
	JoinToken string

	LogLevel  string
	LogFormat string
	LogFile   string

	// AvailabilityTarget is 0 (unset) or at least MinAvailabilityTarget.
	AvailabilityTarget time.Duration

	// AllowedForeignJWTClaims is SPIRE's allowed_foreign_jwt_claims: the
	// claims, beyond sub, aud and exp, the Workload API's ValidateJWTSVID
	// returns for a JWT-SVID of another trust domain.
	AllowedForeignJWTClaims []string

	// JWTSVIDCacheMaxSize is SPIRE's jwt_svid_cache_max_size: how many
	// JWT-SVIDs the agent keeps (and persists); 0 is the default, 1000.
	JWTSVIDCacheMaxSize int

	HealthChecks HealthChecks
	Telemetry    Telemetry

	// SDS is agent.sds: the Envoy SDS API's resource names.
	SDS SDS
	// DisableSDSAPI is disable_sds_api: the agent socket serves no Envoy
	// SDS (the Workload API only).
	DisableSDSAPI bool

	// Plugins are the enabled plugins of the plugins section, in file
	// order, each with its plugin_data for the plugin to parse; the
	// agent's catalog (internal/catalog/agent) knows which exist.
	Plugins []Plugin

	// FilesystemDelivery lists the agent.filesystem_delivery blocks, in
	// file order (a Sigil extension).
	FilesystemDelivery []FilesystemDelivery
}

// FilesystemDelivery is one `filesystem_delivery "<name>" { ... }` block of
// the agent section. It is a Sigil extension (SPIRE has no such option): the
// agent writes the SVID, key and bundles of one of its identities to a
// directory and keeps them rotated, for applications that cannot use the
// Workload API (see internal/agent/fsdelivery for the layout).
type FilesystemDelivery struct {
	Name      string      // the block's label
	SPIFFEID  spiffeid.ID // spiffe_id: in the agent's trust domain
	Directory string      // directory: absolute
	// FileMode is file_mode, an octal string such as "0640", for the
	// certificate and bundle files: 0 when unset (the default, 0600); at
	// most 0644 and owner-readable. The key file is always 0600.
	FileMode os.FileMode
	// UID and GID are uid and gid (numeric): the owner given to everything
	// written; -1 when unset (left as the agent's).
	UID, GID int
}

// DefaultAgent returns an Agent holding SPIRE's defaults; the server
// address and port, trust domain, bootstrap trust and plugins are left for
// the caller.
func DefaultAgent() *Agent {
	return &Agent{
		SocketPath:        DefaultAgentSocketPath,
		DataDir:           DefaultAgentDataDir,
		TrustBundleFormat: TrustBundleFormatPEM,
		LogLevel:          DefaultLogLevel,
		LogFormat:         DefaultLogFormat,
		HealthChecks:      defaultHealthChecks(),
		SDS:               defaultSDS(),
	}
}

var (
	unsupportedAgent = map[string]bool{
		"admin_socket_path": true, "retry_bootstrap": true, "allow_unauthenticated_verifiers": true,
		"authorized_delegates":        true,
		"workload_x509_svid_key_type": true, "x509_svid_cache_max_size": true,
		"experimental": true, "trust_bundle_unix_socket": true,
		"log_source_location": true,
	}
)

// ParseAgent parses an agent configuration file's content (name is used in
// messages), applies defaults and validates it.
func ParseAgent(name string, src []byte) (*Agent, error) {
	return parseValidated(name, src, parseAgent)
}

type agentFlags struct {
	config, dataDir, joinToken, logFile, logFormat, logLevel string
	serverAddress, socketPath, trustDomain                   string
	trustBundle, trustBundleURL, trustBundleFormat           string
	serverPort                                               int
	insecureBootstrap, expandEnv                             bool
}

func newAgentFlagSet(f *agentFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&f.config, "config", DefaultAgentConfigPath, "Path to a SPIRE-style agent config file")
	fs.StringVar(&f.dataDir, "dataDir", "", "A directory the agent can use for its runtime data")
	fs.StringVar(&f.joinToken, "joinToken", "", "An optional token which has been generated by the server")
	fs.StringVar(&f.logFile, "logFile", "", "File to write logs to")
	fs.StringVar(&f.logFormat, "logFormat", "", "'text' or 'json'")
	fs.StringVar(&f.logLevel, "logLevel", "", "'debug', 'info', 'warn', or 'error'")
	fs.StringVar(&f.serverAddress, "serverAddress", "", "IP address or DNS name of the server")
	fs.IntVar(&f.serverPort, "serverPort", 0, "Port number of the server")
	fs.StringVar(&f.socketPath, "socketPath", "", "Path to bind the Workload API socket to")
	fs.StringVar(&f.trustDomain, "trustDomain", "", "The trust domain that this agent belongs to")
	fs.StringVar(&f.trustBundle, "trustBundle", "", "Path to the server CA bundle")
	fs.StringVar(&f.trustBundleURL, "trustBundleUrl", "", "URL to download the server CA bundle")
	fs.StringVar(&f.trustBundleFormat, "trustBundleFormat", "", "Format of the bootstrap trust bundle, \"pem\" or \"spiffe\"")
	fs.BoolVar(&f.insecureBootstrap, "insecureBootstrap", false, "If true, the agent bootstraps without verifying the server's identity")
	fs.BoolVar(&f.expandEnv, "expandEnv", false, "Expand environment variables in the config file")
	return fs
}

// LoadAgent handles `sigil-agent run` arguments: it parses the flags, reads
// -config, lets set flags override the file, applies defaults and validates.
// -h yields an error wrapping flag.ErrHelp carrying the usage.
func LoadAgent(args []string) (*Agent, error) {
	var f agentFlags
	return load(newAgentFlagSet(&f), args, &f.config, &f.expandEnv, parseAgent, func(set map[string]bool, a *Agent) error {
		overrideFlag(set, "dataDir", f.dataDir, &a.DataDir)
		overrideFlag(set, "joinToken", f.joinToken, &a.JoinToken)
		overrideFlag(set, "logFile", f.logFile, &a.LogFile)
		overrideFlag(set, "logFormat", f.logFormat, &a.LogFormat)
		overrideFlag(set, "logLevel", f.logLevel, &a.LogLevel)
		overrideFlag(set, "serverAddress", f.serverAddress, &a.ServerAddress)
		if set["serverAddress"] {
			a.ServerAddresses = nil // the flag names the one server
		}
		overrideFlag(set, "socketPath", f.socketPath, &a.SocketPath)
		overrideFlag(set, "trustBundle", f.trustBundle, &a.TrustBundlePath)
		overrideFlag(set, "trustBundleUrl", f.trustBundleURL, &a.TrustBundleURL)
		overrideFlag(set, "trustBundleFormat", f.trustBundleFormat, &a.TrustBundleFormat)
		overrideFlag(set, "serverPort", f.serverPort, &a.ServerPort)
		overrideFlag(set, "insecureBootstrap", f.insecureBootstrap, &a.InsecureBootstrap)
		return overrideTrustDomain(set, f.trustDomain, &a.TrustDomain)
	})
}

func parseAgent(name string, src []byte) (*Agent, error) {
	a := DefaultAgent()
	a.Path = name
	err := decodeFile(name, src, "agent", unsupportedAgent, &a.HealthChecks, &a.Telemetry,
		func(d *decoder, b *block) { d.agentSection(b, a) }, &a.Plugins)
	if err != nil {
		return nil, err
	}
	return a, nil
}

func (d *decoder) agentSection(b *block, a *Agent) {
	b.str("server_address", &a.ServerAddress)
	b.port("server_port", &a.ServerPort)
	d.serverAddresses(b, a)
	b.str("socket_path", &a.SocketPath)
	b.str("trust_bundle_path", &a.TrustBundlePath)
	b.str("trust_bundle_url", &a.TrustBundleURL)
	b.str("trust_bundle_format", &a.TrustBundleFormat)
	b.boolean("insecure_bootstrap", &a.InsecureBootstrap)
	d.trustDomain(b, &a.TrustDomain)
	b.str("data_dir", &a.DataDir)
	b.str("join_token", &a.JoinToken)
	b.str("log_level", &a.LogLevel)
	b.str("log_format", &a.LogFormat)
	b.str("log_file", &a.LogFile)
	b.duration("availability_target", &a.AvailabilityTarget)
	b.strings("allowed_foreign_jwt_claims", &a.AllowedForeignJWTClaims)
	var jwtMax int64
	if b.integer("jwt_svid_cache_max_size", &jwtMax) {
		a.JWTSVIDCacheMaxSize = int(min(max(jwtMax, -1), 1<<31))
	}
	b.boolean("disable_sds_api", &a.DisableSDSAPI)
	d.sds(b, &a.SDS)
	d.filesystemDelivery(b, a)
	d.agentProfilingRefusal(b)
}

// filesystemDelivery reads the repeatable `filesystem_delivery "<name>"`
// blocks. Errors that have a line (syntax, values, duplicates) are reported
// here; Validate repeats the checks for configurations built in code and
// checks the trust domain, which a flag may still override.
func (d *decoder) filesystemDelivery(b *block, a *Agent) {
	e := b.take("filesystem_delivery")
	if e == nil {
		return
	}
	const shape = `filesystem_delivery "<name>" { spiffe_id = "..." directory = "..." }`
	if !e.obj {
		d.errorf(e.pos, "invalid filesystem_delivery in %s: expected %s, got %s", b.desc, shape, describe(e))
		return
	}
	names := map[string]int{}
	dirs := map[string]int{}
	for _, ne := range e.kids {
		if !ne.obj {
			d.errorf(ne.pos, "invalid filesystem_delivery in %s: expected %s, got key %q", b.desc, shape, ne.name)
			continue
		}
		desc := fmt.Sprintf("filesystem_delivery %q", ne.name)
		if line, dup := names[ne.name]; dup {
			d.errorf(ne.pos, "%s is declared twice (first on line %d)", desc, line)
			continue
		}
		names[ne.name] = ne.pos.Line
		fb := d.newBlock(desc, ne.kids)
		fd := FilesystemDelivery{Name: ne.name, UID: -1, GID: -1}
		var id, mode string
		var uid, gid int64
		if fb.str("spiffe_id", &id) {
			v, err := spiffeid.FromString(id)
			if err != nil {
				d.errorf(fb.kids["spiffe_id"].pos, "invalid spiffe_id %q in %s: %v", id, desc, err)
			}
			fd.SPIFFEID = v
		} else if fb.kids["spiffe_id"] == nil {
			d.errorf(ne.pos, "%s: spiffe_id must be set", desc)
		}
		if fb.str("directory", &fd.Directory) {
			dirPos := fb.kids["directory"].pos
			if !filepath.IsAbs(fd.Directory) {
				d.errorf(dirPos, "invalid directory %q in %s: must be an absolute path", fd.Directory, desc)
			} else {
				clean := filepath.Clean(fd.Directory)
				if line, dup := dirs[clean]; dup {
					d.errorf(dirPos, "%s: directory %q is already used by the filesystem_delivery on line %d", desc, clean, line)
				}
				dirs[clean] = ne.pos.Line
			}
		} else if fb.kids["directory"] == nil {
			d.errorf(ne.pos, "%s: directory must be set", desc)
		}
		if fb.str("file_mode", &mode) {
			m, err := parseFileMode(mode)
			if err != nil {
				d.errorf(fb.kids["file_mode"].pos, "invalid file_mode in %s: %v", desc, err)
			}
			fd.FileMode = m
		}
		for _, k := range []struct {
			key string
			v   *int64
			dst *int
		}{{"uid", &uid, &fd.UID}, {"gid", &gid, &fd.GID}} {
			if !fb.integer(k.key, k.v) {
				continue
			}
			if *k.v < 0 || *k.v > 1<<31-1 {
				d.errorf(fb.kids[k.key].pos, "invalid %s %d in %s: must be a numeric id of 0 or more", k.key, *k.v, desc)
				continue
			}
			*k.dst = int(*k.v)
		}
		fb.done()
		a.FilesystemDelivery = append(a.FilesystemDelivery, fd)
	}
}

// parseFileMode reads an octal permission ("0640", "640") allowed for the
// delivered certificate and bundle files.
func parseFileMode(s string) (os.FileMode, error) {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not an octal mode such as \"0640\"", s)
	}
	m := os.FileMode(v)
	return m, checkFileMode(m)
}

// checkFileMode allows owner read(-write) and group/other read only.
func checkFileMode(m os.FileMode) error {
	if m&^0o644 != 0 {
		return fmt.Errorf("%04o is not allowed: at most 0644 (the files must not be writable or executable by others)", uint32(m))
	}
	if m&0o400 == 0 {
		return fmt.Errorf("%04o must let the owner read", uint32(m))
	}
	return nil
}

// Validate checks the whole configuration, naming each offending setting.
func (a *Agent) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if a.TrustDomain.IsZero() {
		add(errors.New("trust_domain must be configured"))
	}
	add(a.validateServers())
	if a.SocketPath == "" {
		add(errors.New("socket_path must be configured"))
	}
	if a.DataDir == "" {
		add(errors.New("data_dir must be configured"))
	}
	add(validateLogging(a.LogLevel, a.LogFormat))

	switch {
	case a.InsecureBootstrap && (a.TrustBundlePath != "" || a.TrustBundleURL != ""):
		add(errors.New("only one of insecure_bootstrap, trust_bundle_url or trust_bundle_path can be set"))
	case a.TrustBundlePath != "" && a.TrustBundleURL != "":
		add(errors.New("only one of trust_bundle_url or trust_bundle_path can be set, not both"))
	case !a.InsecureBootstrap && a.TrustBundlePath == "" && a.TrustBundleURL == "":
		add(errors.New("trust_bundle_path or trust_bundle_url must be configured unless insecure_bootstrap is set"))
	}
	if a.TrustBundleFormat != TrustBundleFormatPEM && a.TrustBundleFormat != TrustBundleFormatSPIFFE {
		add(fmt.Errorf("invalid trust_bundle_format %q: want %q or %q", a.TrustBundleFormat, TrustBundleFormatPEM, TrustBundleFormatSPIFFE))
	}
	if a.TrustBundleURL != "" {
		u, err := url.Parse(a.TrustBundleURL)
		switch {
		case err != nil:
			add(fmt.Errorf("invalid trust_bundle_url: %w", err))
		case u.Scheme != "https" || u.Host == "":
			add(fmt.Errorf("trust_bundle_url %q must be an https:// URL", a.TrustBundleURL))
		}
	}
	if a.JWTSVIDCacheMaxSize < 0 {
		add(errors.New("jwt_svid_cache_max_size must not be negative"))
	}
	if a.AvailabilityTarget != 0 && a.AvailabilityTarget < MinAvailabilityTarget {
		add(fmt.Errorf("availability_target must be at least %s, got %s", MinAvailabilityTarget, a.AvailabilityTarget))
	}
	add(a.HealthChecks.validate())
	add(a.Telemetry.validate())
	add(a.SDS.validate())

	add(a.validateFilesystemDelivery())
	return errors.Join(errs...)
}

func (a *Agent) validateFilesystemDelivery() error {
	var errs []error
	names := map[string]bool{}
	dirs := map[string]string{}
	for _, fd := range a.FilesystemDelivery {
		desc := fmt.Sprintf("filesystem_delivery %q", fd.Name)
		if names[fd.Name] {
			errs = append(errs, fmt.Errorf("%s is declared twice", desc))
		}
		names[fd.Name] = true
		switch {
		case fd.SPIFFEID.IsZero():
			errs = append(errs, fmt.Errorf("%s: spiffe_id must be set", desc))
		case !a.TrustDomain.IsZero() && !fd.SPIFFEID.MemberOf(a.TrustDomain):
			errs = append(errs, fmt.Errorf("%s: spiffe_id %q is not in the agent's trust domain %q", desc, fd.SPIFFEID, a.TrustDomain.Name()))
		}
		switch {
		case fd.Directory == "":
			errs = append(errs, fmt.Errorf("%s: directory must be set", desc))
		case !filepath.IsAbs(fd.Directory):
			errs = append(errs, fmt.Errorf("%s: directory %q must be an absolute path", desc, fd.Directory))
		default:
			clean := filepath.Clean(fd.Directory)
			if prev, dup := dirs[clean]; dup {
				errs = append(errs, fmt.Errorf("%s: directory %q is already used by filesystem_delivery %q", desc, clean, prev))
			}
			dirs[clean] = fd.Name
		}
		if fd.FileMode != 0 {
			if err := checkFileMode(fd.FileMode); err != nil {
				errs = append(errs, fmt.Errorf("%s: file_mode %w", desc, err))
			}
		}
		if fd.UID < -1 || fd.GID < -1 {
			errs = append(errs, fmt.Errorf("%s: uid and gid must be -1 (unset) or more", desc))
		}
	}
	return errors.Join(errs...)
}
