package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/idna"
)

// sigil-oidc's defaults, SPIRE oidc-discovery-provider's.
const (
	DefaultOIDCConfigPath       = "oidc-discovery-provider.conf"
	DefaultOIDCPollInterval     = 10 * time.Second
	DefaultOIDCFileSyncInterval = time.Minute
	DefaultOIDCServingAddr      = ":443"
	DefaultOIDCHealthPort       = 8008
)

// OIDC is sigil-oidc's configuration: SPIRE oidc-discovery-provider's
// keys, at the top level of the file (no enclosing block).
type OIDC struct {
	// Domains are the host names the provider answers discovery requests
	// for (Host or X-Forwarded-Host), already punycode; at least one.
	Domains []string
	// Exactly one way to serve: ListenSocketPath (plain HTTP on a unix
	// socket, behind a proxy), InsecureAddr (plain HTTP on TCP) or
	// ServingCertFile (HTTPS).
	ListenSocketPath string
	InsecureAddr     string
	ServingCertFile  *OIDCServingCertFile
	// AllowInsecureScheme renders http:// URLs in the discovery document
	// for requests that came over plain HTTP (ListenSocketPath,
	// InsecureAddr) without X-Forwarded-Proto https.
	AllowInsecureScheme bool
	// SetKeyUse sets "use": "sig" on every key of /keys.
	SetKeyUse bool
	// JWTIssuer, when set, is the discovery document's issuer (else
	// scheme://host of the request, plus ServerPathPrefix). It must equal
	// the iss claim of the JWT-SVIDs (the server's jwt_issuer).
	JWTIssuer string
	// JWKSURI, when set, is the discovery document's jwks_uri.
	JWKSURI string
	// ServerPathPrefix prefixes both paths ("" or "/": none).
	ServerPathPrefix string
	// Exactly one key source: WorkloadAPI, ServerAPI or File.
	WorkloadAPI *OIDCWorkloadAPI
	ServerAPI   *OIDCServerAPI
	File        *OIDCFile
	// HealthChecks is the health_checks block; nil when absent.
	HealthChecks *OIDCHealthChecks

	LogLevel    string // default INFO
	LogFormat   string // text or json
	LogPath     string // "" is stderr
	LogRequests bool   // log every request at DEBUG
}

// OIDCServingCertFile is serving_cert_file: HTTPS with a certificate and
// key read from files and read again every FileSyncInterval.
type OIDCServingCertFile struct {
	CertFilePath     string
	KeyFilePath      string
	FileSyncInterval time.Duration // default DefaultOIDCFileSyncInterval
	Addr             string        // host:port, default DefaultOIDCServingAddr
}

// OIDCWorkloadAPI is workload_api: the JWT bundle of TrustDomain from the
// agent's Workload API (FetchJWTBundles, watched).
type OIDCWorkloadAPI struct {
	SocketPath  string
	TrustDomain spiffeid.TrustDomain
	// PollInterval (default DefaultOIDCPollInterval): the keys follow the
	// Workload API's stream at once; this sets how long the provider stays
	// healthy without contact (5 times it, at least 3 minutes).
	PollInterval time.Duration
}

// OIDCServerAPI is server_api: the server's bundle from its admin API
// (bundle/v1 GetBundle) on a unix socket, polled.
type OIDCServerAPI struct {
	// Address is a gRPC target in the unix name system:
	// unix:///path/to/api.sock (or unix:/path).
	Address      string
	PollInterval time.Duration // default DefaultOIDCPollInterval
}

// OIDCFile is file: a SPIFFE bundle file, polled.
type OIDCFile struct {
	Path         string
	PollInterval time.Duration // default DefaultOIDCPollInterval
}

// OIDCHealthChecks is health_checks: /ready and /live on their own
// listener.
type OIDCHealthChecks struct {
	BindPort  int    // default DefaultOIDCHealthPort
	ReadyPath string // default "/ready"
	LivePath  string // default "/live"
}

// SPIRE oidc-discovery-provider options Sigil does not implement.
var unsupportedOIDC = map[string]bool{"acme": true, "experimental": true}

// ParseOIDC parses a sigil-oidc configuration file's content (name is used
// in messages), applies defaults and validates it.
func ParseOIDC(name string, src []byte) (*OIDC, error) {
	return parseValidated(name, src, parseOIDC)
}

// LoadOIDC handles sigil-oidc's arguments (-config, -expandEnv, as SPIRE's
// provider) and returns the validated configuration.
func LoadOIDC(args []string) (*OIDC, error) {
	fs := flag.NewFlagSet("sigil-oidc", flag.ContinueOnError)
	path := fs.String("config", DefaultOIDCConfigPath, "configuration file")
	expandEnv := fs.Bool("expandEnv", false, "expand environment variables in config file")
	return load(fs, args, path, expandEnv, parseOIDC, func(map[string]bool, *OIDC) error { return nil })
}

func parseOIDC(name string, src []byte) (*OIDC, error) {
	es, err := parseFile(name, src)
	if err != nil {
		return nil, err
	}
	d := &decoder{file: name}
	root := d.newBlock("top level", es)
	root.unsupported = unsupportedOIDC
	c := &OIDC{LogLevel: "INFO"}
	if root.strings("domains", &c.Domains) {
		for _, dom := range c.Domains {
			if err := checkOIDCDomain(dom); err != nil {
				d.errorf(root.kids["domains"].pos, "invalid domains: %v", err)
			}
		}
		c.Domains = dedupe(c.Domains)
	}
	root.str("listen_socket_path", &c.ListenSocketPath)
	root.str("insecure_addr", &c.InsecureAddr)
	root.boolean("allow_insecure_scheme", &c.AllowInsecureScheme)
	root.boolean("set_key_use", &c.SetKeyUse)
	if root.str("jwt_issuer", &c.JWTIssuer) {
		if err := checkAbsoluteURL(c.JWTIssuer); err != nil {
			d.errorf(root.kids["jwt_issuer"].pos, "invalid jwt_issuer: %v", err)
		}
	}
	if root.str("jwks_uri", &c.JWKSURI) {
		if err := checkAbsoluteURL(c.JWKSURI); err != nil {
			d.errorf(root.kids["jwks_uri"].pos, "invalid jwks_uri: %v", err)
		}
	}
	root.str("server_path_prefix", &c.ServerPathPrefix)
	root.str("log_level", &c.LogLevel)
	root.str("log_format", &c.LogFormat)
	root.str("log_path", &c.LogPath)
	root.boolean("log_requests", &c.LogRequests)

	if b := root.sub("serving_cert_file", "serving_cert_file block"); b != nil {
		s := &OIDCServingCertFile{FileSyncInterval: DefaultOIDCFileSyncInterval, Addr: DefaultOIDCServingAddr}
		b.str("cert_file_path", &s.CertFilePath)
		b.str("key_file_path", &s.KeyFilePath)
		d.positiveDuration(b, "file_sync_interval", &s.FileSyncInterval)
		if b.str("addr", &s.Addr) {
			if _, err := net.ResolveTCPAddr("tcp", s.Addr); err != nil {
				d.errorf(b.kids["addr"].pos, "invalid addr in serving_cert_file block: %v", err)
			}
		}
		b.done()
		c.ServingCertFile = s
	}
	if b := root.sub("workload_api", "workload_api block"); b != nil {
		w := &OIDCWorkloadAPI{PollInterval: DefaultOIDCPollInterval}
		b.unsupported = map[string]bool{"experimental": true}
		b.str("socket_path", &w.SocketPath)
		d.trustDomain(b, &w.TrustDomain)
		d.positiveDuration(b, "poll_interval", &w.PollInterval)
		b.done()
		c.WorkloadAPI = w
	}
	if b := root.sub("server_api", "server_api block"); b != nil {
		s := &OIDCServerAPI{PollInterval: DefaultOIDCPollInterval}
		b.unsupported = map[string]bool{"experimental": true}
		b.str("address", &s.Address)
		d.positiveDuration(b, "poll_interval", &s.PollInterval)
		b.done()
		c.ServerAPI = s
	}
	if b := root.sub("file", "file block"); b != nil {
		f := &OIDCFile{PollInterval: DefaultOIDCPollInterval}
		b.str("path", &f.Path)
		d.positiveDuration(b, "poll_interval", &f.PollInterval)
		b.done()
		c.File = f
	}
	if b := root.sub("health_checks", "health_checks block"); b != nil {
		h := &OIDCHealthChecks{BindPort: DefaultOIDCHealthPort, ReadyPath: "/ready", LivePath: "/live"}
		b.port("bind_port", &h.BindPort)
		b.str("ready_path", &h.ReadyPath)
		b.str("live_path", &h.LivePath)
		b.done()
		c.HealthChecks = h
	}
	root.done()
	if err := d.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// positiveDuration reads a duration that must be positive.
func (d *decoder) positiveDuration(b *block, key string, dst *time.Duration) {
	if b.duration(key, dst) && *dst <= 0 {
		d.errorf(b.kids[key].pos, "invalid value for %q in %s: must be positive", key, b.desc)
	}
}

// checkOIDCDomain accepts a domain name as SPIRE's provider does: it must
// be valid for DNS lookup and already in its ASCII (punycode, lower-case)
// form, since that is how requests name it.
func checkOIDCDomain(dom string) error {
	ascii, err := idna.Lookup.ToASCII(dom)
	if err != nil {
		return fmt.Errorf("%q is not a valid domain name: %v", dom, err)
	}
	if ascii != dom {
		return fmt.Errorf("%q must be written in its ASCII (punycode, lower-case) form %q", dom, ascii)
	}
	return nil
}

// checkAbsoluteURL requires a URL with a scheme and a host.
func checkAbsoluteURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return err
	case u.Scheme == "":
		return fmt.Errorf("%q has no scheme", s)
	case u.Host == "":
		return fmt.Errorf("%q has no host", s)
	}
	return nil
}

func dedupe(in []string) []string {
	seen := make(map[string]bool, len(in))
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// Validate checks what decoding cannot: the required keys and SPIRE's
// exclusions between them.
func (c *OIDC) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(c.Domains) == 0 {
		add("at least one domain must be configured (domains)")
	}
	serving := 0
	for _, set := range []bool{c.ListenSocketPath != "", c.InsecureAddr != "", c.ServingCertFile != nil} {
		if set {
			serving++
		}
	}
	switch {
	case serving == 0:
		add("one of serving_cert_file, insecure_addr or listen_socket_path must be configured (acme is not supported)")
	case serving > 1:
		add("serving_cert_file, insecure_addr and listen_socket_path are mutually exclusive")
	}
	if s := c.ServingCertFile; s != nil {
		if s.CertFilePath == "" {
			add("cert_file_path must be configured in the serving_cert_file configuration section")
		}
		if s.KeyFilePath == "" {
			add("key_file_path must be configured in the serving_cert_file configuration section")
		}
	}
	sources := 0
	if w := c.WorkloadAPI; w != nil {
		sources++
		if w.SocketPath == "" {
			add("socket_path must be configured in the workload_api configuration section")
		}
		if w.TrustDomain.IsZero() {
			add("trust_domain must be configured in the workload_api configuration section")
		}
	}
	if s := c.ServerAPI; s != nil {
		sources++
		switch {
		case s.Address == "":
			add("address must be configured in the server_api configuration section")
		case !strings.HasPrefix(s.Address, "unix:"):
			add("address must use the unix name system in the server_api configuration section (unix:///path/to/api.sock)")
		}
	}
	if f := c.File; f != nil {
		sources++
		if f.Path == "" {
			add("path must be configured in the file configuration section")
		}
	}
	switch {
	case sources == 0:
		add("exactly one of the server_api, workload_api, or file sections must be configured")
	case sources > 1:
		add("the server_api, workload_api, and file sections are mutually exclusive")
	}
	if h := c.HealthChecks; h != nil {
		if err := validatePort("health_checks.bind_port", h.BindPort, false); err != nil {
			errs = append(errs, err)
		}
		if !strings.HasPrefix(h.ReadyPath, "/") || !strings.HasPrefix(h.LivePath, "/") || h.ReadyPath == h.LivePath {
			add("health_checks: ready_path %q and live_path %q must be distinct paths starting with /", h.ReadyPath, h.LivePath)
		}
	}
	if c.ServerPathPrefix != "" && !strings.HasPrefix(c.ServerPathPrefix, "/") {
		add("server_path_prefix %q must start with /", c.ServerPathPrefix)
	}
	if err := validateLogging(c.LogLevel, c.LogFormat); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// OpenLogger is OpenLogger with sigil-oidc's log_level, log_format and
// log_path.
func (c *OIDC) OpenLogger(fallback io.Writer) (*slog.Logger, io.Closer, error) {
	return OpenLogger(c.LogLevel, c.LogFormat, c.LogPath, fallback)
}
