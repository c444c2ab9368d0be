package k8spsat

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/kubeapi/kubeconfig"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// writeKubeconfig writes a kubeconfig for an API server at server with a
// bearer token.
func writeKubeconfig(t *testing.T, dir, server string) string {
	t.Helper()
	p := filepath.Join(dir, "kubeconfig")
	text := "current-context: c\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n" +
		"clusters: [{name: c, cluster: {server: '" + server + "', insecure-skip-tls-verify: true}}]\n" +
		"users: [{name: u, user: {token: t}}]\n"
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseServerConfig(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	kc := writeKubeconfig(t, t.TempDir(), "https://127.0.0.1:1")
	parse := func(data map[string]any) (ServerConfig, error) {
		return ParseServerConfig(config.NewPlugin("NodeAttestor", Type, data).Data(), kubeconfig.Loader)
	}
	c, err := parse(map[string]any{"clusters": map[string]any{
		"prod": map[string]any{
			"service_account_allow_list": []string{"spire:spire-agent", "other:agent"},
			"kube_config_file":           kc,
			"allowed_node_label_keys":    []string{"zone"},
			"allowed_pod_label_keys":     []string{"app"},
			"use_pod_uid_for_agent_id":   true,
		},
		"dev": map[string]any{
			"service_account_allow_list": []string{"spire:spire-agent"},
			"audience":                   []string{},
			"kube_config_file":           kc,
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := ServerConfig{Clusters: []ClusterConfig{
		{Name: "dev", ServiceAccountAllowList: []string{"spire:spire-agent"}, Audience: []string{}, KubeConfigFile: kc},
		{Name: "prod", ServiceAccountAllowList: []string{"spire:spire-agent", "other:agent"}, KubeConfigFile: kc,
			AllowedNodeLabelKeys: []string{"zone"}, AllowedPodLabelKeys: []string{"app"}, UsePodUIDForAgentID: true},
	}}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got  %+v\nwant %+v", c, want)
	}
	// An audience set empty is not the default one.
	if c.Clusters[0].Audience == nil || c.Clusters[1].Audience != nil {
		t.Fatalf("audience: %#v, %#v", c.Clusters[0].Audience, c.Clusters[1].Audience)
	}
	if c, err := parse(map[string]any{}); err != nil || len(c.Clusters) != 0 {
		t.Fatalf("no clusters: %+v, %v", c, err)
	}

	ok := func(extra map[string]any) map[string]any {
		m := map[string]any{"service_account_allow_list": []string{"ns:sa"}, "kube_config_file": kc}
		for k, v := range extra {
			m[k] = v
		}
		return map[string]any{"clusters": map[string]any{"c1": m}}
	}
	for _, tc := range []struct {
		data map[string]any
		want []string
	}{
		{map[string]any{"clusters": map[string]any{"c1": map[string]any{"kube_config_file": kc}}}, []string{`cluster "c1": service_account_allow_list must have at least one service account`}},
		{ok(map[string]any{"service_account_allow_list": []string{"sa-only", "ns:", "a:b:c"}}), []string{`"sa-only" is not "<namespace>:<service account>"`, `"ns:" is not`, `"a:b:c" is not`}},
		{map[string]any{"clusters": map[string]any{"a/b": map[string]any{"service_account_allow_list": []string{"ns:sa"}, "kube_config_file": kc}}}, []string{`cluster "a/b": the cluster name is not a valid SPIFFE ID path segment`}},
		{ok(map[string]any{"audience": []string{""}}), []string{"audience has an empty string"}},
		{ok(map[string]any{"kube_config_file": filepath.Join(t.TempDir(), "none")}), []string{`cluster "c1": open `, "no such file"}},
		{ok(map[string]any{"kube_config_file": ""}), []string{`cluster "c1": kube_config_file is not set, so the in-cluster service account is used: not running in a Kubernetes pod`}},
		{ok(map[string]any{"service_account_allowlist": []string{"x:y"}}), []string{"service_account_allowlist"}},
		{ok(map[string]any{"use_pod_uid_for_agent_id": "yes"}), []string{"use_pod_uid_for_agent_id"}},
		{map[string]any{"clusters": "prod"}, []string{"clusters"}},
		{map[string]any{"cluster": map[string]any{}}, []string{"cluster"}},
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

// TestParseServerConfigHCL: SPIRE's configuration text, both the
// documented `clusters = { "name" = { ... } }` and the block form.
func TestParseServerConfigHCL(t *testing.T) {
	kc := writeKubeconfig(t, t.TempDir(), "https://127.0.0.1:1")
	for _, clusters := range []string{
		`clusters = {
            "prod-1" = {
                service_account_allow_list = ["spire:spire-agent"]
                kube_config_file = "` + kc + `"
            }
        }`,
		`clusters "prod-1" {
                service_account_allow_list = ["spire:spire-agent"]
                kube_config_file = "` + kc + `"
        }`,
	} {
		text := `server {
    trust_domain = "example.org"
    data_dir = "/tmp/x"
}
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "x" } }
    KeyManager "memory" { plugin_data {} }
    NodeAttestor "k8s_psat" {
        plugin_data {
        ` + clusters + `
        }
    }
}
`
		p := filepath.Join(t.TempDir(), "server.conf")
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.LoadServer([]string{"-config", p})
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, pl := range cfg.Plugins {
			if pl.Type != "NodeAttestor" || pl.Name != Type {
				continue
			}
			found = true
			c, err := ParseServerConfig(pl.Data(), kubeconfig.Loader)
			if err != nil {
				t.Fatalf("%s: %v", clusters, err)
			}
			if len(c.Clusters) != 1 || c.Clusters[0].Name != "prod-1" || c.Clusters[0].ServiceAccountAllowList[0] != "spire:spire-agent" {
				t.Fatalf("%s: %+v", clusters, c)
			}
		}
		if !found {
			t.Fatal("no k8s_psat plugin")
		}
	}
}

func TestParseAgentConfig(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	parse := func(data map[string]any) (AgentConfig, error) {
		return ParseAgentConfig(config.NewPlugin("NodeAttestor", Type, data).Data())
	}
	c, err := parse(map[string]any{"cluster": "prod", "token_path": tok})
	if err != nil || c != (AgentConfig{Cluster: "prod", TokenPath: tok}) {
		t.Fatalf("%+v, %v", c, err)
	}
	for _, tc := range []struct {
		data map[string]any
		want string
	}{
		{map[string]any{"token_path": tok}, "cluster is required"},
		{map[string]any{"cluster": "a b", "token_path": tok}, `cluster "a b" is not a valid SPIFFE ID path segment`},
		{map[string]any{"cluster": "prod", "token_path": filepath.Join(dir, "none")}, "token: open " + filepath.Join(dir, "none")},
		{map[string]any{"cluster": "prod", "token_path": empty}, empty + " is empty"},
		{map[string]any{"cluster": "prod", "token_path": tok, "token": "x"}, `"token"`},
	} {
		_, err := parse(tc.data)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.data, err, tc.want)
		}
	}
	// token_path's default is SPIRE's.
	if _, err := parse(map[string]any{"cluster": "prod"}); err == nil || !strings.Contains(err.Error(), DefaultTokenPath) {
		t.Errorf("the default token path: %v", err)
	}
}

// TestAgentReadsTokenAtEveryAttestation: Begin reads the token file each
// time (the kubelet rotates it), trimmed, with the configured cluster.
func TestAgentReadsTokenAtEveryAttestation(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	a, err := NewAgent(AgentConfig{Cluster: "prod", TokenPath: tok})
	if err != nil {
		t.Fatal(err)
	}
	if a.Type() != "k8s_psat" {
		t.Fatal(a.Type())
	}
	if _, err := a.Begin(context.Background()); err == nil {
		t.Fatal("Begin without a token file succeeded")
	}
	for _, v := range []string{"first", "second\n"} {
		if err := os.WriteFile(tok, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := a.Begin(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var d map[string]string
		if err := json.Unmarshal(s.Payload(), &d); err != nil {
			t.Fatal(err)
		}
		if want := map[string]string{"cluster": "prod", "token": strings.TrimSpace(v)}; !reflect.DeepEqual(d, want) {
			t.Fatalf("payload %v, want %v", d, want)
		}
		if _, err := s.Respond(context.Background(), []byte("{}")); err == nil {
			t.Fatal("a challenge was answered")
		}
		_ = s.Close()
	}
	if err := os.WriteFile(tok, make([]byte, MaxTokenSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Begin(context.Background()); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("an oversized token: %v", err)
	}
}

// TestAttestRefusesMalformedData: what is wrong with the payload itself is
// InvalidArgument, before any API server is asked (the cluster's points
// nowhere).
func TestAttestRefusesMalformedData(t *testing.T) {
	kc := writeKubeconfig(t, t.TempDir(), "https://127.0.0.1:1")
	s, err := NewServer(ServerConfig{Clusters: []ClusterConfig{{Name: "prod", ServiceAccountAllowList: []string{"a:b"}, KubeConfigFile: kc}}},
		ServerOptions{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Loader: kubeconfig.Loader})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		payload string
		want    string
	}{
		{"", "empty"},
		{"not json", "not JSON"},
		{`{"token": "x"}`, "no cluster"},
		{`{"cluster": "prod"}`, "no token"},
		{`{"cluster": "staging", "token": "x"}`, `not configured for cluster "staging"`},
		{`{"cluster": "prod", "token": "` + strings.Repeat("x", MaxPayloadSize) + `"}`, "more than"},
	} {
		_, err := s.Attest(context.Background(), []byte(tc.payload), nil)
		if !errors.Is(err, node.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.40q: %v, want ErrInvalid containing %q", tc.payload, err, tc.want)
		}
	}
	// The API server cannot be reached: neither invalid nor refused (an
	// internal failure, retried by the agent).
	_, err = s.Attest(context.Background(), []byte(`{"cluster": "prod", "token": "x"}`), nil)
	if err == nil || errors.Is(err, node.ErrInvalid) || errors.Is(err, node.ErrRefused) {
		t.Fatalf("unreachable API server: %v", err)
	}
}

func TestSelectorKind(t *testing.T) {
	r, err := selector.NewRegistry(SelectorKind())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"cluster:prod", "agent_ns:spire", "agent_sa:spire-agent", "agent_pod_name:p", "agent_pod_uid:u",
		"agent_node_name:n", "agent_node_uid:u", "agent_node_ip:10.0.0.1", "agent_node_ip:fd00::1",
		"agent_node_label:topology.kubernetes.io/zone:eu-1", "agent_pod_label:app:", "agent_pod_label:a:b:c"} {
		if err := r.Check(selector.Selector{Type: Type, Value: v}); err != nil {
			t.Errorf("%s: %v", v, err)
		}
	}
	for _, v := range []string{"agent_node:x", "agent_node_ip:node-1", "agent_node_label:zone", "agent_pod_label::v", "cluster:", "ns:x"} {
		if err := r.Check(selector.Selector{Type: Type, Value: v}); err == nil {
			t.Errorf("%s: accepted", v)
		}
	}
}

// TestREADMEExample: the README's k8s_psat configuration (section
// "Kubernetes nodes with k8s_psat") parses, server and agent half, with
// every optional setting uncommented too.
func TestREADMEExample(t *testing.T) {
	readme, err := os.ReadFile("../../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(readme), "### Kubernetes nodes with k8s_psat\n")
	if !ok {
		t.Fatal("README has no section Kubernetes nodes with k8s_psat")
	}
	_, block, ok := strings.Cut(sec, "```hcl\n")
	if !ok {
		t.Fatal("no hcl block in the section")
	}
	block, _, _ = strings.Cut(block, "```")
	server, agent, ok := strings.Cut(block, "# agent.conf\n")
	if !ok {
		t.Fatal("the block has no '# agent.conf' part")
	}
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("token"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, uncomment := range []bool{false, true} {
		text := server
		if uncomment {
			text = regexp.MustCompile(`(?m)^(\s*)# (\w+ = )`).ReplaceAllString(text, "$1$2")
		}
		cfg, err := config.ParseServer("server.conf", []byte("server {\n trust_domain = \"example.org\"\n data_dir = \"/tmp/x\"\n}\nplugins {\n"+text+"}\n"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := ParseServerConfig(cfg.Plugins[0].Data(), nil)
		if err != nil {
			t.Fatalf("uncommented %t: %v", uncomment, err)
		}
		if len(c.Clusters) != 1 || c.Clusters[0].Name != "prod" {
			t.Fatalf("%+v", c)
		}
		if uncomment && (c.Clusters[0].KubeConfigFile == "" || len(c.Clusters[0].AllowedPodLabelKeys) != 1) {
			t.Fatalf("the optional settings were not read: %+v", c)
		}

		text = agent
		if uncomment {
			text = regexp.MustCompile(`(?m)^(\s*)# token_path = "[^"]*"`).ReplaceAllString(text, `${1}token_path = "`+tok+`"`)
		}
		acfg, err := config.ParseAgent("agent.conf", []byte("agent {\n trust_domain = \"example.org\"\n data_dir = \"/tmp/x\"\n server_address = \"127.0.0.1\"\n server_port = 8081\n insecure_bootstrap = true\n}\nplugins {\n"+text+"}\n"))
		if err != nil {
			t.Fatal(err)
		}
		ac, err := ParseAgentConfig(acfg.Plugins[0].Data())
		if uncomment && err != nil {
			t.Fatal(err)
		}
		if !uncomment && (err == nil || !strings.Contains(err.Error(), DefaultTokenPath)) {
			t.Fatalf("the default token_path: %v", err)
		}
		if ac.Cluster != "prod" {
			t.Fatalf("%+v", ac)
		}
	}
}
