package interop

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/telemetry/telemetrytest"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// spireStyleServerConf is a server.conf written as SPIRE's documentation
// writes them, with the syntax variants SPIRE accepts (plugin_data as an
// assignment, ca_subject as an object, ports as numbers), using only what
// Sigil implements. %[1]s is the data_dir, %[2]d the port, %[3]d the
// health port, %[4]s the directory of the upstream CA's files, %[5]d the
// Prometheus exporter's port.
const spireStyleServerConf = `
server {
    bind_address = "127.0.0.1"
    bind_port = %[2]d
    socket_path = "%[1]s/api.sock"
    trust_domain = "example.org"
    data_dir = "%[1]s"
    log_level = "DEBUG"
    log_format = "json"
    ca_ttl = "72h"
    default_x509_svid_ttl = "2h"
    default_jwt_svid_ttl = "10m"
    agent_ttl = "3h"
    ca_key_type = "ec-p384"
    jwt_key_type = "rsa-2048"
    jwt_issuer = "https://oidc.example.org"
    audit_log_enabled = true
    ca_subject = {
        country = ["DE"],
        organization = ["Interop"],
        common_name = "",
    }
    ratelimit {
        attestation = true
        signing = true
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "%[1]s/datastore.sqlite3"
        }
    }
    KeyManager "memory" {
        plugin_data = {}
    }
    NodeAttestor "join_token" {
        plugin_data {
        }
    }
    UpstreamAuthority "disk" {
        plugin_data {
            cert_file_path = "%[4]s/upstream.crt"
            key_file_path = "%[4]s/upstream.key"
        }
    }
}

health_checks {
    listener_enabled = true
    bind_address = "127.0.0.1"
    bind_port = "%[3]d"
    live_path = "/live"
    ready_path = "/ready"
}

telemetry {
    Prometheus {
        host = "127.0.0.1"
        port = %[5]d
    }
}
`

// spireStyleAgentConf is an agent.conf in SPIRE's style. %[1]s is the
// data_dir, %[2]d the server port, %[3]s the bootstrap bundle, %[4]s the
// join token, %[5]d the health port.
const spireStyleAgentConf = `
agent {
    data_dir = "%[1]s"
    log_level = "DEBUG"
    log_format = "json"
    server_address = "127.0.0.1"
    server_port = %[2]d
    socket_path = "%[1]s/public/api.sock"
    trust_bundle_path = "%[3]s"
    trust_bundle_format = "pem"
    trust_domain = "example.org"
    join_token = "%[4]s"
    insecure_bootstrap = false
    availability_target = "24h"
}

plugins {
    NodeAttestor "join_token" {
        plugin_data = {}
    }
    KeyManager "disk" {
        plugin_data {
            directory = "%[1]s"
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {
            discover_workload_path = true
            workload_size_limit = -1
        }
    }
}

health_checks {
    listener_enabled = true
    bind_address = "127.0.0.1"
    bind_port = "%[5]d"
}
`

// writeUpstreamCA writes a self-signed CA (upstream.crt, upstream.key) to
// dir and returns its certificate.
func writeUpstreamCA(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	ca := testca.New(t, testca.Serial(42), testca.Subject("interop upstream"),
		testca.Validity(time.Now().Add(-time.Hour), time.Now().Add(30*24*time.Hour)))
	testca.WriteCertsPEM(t, filepath.Join(dir, "upstream.crt"), ca.Cert)
	testca.WriteKeyPEM(t, filepath.Join(dir, "upstream.key"), ca.Key)
	return ca.Cert
}

// validate runs "<bin> validate -config path" in dir and fails the test
// unless it accepts the file.
func validate(t *testing.T, bin, dir, path string) {
	t.Helper()
	cmd := exec.Command(bin, "validate", "-config", path)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("%s validate -config %s: %v\n%s", filepath.Base(bin), path, err, out)
	}
}

// serverOutcome is what a server started from spireStyleServerConf does
// with its settings, observed through its APIs.
type serverOutcome struct {
	Health               string
	RootIsUpstream       bool
	IntermediateKey      string
	X509SVIDTTL          time.Duration
	JWTAlg, JWTIssuer    string
	JWTTTL               time.Duration
	IntermediateSubject  string
	BundleJWTKeyIsRSA    bool
	X509SVIDVerifiesRoot bool
	// MetricsServed: the telemetry Prometheus exporter answers in a format
	// the Prometheus parser reads. MintJWTAudit is the audit line of the
	// MintJWTSVID call (the fields both write, normalized).
	MetricsServed bool
	MintJWTAudit  string
}

// TestSPIREConfigBothWays: a server.conf and an agent.conf in SPIRE's
// style, using only what Sigil implements, load unchanged in both
// implementations (validate) and run both: spire-server and sigil-server
// started from the same server.conf apply its settings the same way
// (upstream CA, CA and JWT key types, SVID TTLs, JWT issuer, CA subject,
// health listener), and spire-agent and sigil-agent started from the same
// agent.conf serve a workload. Sigil's own conf/ examples pass SPIRE's
// validate.
func TestSPIREConfigBothWays(t *testing.T) {
	spireServer, spireAgent := testutil.SPIREBinaries(t)
	sigilServer, sigilAgent := testutil.Binaries(t)
	upstreamDir := t.TempDir()
	upstream := writeUpstreamCA(t, upstreamDir)

	outcomes := map[string]serverOutcome{}
	var sigil *testutil.Server
	for _, impl := range []struct {
		name string
		new  func(testing.TB, testutil.ServerConfig) *testutil.Server
		bin  string
	}{
		{"sigil-server", func(t testing.TB, c testutil.ServerConfig) *testutil.Server { return testutil.NewServer(t, c) }, sigilServer},
		{"spire-server", testutil.NewSPIREServer, spireServer},
	} {
		srv := impl.new(t, testutil.ServerConfig{})
		health, err := testutil.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		metrics, err := testutil.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		conf := fmt.Sprintf(spireStyleServerConf, srv.Config.DataDir, srv.Config.BindPort, health, upstreamDir, metrics)
		if err := os.WriteFile(srv.ConfigPath, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, bin := range []string{sigilServer, spireServer} {
			validate(t, bin, srv.Config.DataDir, srv.ConfigPath)
		}
		srv.Start(t)
		o := observeServer(t, srv, health, upstream)
		o.MetricsServed, o.MintJWTAudit = observeTelemetry(t, srv, metrics)
		outcomes[impl.name] = o
		if impl.name == "sigil-server" {
			sigil = srv
		}
	}
	if a, b := outcomes["sigil-server"], outcomes["spire-server"]; a != b {
		t.Errorf("the same server.conf gives\nsigil-server: %+v\nspire-server: %+v", a, b)
	}
	if o := outcomes["spire-server"]; !o.RootIsUpstream || o.IntermediateKey != "P-384" || o.JWTAlg != "RS256" {
		t.Errorf("spire-server did not apply the configuration as this test expects: %+v", o)
	}

	// The same agent.conf runs spire-agent and sigil-agent.
	webID := sigil.ID("/web")
	sigil.Admin(t).CreateEntry(t, webID, sigil.ID("/node"), uidSelector)
	bundle := filepath.Join(t.TempDir(), "bootstrap.crt")
	if err := os.WriteFile(bundle, sigil.Admin(t).BundlePEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, impl := range []struct {
		bin string
		new func(testing.TB, testutil.AgentConfig) *testutil.Agent
	}{
		{sigilAgent, func(t testing.TB, c testutil.AgentConfig) *testutil.Agent { return testutil.NewAgent(t, c) }},
		{spireAgent, testutil.NewSPIREAgent},
	} {
		cfg := testutil.AgentFor(t, sigil, "/node", "")
		health, err := testutil.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		cfg.SocketPath = filepath.Join(cfg.DataDir, "public", "api.sock")
		a := impl.new(t, cfg)
		conf := fmt.Sprintf(spireStyleAgentConf, cfg.DataDir, sigil.Config.BindPort, bundle, cfg.JoinToken, health)
		// testutil.Agent renders its Config on start: run the process
		// from this file instead.
		if err := os.WriteFile(a.ConfigPath, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, bin := range []string{sigilAgent, spireAgent} {
			validate(t, bin, cfg.DataDir, a.ConfigPath)
		}
		if err := os.MkdirAll(filepath.Dir(cfg.SocketPath), 0o700); err != nil {
			t.Fatal(err)
		}
		p := testutil.Start(t, testutil.Command{Name: a.Name(), Path: impl.bin, Args: []string{"run", "-config", a.ConfigPath},
			LogPath: filepath.Join(cfg.DataDir, "agent.log")})
		a.Proc = p
		a.WaitReady(t)
		checkWorkload(t, sigil, a, webID)
		if ag := findAgent(t, sigil.Admin(t), sigil.Admin(t).JoinTokenAgentID(cfg.JoinToken)); ag == nil ||
			time.Until(time.Unix(ag.GetX509SvidExpiresAt(), 0)).Round(time.Hour) != 3*time.Hour {
			t.Errorf("%s: agent SVID of %v does not follow agent_ttl 3h", a.Name(), ag)
		}
		if code := httpStatus(t, fmt.Sprintf("http://127.0.0.1:%d/ready", health)); code != http.StatusOK {
			t.Errorf("%s: health_checks ready path answers %d", a.Name(), code)
		}
	}

	// Sigil's example configurations pass SPIRE's validate (and Sigil's),
	// from a directory laid out as the repository (relative paths).
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	confs := []string{"conf/server/server.conf", "conf/agent/agent.conf", "conf/federation/cloud.conf", "conf/federation/edge.conf"}
	for _, f := range confs {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "conf", "bootstrap.crt"), sigil.Admin(t).BundlePEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ bin, conf string }{
		{spireServer, "conf/server/server.conf"}, {sigilServer, "conf/server/server.conf"},
		{spireAgent, "conf/agent/agent.conf"}, {sigilAgent, "conf/agent/agent.conf"},
		{spireServer, "conf/federation/cloud.conf"}, {sigilServer, "conf/federation/cloud.conf"},
		{spireServer, "conf/federation/edge.conf"}, {sigilServer, "conf/federation/edge.conf"},
	} {
		validate(t, c.bin, dir, c.conf)
	}
}

func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// observeServer reads back, through the server's APIs, what its
// configuration set.
func observeServer(t *testing.T, srv *testutil.Server, healthPort int, upstream *x509.Certificate) serverOutcome {
	t.Helper()
	var o serverOutcome
	var err error
	if err = testutil.Poll(deadline, 50*time.Millisecond, func() (bool, error) {
		return httpStatus(t, fmt.Sprintf("http://127.0.0.1:%d/live", healthPort)) == http.StatusOK, nil
	}); err == nil {
		o.Health = "live"
	}
	adm := srv.Admin(t)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	b, err := adm.Bundle.GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	o.RootIsUpstream = len(b.GetX509Authorities()) == 1 && string(b.GetX509Authorities()[0].GetAsn1()) == string(upstream.Raw)
	if ks := b.GetJwtAuthorities(); len(ks) > 0 {
		pub, err := x509.ParsePKIXPublicKey(ks[0].GetPublicKey())
		_, o.BundleJWTKeyIsRSA = pub.(*rsa.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := srv.ID("/minted")
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	svid := svidv1.NewSVIDClient(adm.Conn)
	x, err := svid.MintX509SVID(ctx, &svidv1.MintX509SVIDRequest{Csr: csr})
	if err != nil {
		t.Fatalf("%s: MintX509SVID: %v", srv.Name(), err)
	}
	var chain []*x509.Certificate
	for _, der := range x.GetSvid().GetCertChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	leaf := chain[0]
	// Servers backdate NotBefore a little; the TTL counts from now.
	o.X509SVIDTTL = time.Until(leaf.NotAfter).Round(time.Hour)
	if len(chain) > 1 {
		if pub, ok := chain[1].PublicKey.(*ecdsa.PublicKey); ok {
			o.IntermediateKey = pub.Curve.Params().Name
		}
		o.IntermediateSubject = fmt.Sprint(chain[1].Subject.Country, chain[1].Subject.Organization)
	}
	roots := x509.NewCertPool()
	roots.AddCert(upstream)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	o.X509SVIDVerifiesRoot = err == nil

	j, err := svid.MintJWTSVID(ctx, &svidv1.MintJWTSVIDRequest{Id: &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()}, Audience: []string{"a"}})
	if err != nil {
		t.Fatalf("%s: MintJWTSVID: %v", srv.Name(), err)
	}
	tok, err := jwt.ParseSigned(j.GetSvid().GetToken(), []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.ES384})
	if err != nil {
		t.Fatal(err)
	}
	o.JWTAlg = tok.Headers[0].Algorithm
	var claims jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&claims); err != nil {
		t.Fatal(err)
	}
	o.JWTIssuer = claims.Issuer
	o.JWTTTL = time.Until(claims.Expiry.Time()).Round(time.Minute)
	return o
}

// observeTelemetry scrapes the server's Prometheus exporter with the
// Prometheus parser and returns the audit line of observeServer's
// MintJWTSVID call (a JSON log line), as "key=value ..." over the fields
// both implementations write.
func observeTelemetry(t *testing.T, srv *testutil.Server, metricsPort int) (served bool, audit string) {
	t.Helper()
	if _, err := telemetrytest.Scrape(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)); err != nil {
		t.Errorf("%s: metrics: %v", srv.Name(), err)
	} else {
		served = true
	}
	keys := []string{"type", "msg", "service", "method", "status", "spiffe_id", "audience", "ttl"}
	err := testutil.Poll(deadline, 50*time.Millisecond, func() (bool, error) {
		for _, line := range strings.Split(srv.Proc.Logs(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil || m["type"] != "audit" || m["method"] != "MintJWTSVID" {
				continue
			}
			var parts []string
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%s=%v", k, m[k]))
			}
			if _, ok := m["caller_uid"]; !ok {
				parts = append(parts, "no caller_uid")
			}
			audit = strings.Join(parts, " ")
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		t.Errorf("%s: no audit line for MintJWTSVID: %v", srv.Name(), err)
	}
	return served, audit
}
