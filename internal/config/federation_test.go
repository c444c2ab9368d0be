package config

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The federation section of SPIRE's documented example (doc/spire_server.md,
// "Federation configuration") with the https_web profile's serving
// certificate files instead of ACME, and the edge seed's shape.
const federationConf = `    federation {
        bundle_endpoint {
            address = "127.0.0.1"
            port = 8443
            refresh_hint = "10m"
            profile "https_web" {
                serving_cert_file {
                    cert_file_path = "/etc/sigil/be.crt"
                    key_file_path = "/etc/sigil/be.key"
                    file_sync_interval = "5m"
                }
            }
        }
        federates_with "domain1.test" {
            bundle_endpoint_url = "https://1.2.3.4:8443"
            bundle_endpoint_profile "https_web" {}
        }
        federates_with "domain2.test" {
            bundle_endpoint_url = "https://5.6.7.8:8443/bundle"
            bundle_endpoint_profile "https_spiffe" {
                endpoint_spiffe_id = "spiffe://domain2.test/spire/server"
            }
        }
    }
`

func TestFederationSection(t *testing.T) {
	cfg, err := ParseServer("server.conf", []byte(serverConfWith(federationConf, "")))
	if err != nil {
		t.Fatal(err)
	}
	f := cfg.Federation
	if f == nil || f.BundleEndpoint == nil {
		t.Fatalf("federation = %+v", f)
	}
	be := f.BundleEndpoint
	want := BundleEndpoint{Address: "127.0.0.1", Port: 8443, RefreshHint: 10 * time.Minute, Profile: ProfileHTTPSWeb,
		ServingCertFile: &ServingCertFile{CertFilePath: "/etc/sigil/be.crt", KeyFilePath: "/etc/sigil/be.key", FileSyncInterval: 5 * time.Minute}}
	if be.Address != want.Address || be.Port != want.Port || be.RefreshHint != want.RefreshHint || be.Profile != want.Profile ||
		be.ProfileDefaulted || *be.ServingCertFile != *want.ServingCertFile {
		t.Errorf("bundle endpoint = %+v (%+v), want %+v", be, be.ServingCertFile, want)
	}
	if len(f.FederatesWith) != 2 {
		t.Fatalf("federates_with = %+v", f.FederatesWith)
	}
	web, spf := f.FederatesWith[0], f.FederatesWith[1]
	if web.TrustDomain.Name() != "domain1.test" || web.BundleEndpointURL.String() != "https://1.2.3.4:8443" || web.Profile != ProfileHTTPSWeb || !web.EndpointSPIFFEID.IsZero() {
		t.Errorf("domain1.test = %v", web)
	}
	if spf.TrustDomain.Name() != "domain2.test" || spf.BundleEndpointURL.String() != "https://5.6.7.8:8443/bundle" || spf.Profile != ProfileHTTPSSPIFFE ||
		spf.EndpointSPIFFEID.String() != "spiffe://domain2.test/spire/server" || spf.Pos.String() != "server.conf:21" {
		t.Errorf("domain2.test = %v at %s", spf, spf.Pos)
	}
}

func TestFederationDefaults(t *testing.T) {
	src := serverConfWith("    federation {\n        bundle_endpoint {\n            port = 8443\n        }\n    }\n", "")
	cfg, err := ParseServer("server.conf", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	be := cfg.Federation.BundleEndpoint
	// SPIRE: all addresses, a 5 minute hint, https_spiffe when no profile
	// is named (with a warning).
	if be.Address != "0.0.0.0" || be.RefreshHint != 5*time.Minute || be.Profile != ProfileHTTPSSPIFFE || !be.ProfileDefaulted || be.ServingCertFile != nil {
		t.Errorf("bundle endpoint = %+v", be)
	}
	src = serverConfWith("    federation {\n        bundle_endpoint {\n            port = 8443\n            profile \"https_web\" {\n                serving_cert_file {\n                    cert_file_path = \"c\"\n                    key_file_path = \"k\"\n                }\n            }\n        }\n    }\n", "")
	cfg, err = ParseServer("server.conf", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Federation.BundleEndpoint.ServingCertFile.FileSyncInterval; got != time.Hour {
		t.Errorf("file_sync_interval default = %v, want 1h", got)
	}
	// No federation block: nil.
	cfg, err = ParseServer("server.conf", []byte(serverConfWith("", "")))
	if err != nil || cfg.Federation != nil {
		t.Errorf("no federation block: %+v, %v", cfg.Federation, err)
	}
}

func TestFederationErrors(t *testing.T) {
	fw := func(body string) string {
		return serverConfWith("    federation {\n        federates_with \"peer.test\" {\n"+body+"        }\n    }\n", "")
	}
	be := func(body string) string {
		return serverConfWith("    federation {\n        bundle_endpoint {\n"+body+"        }\n    }\n", "")
	}
	const spiffeProfile = "            bundle_endpoint_profile \"https_spiffe\" {\n                endpoint_spiffe_id = \"spiffe://peer.test/spire/server\"\n            }\n"
	cases := []struct {
		name string
		src  string
		want []string
	}{
		{"unknown profile", fw("            bundle_endpoint_url = \"https://peer:8443\"\n            bundle_endpoint_profile \"https_mtls\" {}\n"),
			[]string{`server.conf:7:`, `unknown bundle endpoint profile "https_mtls"`}},
		{"two profiles", fw("            bundle_endpoint_url = \"https://peer:8443\"\n            bundle_endpoint_profile \"https_web\" {}\n            bundle_endpoint_profile \"https_spiffe\" {}\n"),
			[]string{`server.conf:7:`, "exactly one bundle endpoint profile"}},
		{"no profile", fw("            bundle_endpoint_url = \"https://peer:8443\"\n"),
			[]string{`server.conf:5:`, "missing bundle_endpoint_profile"}},
		{"http URL", fw("            bundle_endpoint_url = \"http://peer:8443\"\n" + spiffeProfile),
			[]string{`server.conf:6:`, "must use the https scheme"}},
		{"URL without host", fw("            bundle_endpoint_url = \"https:///bundle\"\n" + spiffeProfile),
			[]string{`server.conf:6:`, "must specify the host"}},
		{"URL with user info", fw("            bundle_endpoint_url = \"https://u:p@peer:8443\"\n" + spiffeProfile),
			[]string{`server.conf:6:`, "must not contain user info"}},
		{"missing URL", fw(spiffeProfile),
			[]string{`server.conf:5:`, "bundle_endpoint_url must be configured"}},
		{"endpoint ID in another trust domain", fw("            bundle_endpoint_url = \"https://peer:8443\"\n            bundle_endpoint_profile \"https_spiffe\" {\n                endpoint_spiffe_id = \"spiffe://other.test/spire/server\"\n            }\n"),
			[]string{`server.conf:8:`, `"spiffe://other.test/spire/server" is not in trust domain "peer.test"`}},
		{"endpoint ID missing", fw("            bundle_endpoint_url = \"https://peer:8443\"\n            bundle_endpoint_profile \"https_spiffe\" {}\n"),
			[]string{`server.conf:7:`, "needs endpoint_spiffe_id"}},
		{"endpoint ID invalid", fw("            bundle_endpoint_url = \"https://peer:8443\"\n            bundle_endpoint_profile \"https_spiffe\" {\n                endpoint_spiffe_id = \"peer.test/server\"\n            }\n"),
			[]string{`server.conf:8:`, "invalid endpoint_spiffe_id"}},
		{"unknown key in profile", fw("            bundle_endpoint_url = \"https://peer:8443\"\n            bundle_endpoint_profile \"https_web\" {\n                insecure = true\n            }\n"),
			[]string{`server.conf:8: unknown key "insecure" in bundle_endpoint_profile "https_web" block`}},
		{"unknown key in federates_with", fw("            bundle_endpoint_url = \"https://peer:8443\"\n            refresh = \"1m\"\n" + spiffeProfile),
			[]string{`server.conf:7: unknown key "refresh" in federates_with "peer.test" block`}},
		{"bad trust domain", serverConfWith("    federation {\n        federates_with \"Peer Test\" {\n            bundle_endpoint_url = \"https://peer:8443\"\n        }\n    }\n", ""),
			[]string{`server.conf:5:`, `invalid trust domain in federates_with "Peer Test"`}},
		{"own trust domain", serverConfWith("    federation {\n        federates_with \"example.org\" {\n            bundle_endpoint_url = \"https://peer:8443\"\n            bundle_endpoint_profile \"https_web\" {}\n        }\n    }\n", ""),
			[]string{`server.conf:5: federates_with "example.org" is the server's own trust domain`}},
		{"duplicate relationship", serverConfWith("    federation {\n        federates_with \"peer.test\" {\n            bundle_endpoint_url = \"https://a:8443\"\n            bundle_endpoint_profile \"https_web\" {}\n        }\n        federates_with \"peer.test\" {\n            bundle_endpoint_url = \"https://b:8443\"\n            bundle_endpoint_profile \"https_web\" {}\n        }\n    }\n", ""),
			[]string{`server.conf:9: federates_with "peer.test" is declared twice (first on line 5)`}},
		{"endpoint without port", be("            address = \"0.0.0.0\"\n"),
			[]string{`server.conf:5:`, "port must be configured"}},
		{"ACME refused by name", be("            port = 443\n            acme {\n                domain_name = \"x\"\n            }\n"),
			[]string{`server.conf:7:`, "ACME is not supported by Sigil"}},
		{"ACME in https_web refused by name", be("            port = 443\n            profile \"https_web\" {\n                acme {\n                    domain_name = \"x\"\n                }\n            }\n"),
			[]string{`server.conf:8:`, "ACME is not supported by Sigil"}},
		{"https_web without files", be("            port = 443\n            profile \"https_web\" {}\n"),
			[]string{`server.conf:7:`, `profile "https_web" needs serving_cert_file`}},
		{"serving_cert_file without key", be("            port = 443\n            profile \"https_web\" {\n                serving_cert_file {\n                    cert_file_path = \"c\"\n                }\n            }\n"),
			[]string{`server.conf:8:`, "needs cert_file_path and key_file_path"}},
		{"unknown endpoint profile", be("            port = 443\n            profile \"https_mtls\" {}\n"),
			[]string{`server.conf:7:`, `unknown profile "https_mtls"`}},
		{"negative refresh hint", be("            port = 443\n            refresh_hint = \"-1m\"\n"),
			[]string{`server.conf:7:`, "must be positive"}},
		{"unknown key in bundle_endpoint", be("            port = 443\n            tls_policy = \"x\"\n"),
			[]string{`server.conf:7: unknown key "tls_policy" in bundle_endpoint block`}},
		{"unknown key in federation", serverConfWith("    federation {\n        bundle_endpoint_url = \"x\"\n    }\n", ""),
			[]string{`server.conf:5: unknown key "bundle_endpoint_url" in federation block`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseServer("server.conf", []byte(c.src))
			wantErr(t, err, c.want...)
		})
	}
}

// -trustDomain may make a federates_with block name the server's own trust
// domain: refused at validation, naming the block.
func TestFederationOwnTrustDomainByFlag(t *testing.T) {
	cfg, err := ParseServer("server.conf", []byte(serverConfWith(federationConf, "")))
	if err != nil {
		t.Fatal(err)
	}
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("domain2.test")
	err = cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), `server.conf:21: federates_with "domain2.test" is the server's own trust domain`) {
		t.Fatalf("Validate = %v", err)
	}
}

// The JSON form of the same section (HCL's JSON syntax, as SPIRE accepts).
func TestFederationJSON(t *testing.T) {
	src := `{
  "server": {
    "trust_domain": "example.org",
    "data_dir": "./data",
    "federation": {
      "bundle_endpoint": {"address": "0.0.0.0", "port": 8443, "profile": {"https_spiffe": {}}},
      "federates_with": {
        "peer.test": {
          "bundle_endpoint_url": "https://peer:8443",
          "bundle_endpoint_profile": {"https_spiffe": {"endpoint_spiffe_id": "spiffe://peer.test/spire/server"}}
        }
      }
    }
  },
  "plugins": {
    "DataStore": {"sql": {"plugin_data": {"database_type": "sqlite3", "connection_string": "ds"}}},
    "KeyManager": {"memory": {}}
  }
}`
	cfg, err := ParseServer("server.json", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	be := cfg.Federation.BundleEndpoint
	if be.Profile != ProfileHTTPSSPIFFE || be.ProfileDefaulted || be.Port != 8443 {
		t.Errorf("bundle endpoint = %+v", be)
	}
	if len(cfg.Federation.FederatesWith) != 1 || cfg.Federation.FederatesWith[0].EndpointSPIFFEID.String() != "spiffe://peer.test/spire/server" {
		t.Errorf("federates_with = %+v", cfg.Federation.FederatesWith)
	}
}

// TestFederationREADMEExample: the https_web example of README.md
// ("Federation between trust domains") parses as it is printed, with
// every key taken (an unknown one would be an error).
func TestFederationREADMEExample(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(readme)
	i := strings.Index(s, "\n### Federation between trust domains\n")
	if i < 0 {
		t.Fatal("README.md has no Federation section")
	}
	s = s[i:]
	start := strings.Index(s, "```hcl\nserver {\n")
	if start < 0 {
		t.Fatal("the Federation section has no hcl example")
	}
	s = s[start+len("```hcl\nserver {\n"):]
	s = s[:strings.Index(s, "\n```")]
	s = strings.TrimSuffix(strings.TrimRight(s, "\n"), "}")
	cfg, err := ParseServer("README.md", []byte(serverConfWith(s, "")))
	if err != nil {
		t.Fatal(err)
	}
	be, fw := cfg.Federation.BundleEndpoint, cfg.Federation.FederatesWith
	if be.Profile != ProfileHTTPSWeb || be.ServingCertFile == nil || be.Port != 443 || len(fw) != 1 || fw[0].Profile != ProfileHTTPSWeb ||
		fw[0].TrustDomain.Name() != "partner.example" {
		t.Fatalf("README example: bundle endpoint %+v, federates_with %+v", be, fw)
	}
}
