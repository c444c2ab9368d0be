package kubeconfig

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/kubeapi"
)

func writeFile(t *testing.T, path, data string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const kubeconfigHead = `apiVersion: v1
kind: Config
current-context: ctx
contexts:
- name: other
  context: {cluster: nope, user: nope}
- name: ctx
  context:
    cluster: c
    user: u
clusters:
- name: c
  cluster:
`

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "ca.crt"), "CA PEM")
	writeFile(t, filepath.Join(dir, "u.crt"), "CERT PEM")
	writeFile(t, filepath.Join(dir, "u.key"), "KEY PEM")
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

	for _, tc := range []struct {
		name, text string
		want       kubeapi.Config
	}{
		{"token and relative files", kubeconfigHead + `    server: https://10.0.0.1:6443
    certificate-authority: ca.crt
    tls-server-name: kubernetes
users:
- name: u
  user:
    token: abc
    client-certificate: u.crt
    client-key: ` + filepath.Join(dir, "u.key") + `
`, kubeapi.Config{Server: "https://10.0.0.1:6443", CAPEM: []byte("CA PEM"), TLSServerName: "kubernetes", Token: "abc", CertPEM: []byte("CERT PEM"), KeyPEM: []byte("KEY PEM")}},
		{"inline data, tokenFile", kubeconfigHead + `    server: https://api.example:443
    certificate-authority-data: ` + b64("CA DATA") + `
users:
- name: u
  user:
    tokenFile: tok
    client-certificate-data: ` + b64("CERT DATA") + `
    client-key-data: ` + b64("KEY DATA") + `
`, kubeapi.Config{Server: "https://api.example:443", CAPEM: []byte("CA DATA"), TokenFile: filepath.Join(dir, "tok"), CertPEM: []byte("CERT DATA"), KeyPEM: []byte("KEY DATA")}},
		{"insecure, basic", kubeconfigHead + `    server: https://h
    insecure-skip-tls-verify: true
users:
- name: u
  user: {username: admin, password: secret}
`, kubeapi.Config{Server: "https://h", InsecureSkipTLSVerify: true, Username: "admin", Password: "secret"}},
		{"JSON", `{"current-context": "x", "contexts": [{"name": "x", "context": {"cluster": "c"}}],
 "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:8080"}}]}`, kubeapi.Config{Server: "http://127.0.0.1:8080"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(writeFile(t, filepath.Join(dir, "kubeconfig"), tc.text))
			if err != nil {
				t.Fatal(err)
			}
			if c.Server != tc.want.Server || string(c.CAPEM) != string(tc.want.CAPEM) || c.TLSServerName != tc.want.TLSServerName ||
				c.InsecureSkipTLSVerify != tc.want.InsecureSkipTLSVerify || c.Token != tc.want.Token || c.TokenFile != tc.want.TokenFile ||
				string(c.CertPEM) != string(tc.want.CertPEM) || string(c.KeyPEM) != string(tc.want.KeyPEM) ||
				c.Username != tc.want.Username || c.Password != tc.want.Password {
				t.Fatalf("got %+v\nwant %+v", c, tc.want)
			}
		})
	}
}

func TestLoadKubeconfigRefuses(t *testing.T) {
	dir := t.TempDir()
	server := "    server: https://h:6443\n"
	for _, tc := range []struct {
		text, want string
	}{
		{"", "no current-context"},
		{"{{{", "not a kubeconfig"},
		{"current-context: zz\n", `current-context "zz" is not among its contexts`},
		{kubeconfigHead + "    server: ftp://h\n", `server "ftp://h" is not an http(s)://host[:port] URL`},
		{kubeconfigHead + "    server: https://h\n    proxy-url: http://p\n", "proxy-url is not supported"},
		{kubeconfigHead + server + "    certificate-authority: missing.crt\n", "certificate-authority: open " + filepath.Join(dir, "missing.crt")},
		{kubeconfigHead + server + "    certificate-authority-data: '%%%'\n", "certificate-authority-data is not base64"},
		{strings.Replace(kubeconfigHead, "cluster: c\n", "cluster: gone\n", 1) + server, `cluster "gone" of context "ctx" is not among its clusters`},
		{kubeconfigHead + server + "users: []\n", `user "u" of context "ctx" is not among its users`},
		{kubeconfigHead + server + "users:\n- name: u\n  user:\n    exec:\n      command: aws\n", "exec credential plugins are not supported"},
		{kubeconfigHead + server + "users:\n- name: u\n  user:\n    auth-provider:\n      name: gcp\n", "auth-provider is not supported"},
		{kubeconfigHead + server + "users:\n- name: u\n  user:\n    as: root\n", "impersonation"},
		{kubeconfigHead + server + "users:\n- name: u\n  user:\n    client-certificate-data: " + base64.StdEncoding.EncodeToString([]byte("x")) + "\n", "a client certificate needs its key"},
	} {
		_, err := Load(writeFile(t, filepath.Join(dir, "kubeconfig"), tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.text, err, tc.want)
		}
	}
	if _, err := Load(filepath.Join(dir, "none")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("a missing kubeconfig: %v", err)
	}
}

func TestInCluster(t *testing.T) {
	dir := t.TempDir()
	old := inClusterDir
	inClusterDir = dir
	t.Cleanup(func() { inClusterDir = old })
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	if _, err := InCluster(); err == nil || !strings.Contains(err.Error(), "not running in a Kubernetes pod") {
		t.Fatalf("outside a pod: %v", err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	if _, err := InCluster(); err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("without a token: %v", err)
	}
	writeFile(t, filepath.Join(dir, "token"), "tok")
	writeFile(t, filepath.Join(dir, "ca.crt"), "CA")
	c, err := InCluster()
	if err != nil {
		t.Fatal(err)
	}
	if c.Server != "https://[fd00::1]:443" || string(c.CAPEM) != "CA" || c.TokenFile != filepath.Join(dir, "token") || c.Token != "" {
		t.Fatalf("%+v", c)
	}
}
