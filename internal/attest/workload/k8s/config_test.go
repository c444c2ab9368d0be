package k8s

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/config"
)

func parse(data map[string]any) (Config, error) {
	return ParseConfig(config.NewPlugin("WorkloadAttestor", "k8s", data).Data())
}

func TestParseConfig(t *testing.T) {
	c, err := parse(map[string]any{
		"kubelet_secure_port": 10250, "skip_kubelet_verification": true, "kubelet_ca_path": "/ca.crt",
		"token_path": "/var/run/secrets/tokens/spire-agent", "node_name_env": "NODE", "node_name": "n1",
		"max_poll_attempts": 5, "poll_retry_interval": "100ms", "reload_interval": "30s",
		"disable_container_selectors": true, "use_new_container_locator": false, "verbose_container_locator_logs": true,
		"proc_dir": "/host/proc",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Port: 10250, SkipKubeletVerification: true, KubeletCAPath: "/ca.crt", TokenPath: "/var/run/secrets/tokens/spire-agent",
		NodeNameEnv: "NODE", NodeName: "n1", MaxPollAttempts: 5, PollRetryInterval: 100 * time.Millisecond, ReloadInterval: 30 * time.Second,
		DisableContainerSelectors: true, VerboseLocatorLogs: true, ProcDir: "/host/proc"}
	if c.Getenv != nil || c.Log != nil {
		t.Fatal("funcs set")
	}
	if c.Port != want.Port || c.SkipKubeletVerification != want.SkipKubeletVerification || c.KubeletCAPath != want.KubeletCAPath ||
		c.TokenPath != want.TokenPath || c.NodeNameEnv != want.NodeNameEnv || c.NodeName != want.NodeName ||
		c.MaxPollAttempts != 5 || c.PollRetryInterval != want.PollRetryInterval || c.ReloadInterval != want.ReloadInterval ||
		!c.DisableContainerSelectors || c.NewLocator || !c.VerboseLocatorLogs || c.ProcDir != "/host/proc" || c.ReadOnly {
		t.Fatalf("%+v", c)
	}
	c, err = parse(map[string]any{"kubelet_read_only_port": 10255, "kubelet_secure_port": 0})
	if err != nil || c.Port != 10255 || !c.ReadOnly || !c.NewLocator {
		t.Fatalf("read-only: %+v, %v", c, err)
	}
	c, err = parse(map[string]any{"certificate_path": "/c.pem", "private_key_path": "/k.pem"})
	if err != nil || c.CertificatePath != "/c.pem" || c.PrivateKeyPath != "/k.pem" || c.Port != 0 {
		t.Fatalf("key pair: %+v, %v", c, err)
	}
	for _, tc := range []struct {
		data map[string]any
		want string
	}{
		{map[string]any{"kubelet_read_only_port": 10255, "kubelet_secure_port": 10250}, "cannot both be set"},
		{map[string]any{"certificate_path": "/c.pem"}, "certificate_path and private_key_path go together"},
		{map[string]any{"private_key_path": "/k.pem"}, "go together"},
		{map[string]any{"use_anonymous_authentication": true, "token_path": "/t"}, "use_anonymous_authentication excludes"},
		{map[string]any{"kubelet_ca_path": "ca.crt"}, `kubelet_ca_path "ca.crt" is not an absolute, clean path`},
		{map[string]any{"kubelet_secure_port": 70000}, "kubelet_secure_port"},
		{map[string]any{"max_poll_attempts": -1}, "max_poll_attempts -1 is not between"},
		{map[string]any{"poll_retry_interval": "soon"}, "poll_retry_interval"},
		{map[string]any{"reload_interval": "-1s"}, "reload_interval -1s is negative"},
		{map[string]any{"sigstore": map[string]any{"rekor_url": "x"}}, "unsupported"},
		{map[string]any{"enable_namespace_labels": true}, "unsupported"},
		{map[string]any{"disable_kubelet_client": true}, "unsupported"},
		{map[string]any{"kubelet_port": 10250}, `unknown key "kubelet_port"`},
	} {
		_, err := parse(tc.data)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `WorkloadAttestor "k8s"`) {
			t.Errorf("%v: error %v, want one containing %q", tc.data, err, tc.want)
		}
	}
}

// TestREADMEExample: the README's k8s configuration (section "Kubernetes
// pods (k8s)") parses.
func TestREADMEExample(t *testing.T) {
	readme, err := os.ReadFile("../../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(readme), "#### Kubernetes pods (k8s)\n")
	if !ok {
		t.Fatal("README has no section Kubernetes pods (k8s)")
	}
	_, block, ok := strings.Cut(sec, "```hcl\n")
	if !ok {
		t.Fatal("no hcl block in the section")
	}
	block, _, _ = strings.Cut(block, "```")
	cfg, err := config.ParseAgent("agent.conf", []byte("agent {\n trust_domain = \"example.org\"\n data_dir = \"/tmp/x\"\n server_address = \"s\"\n server_port = 8081\n insecure_bootstrap = true\n}\nplugins {\n"+block+"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig(cfg.Plugins[0].Data())
	if err != nil || c.NodeNameEnv != "MY_NODE_NAME" {
		t.Fatalf("%+v, %v", c, err)
	}
}
