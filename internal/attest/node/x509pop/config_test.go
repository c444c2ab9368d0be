package x509pop

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

func TestParseServerConfig(t *testing.T) {
	dir := t.TempDir()
	ca := testca.WriteCertsPEM(t, filepath.Join(dir, "ca.pem"), testca.New(t).Cert)
	notPEM := filepath.Join(dir, "key.pem")
	testca.WriteKeyPEM(t, notPEM, testca.NewECKey(t))
	parse := func(data map[string]any) (ServerConfig, error) {
		return ParseServerConfig(config.NewPlugin("NodeAttestor", Type, data).Data(), parseTemplate)
	}
	c, err := parse(map[string]any{
		"ca_bundle_path":      ca,
		"agent_path_template": "/cn/{{ .Subject.CommonName }}",
		"max_intermediates":   2,
		"max_rsa_key_size":    4096,
		"mode":                "external_pki",
		"verify_client_ip":    false,
	})
	want := ServerConfig{CABundlePath: ca, AgentPathTemplate: "/cn/{{ .Subject.CommonName }}", MaxIntermediates: 2, MaxRSAKeySize: 4096}
	if err != nil || c.CABundlePath != want.CABundlePath || c.AgentPathTemplate != want.AgentPathTemplate || c.MaxIntermediates != 2 || c.MaxRSAKeySize != 4096 {
		t.Fatalf("got %+v, %v; want %+v", c, err, want)
	}
	if c, err := parse(map[string]any{"ca_bundle_paths": []string{ca, ca}}); err != nil || len(c.CABundlePaths) != 2 {
		t.Fatalf("ca_bundle_paths: %+v, %v", c, err)
	}
	for _, tc := range []struct {
		data map[string]any
		want []string
	}{
		{map[string]any{}, []string{`plugin NodeAttestor "x509pop": one of ca_bundle_path or ca_bundle_paths is required`}},
		{map[string]any{"ca_bundle_path": ca, "ca_bundle_paths": []string{"/b"}}, []string{"set only one of ca_bundle_path and ca_bundle_paths"}},
		{map[string]any{"ca_bundle_path": ca, "mode": "spiffe"}, []string{`mode "spiffe" is not supported`}},
		{map[string]any{"ca_bundle_path": ca, "verify_client_ip": true}, []string{"verify_client_ip = true is not supported"}},
		{map[string]any{"ca_bundle_path": ca, "svid_prefix": "/x"}, []string{"svid_prefix"}},
		{map[string]any{"ca_bundle_path": ca, "max_intermediates": 0, "max_rsa_key_size": -5}, []string{"max_intermediates must be greater than 0", "max_rsa_key_size must be greater than 0"}},
		{map[string]any{"ca_bundle_path": ca, "agent_path_template": "/{{ .X"}, []string{"agent_path_template: template: agent_path_template:1: unclosed action"}},
		{map[string]any{"ca_bundle_path": ca, "agent_path_template": "/{{ env \"HOME\" }}"}, []string{`function "env" not defined`}},
		{map[string]any{"ca_bundle_path": ca, "ca_bundle_pth": "/b"}, []string{"ca_bundle_pth"}},
		// validate reports the bundle files run would fail to load.
		{map[string]any{"ca_bundle_path": filepath.Join(dir, "missing.pem")}, []string{`plugin NodeAttestor "x509pop": CA bundle: open ` + filepath.Join(dir, "missing.pem")}},
		{map[string]any{"ca_bundle_paths": []string{ca, notPEM}}, []string{"key.pem: no PEM CERTIFICATE block"}},
	} {
		_, err := parse(tc.data)
		t.Logf("%v: %v", tc.data, err)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %v, want one containing %q", tc.data, err, w)
			}
		}
	}
}

func TestParseAgentConfig(t *testing.T) {
	root := testca.New(t)
	inter := root.Intermediate(t)
	d := newDevice(t, inter)
	other := newDevice(t, inter)
	parse := func(data map[string]any) (AgentConfig, error) {
		return ParseAgentConfig(config.NewPlugin("NodeAttestor", Type, data).Data())
	}
	want := AgentConfig{PrivateKeyPath: d.cfg.PrivateKeyPath, CertificatePath: d.cfg.CertificatePath, IntermediatesPath: d.cfg.IntermediatesPath}
	c, err := parse(map[string]any{"private_key_path": want.PrivateKeyPath, "certificate_path": want.CertificatePath, "intermediates_path": want.IntermediatesPath})
	if err != nil || c != want {
		t.Fatalf("%+v, %v", c, err)
	}
	key, crt, inters := d.cfg.PrivateKeyPath, d.cfg.CertificatePath, d.cfg.IntermediatesPath
	for _, tc := range []struct {
		data map[string]any
		want string
	}{
		{map[string]any{"certificate_path": crt}, "private_key_path is required"},
		{map[string]any{"private_key_path": key}, "certificate_path is required"},
		{map[string]any{"private_key_path": key, "certificate_path": crt, "spiffe_endpoint_socket": "/s"}, "spiffe_endpoint_socket"},
		{map[string]any{"private_key_path": key, "certificate_path": crt, "intermediate_path": inters}, "intermediate_path"},
		// validate and run stop on files the agent could never attest
		// with, as spire-agent does.
		{map[string]any{"private_key_path": "/nonexistent/k.pem", "certificate_path": crt}, `plugin NodeAttestor "x509pop": open /nonexistent/k.pem`},
		{map[string]any{"private_key_path": key, "certificate_path": "/nonexistent/c.pem"}, "open /nonexistent/c.pem"},
		{map[string]any{"private_key_path": other.cfg.PrivateKeyPath, "certificate_path": crt}, "private key does not match public key"},
		{map[string]any{"private_key_path": key, "certificate_path": crt, "intermediates_path": key}, "no PEM CERTIFICATE block"},
	} {
		if _, err := parse(tc.data); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.data, err, tc.want)
		}
	}
}
