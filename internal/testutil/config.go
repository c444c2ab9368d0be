package testutil

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ServerConfig is the part of a sigil-server configuration tests vary.
// Zero fields get the defaults noted.
type ServerConfig struct {
	TrustDomain string // "example.org"
	DataDir     string // required; absolute
	BindAddress string // "127.0.0.1"
	BindPort    int    // a free port on 127.0.0.1
	SocketPath  string // DataDir/api.sock
	X509SVIDTTL time.Duration
	CATTL       time.Duration
	AgentTTL    time.Duration // agent_ttl
	JWTIssuer   string        // jwt_issuer: the iss claim of JWT-SVIDs
	LogLevel    string        // "DEBUG"
	// MetricsPort, when set, enables the telemetry Prometheus exporter on
	// 127.0.0.1:MetricsPort (MetricsURL).
	MetricsPort int
	// AuditLog sets audit_log_enabled = true.
	AuditLog bool
	// NoAttestationRateLimit renders ratelimit { attestation = false }:
	// spire-server's default limit (per source address) would hold a
	// fleet simulated from one address to a few attestations a second.
	NoAttestationRateLimit bool
	// ProfilingPort and ProfilingFreq (seconds), when either is set,
	// render profiling_enabled = true with them and ProfilingNames. The
	// dumps go to .profiles in the process's working directory
	// (Server.WorkDir).
	ProfilingPort  int
	ProfilingFreq  int
	ProfilingNames []string
	// DataStore replaces the default DataStore "sql" on SQLite in DataDir,
	// e.g. pgtest.DataStore (PostgreSQL); nil keeps SQLite.
	DataStore *Plugin
	// Plugins are added to the plugins section after the defaults
	// (DataStore "sql", KeyManager "disk", NodeAttestor "join_token"),
	// e.g. a NodeAttestor "x509pop".
	Plugins []Plugin
	// BundleEndpoint and FederatesWith render server.federation.
	BundleEndpoint *BundleEndpoint
	FederatesWith  []FederatesWith
}

// Plugin is a plugin block of a configuration a test renders:
// Type "Name" { plugin_data { ... } }. Data values are strings, []string,
// ints, []int, bools or map[string]any (a nested object, such as
// k8s_psat's clusters = { "name" = { ... } }), written as HCL in key
// order.
type Plugin struct {
	Type string
	Name string
	Data map[string]any
}

// HCL renders the block, indented by four spaces.
func (p Plugin) HCL() string {
	var b strings.Builder
	fmt.Fprintf(&b, "    %s %q {\n        plugin_data {\n", p.Type, p.Name)
	writeHCL(&b, p.Data, "            ")
	fmt.Fprintf(&b, "        }\n    }\n")
	return b.String()
}

// writeHCL writes data's keys in order, one per line, at indent.
func writeHCL(b *strings.Builder, data map[string]any, indent string) {
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		key := k
		if !hclIdent(k) {
			key = strconv.Quote(k)
		}
		switch v := data[k].(type) {
		case string:
			fmt.Fprintf(b, "%s%s = %q\n", indent, key, v)
		case []string:
			q := make([]string, len(v))
			for i, s := range v {
				q[i] = strconv.Quote(s)
			}
			fmt.Fprintf(b, "%s%s = [%s]\n", indent, key, strings.Join(q, ", "))
		case int, bool:
			fmt.Fprintf(b, "%s%s = %v\n", indent, key, v)
		case []int:
			q := make([]string, len(v))
			for i, n := range v {
				q[i] = strconv.Itoa(n)
			}
			fmt.Fprintf(b, "%s%s = [%s]\n", indent, key, strings.Join(q, ", "))
		case map[string]any:
			fmt.Fprintf(b, "%s%s = {\n", indent, key)
			writeHCL(b, v, indent+"    ")
			fmt.Fprintf(b, "%s}\n", indent)
		default:
			panic(fmt.Sprintf("testutil: plugin_data %q has a value of type %T", k, v))
		}
	}
}

// hclIdent reports whether s can be written unquoted as an HCL key.
func hclIdent(s string) bool {
	for i, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
}

func (c *ServerConfig) defaults() error {
	if c.TrustDomain == "" {
		c.TrustDomain = "example.org"
	}
	if c.DataDir == "" {
		return fmt.Errorf("testutil: ServerConfig.DataDir is required")
	}
	if c.BindAddress == "" {
		c.BindAddress = "127.0.0.1"
	}
	if c.BindPort == 0 {
		p, err := FreePort()
		if err != nil {
			return err
		}
		c.BindPort = p
	}
	if c.SocketPath == "" {
		c.SocketPath = filepath.Join(c.DataDir, "api.sock")
	}
	if c.LogLevel == "" {
		c.LogLevel = "DEBUG"
	}
	return nil
}

// HCL renders c as a server.conf.
func (c ServerConfig) HCL() string {
	var b strings.Builder
	fmt.Fprintf(&b, "server {\n")
	fmt.Fprintf(&b, "    bind_address = %q\n    bind_port = \"%d\"\n", c.BindAddress, c.BindPort)
	fmt.Fprintf(&b, "    socket_path = %q\n    trust_domain = %q\n    data_dir = %q\n", c.SocketPath, c.TrustDomain, c.DataDir)
	fmt.Fprintf(&b, "    log_level = %q\n    log_format = \"text\"\n", c.LogLevel)
	if c.CATTL > 0 {
		fmt.Fprintf(&b, "    ca_ttl = %q\n", c.CATTL.String())
	}
	if c.X509SVIDTTL > 0 {
		fmt.Fprintf(&b, "    default_x509_svid_ttl = %q\n", c.X509SVIDTTL.String())
	}
	if c.AgentTTL > 0 {
		fmt.Fprintf(&b, "    agent_ttl = %q\n", c.AgentTTL.String())
	}
	if c.NoAttestationRateLimit {
		fmt.Fprintf(&b, "    ratelimit {\n        attestation = false\n    }\n")
	}
	if c.AuditLog {
		fmt.Fprintf(&b, "    audit_log_enabled = true\n")
	}
	if c.JWTIssuer != "" {
		fmt.Fprintf(&b, "    jwt_issuer = %q\n", c.JWTIssuer)
	}
	if c.ProfilingPort > 0 || c.ProfilingFreq > 0 {
		fmt.Fprintf(&b, "    profiling_enabled = true\n")
		if c.ProfilingPort > 0 {
			fmt.Fprintf(&b, "    profiling_port = %d\n", c.ProfilingPort)
		}
		if c.ProfilingFreq > 0 {
			fmt.Fprintf(&b, "    profiling_freq = %d\n", c.ProfilingFreq)
		}
		if len(c.ProfilingNames) > 0 {
			q := make([]string, len(c.ProfilingNames))
			for i, n := range c.ProfilingNames {
				q[i] = strconv.Quote(n)
			}
			fmt.Fprintf(&b, "    profiling_names = [%s]\n", strings.Join(q, ", "))
		}
	}
	b.WriteString(c.federationHCL())
	fmt.Fprintf(&b, "}\n\nplugins {\n")
	if c.DataStore != nil {
		b.WriteString(c.DataStore.HCL())
	} else {
		fmt.Fprintf(&b, "    DataStore \"sql\" {\n        plugin_data {\n            database_type = \"sqlite3\"\n            connection_string = %q\n        }\n    }\n",
			filepath.Join(c.DataDir, "datastore.sqlite3"))
	}
	fmt.Fprintf(&b, "    KeyManager \"disk\" {\n        plugin_data {\n            keys_path = %q\n        }\n    }\n", filepath.Join(c.DataDir, "keys"))
	fmt.Fprintf(&b, "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n")
	for _, p := range c.Plugins {
		b.WriteString(p.HCL())
	}
	fmt.Fprintf(&b, "}\n\nhealth_checks {\n    listener_enabled = false\n}\n")
	b.WriteString(telemetryHCL(c.MetricsPort))
	return b.String()
}

// telemetryHCL is the telemetry block of a Prometheus exporter on
// 127.0.0.1:port, "" for port 0.
func telemetryHCL(port int) string {
	if port == 0 {
		return ""
	}
	return fmt.Sprintf("\ntelemetry {\n    Prometheus {\n        host = \"127.0.0.1\"\n        port = %d\n    }\n}\n", port)
}

// AgentConfig is the part of a sigil-agent configuration tests vary.
type AgentConfig struct {
	TrustDomain   string // "example.org"
	ServerAddress string // "127.0.0.1"
	ServerPort    int    // required unless ServerAddresses is set
	// ServerAddresses, when set, is written as server_addresses (host:port
	// each: several servers) instead of server_address.
	ServerAddresses []string
	DataDir         string // required; absolute
	SocketPath      string // DataDir/api.sock
	TrustBundlePath string // required (PEM)
	// JoinToken is written to the file only when set; an agent with a
	// persisted SVID needs none.
	JoinToken string
	// NodeAttestor replaces the agent's NodeAttestor "join_token" (e.g. a
	// NodeAttestor "x509pop"); nil keeps join_token.
	NodeAttestor *Plugin
	// KeyManager replaces the agent's KeyManager "disk" in DataDir/keys
	// (e.g. a KeyManager "tpm"); nil keeps disk.
	KeyManager *Plugin
	// DiscoverWorkloadPath adds unix:path selectors (and unix:sha256).
	DiscoverWorkloadPath bool
	// WorkloadAttestors are added after WorkloadAttestor "unix" (e.g. a
	// WorkloadAttestor "docker").
	WorkloadAttestors []Plugin
	LogLevel          string // "DEBUG"
	// HealthPort, when set, enables the health_checks listener on
	// 127.0.0.1:HealthPort (/live, /ready, /metrics).
	HealthPort int
	// FilesystemDelivery adds filesystem_delivery blocks.
	FilesystemDelivery []FilesystemDelivery
	// MetricsPort, when set, enables the telemetry Prometheus exporter on
	// 127.0.0.1:MetricsPort (MetricsURL).
	MetricsPort int
}

// FilesystemDelivery is one filesystem_delivery block of an AgentConfig.
type FilesystemDelivery struct {
	Name      string
	SPIFFEID  string
	Directory string
}

func (c *AgentConfig) defaults() error {
	if c.TrustDomain == "" {
		c.TrustDomain = "example.org"
	}
	if c.ServerAddress == "" && len(c.ServerAddresses) == 0 {
		c.ServerAddress = "127.0.0.1"
	}
	if c.DataDir == "" || (c.ServerPort == 0 && len(c.ServerAddresses) == 0) || c.TrustBundlePath == "" {
		return fmt.Errorf("testutil: AgentConfig needs DataDir, ServerPort (or ServerAddresses) and TrustBundlePath")
	}
	if c.SocketPath == "" {
		c.SocketPath = filepath.Join(c.DataDir, "api.sock")
	}
	if c.LogLevel == "" {
		c.LogLevel = "DEBUG"
	}
	return nil
}

// HCL renders c as an agent.conf.
func (c AgentConfig) HCL() string {
	var b strings.Builder
	fmt.Fprintf(&b, "agent {\n")
	if len(c.ServerAddresses) > 0 {
		q := make([]string, len(c.ServerAddresses))
		for i, a := range c.ServerAddresses {
			q[i] = strconv.Quote(a)
		}
		fmt.Fprintf(&b, "    server_addresses = [%s]\n", strings.Join(q, ", "))
		if c.ServerPort != 0 {
			fmt.Fprintf(&b, "    server_port = \"%d\"\n", c.ServerPort)
		}
	} else {
		fmt.Fprintf(&b, "    server_address = %q\n    server_port = \"%d\"\n", c.ServerAddress, c.ServerPort)
	}
	fmt.Fprintf(&b, "    socket_path = %q\n    trust_domain = %q\n    data_dir = %q\n", c.SocketPath, c.TrustDomain, c.DataDir)
	fmt.Fprintf(&b, "    trust_bundle_path = %q\n    trust_bundle_format = \"pem\"\n", c.TrustBundlePath)
	if c.JoinToken != "" {
		fmt.Fprintf(&b, "    join_token = %q\n", c.JoinToken)
	}
	for _, fd := range c.FilesystemDelivery {
		fmt.Fprintf(&b, "    filesystem_delivery %q {\n        spiffe_id = %q\n        directory = %q\n    }\n", fd.Name, fd.SPIFFEID, fd.Directory)
	}
	fmt.Fprintf(&b, "    log_level = %q\n    log_format = \"text\"\n}\n\n", c.LogLevel)
	fmt.Fprintf(&b, "plugins {\n")
	if c.NodeAttestor != nil {
		b.WriteString(c.NodeAttestor.HCL())
	} else {
		fmt.Fprintf(&b, "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n")
	}
	if c.KeyManager != nil {
		b.WriteString(c.KeyManager.HCL())
	} else {
		fmt.Fprintf(&b, "    KeyManager \"disk\" {\n        plugin_data {\n            directory = %q\n        }\n    }\n", filepath.Join(c.DataDir, "keys"))
	}
	fmt.Fprintf(&b, "    WorkloadAttestor \"unix\" {\n        plugin_data {\n            discover_workload_path = %t\n        }\n    }\n", c.DiscoverWorkloadPath)
	for _, p := range c.WorkloadAttestors {
		b.WriteString(p.HCL())
	}
	b.WriteString("}\n")
	if c.HealthPort != 0 {
		fmt.Fprintf(&b, "\nhealth_checks {\n    listener_enabled = true\n    bind_address = \"127.0.0.1\"\n    bind_port = \"%d\"\n}\n", c.HealthPort)
	} else {
		fmt.Fprintf(&b, "\nhealth_checks {\n    listener_enabled = false\n}\n")
	}
	b.WriteString(telemetryHCL(c.MetricsPort))
	return b.String()
}

// FreePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("testutil: pick a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// ShortTempDir is a temporary directory with a short path (unix socket
// paths are limited to 107 bytes), removed on cleanup.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "sg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
