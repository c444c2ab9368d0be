// Package kubeconfig reads how sigil-server reaches a Kubernetes API
// server (a kubeapi.Config): a kubeconfig file, or the in-cluster service
// account of the pod it runs in. It is apart from kubeapi so that
// sigil-agent, which links k8s_psat's package (both halves) but never
// reads a kubeconfig, does not link its YAML decoder: the server's catalog
// hands Loader to k8s_psat.
//
// Of a kubeconfig it supports the current context's cluster server,
// certificate-authority(-data), insecure-skip-tls-verify and
// tls-server-name, and its user's token, tokenFile,
// client-certificate(-data) and client-key(-data), username and password;
// exec and auth-provider credential plugins, impersonation and proxies are
// refused with the reason when the file is loaded. Relative paths are
// relative to the kubeconfig's folder, as kubectl reads them. JSON is
// YAML, so a JSON kubeconfig reads too.
package kubeconfig

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/kubeapi"
)

// maxKubeconfigSize bounds a kubeconfig file.
const maxKubeconfigSize = 1 << 20

// kubeconfig is the part of a kubeconfig file (clientcmd's v1 Config) that
// is read; the fields Sigil refuses are decoded to say so.
type kubeconfig struct {
	CurrentContext string `yaml:"current-context"`
	Clusters       []struct {
		Name    string `yaml:"name"`
		Cluster struct {
			Server                   string `yaml:"server"`
			CertificateAuthority     string `yaml:"certificate-authority"`
			CertificateAuthorityData string `yaml:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `yaml:"insecure-skip-tls-verify"`
			TLSServerName            string `yaml:"tls-server-name"`
			ProxyURL                 string `yaml:"proxy-url"`
		} `yaml:"cluster"`
	} `yaml:"clusters"`
	Contexts []struct {
		Name    string `yaml:"name"`
		Context struct {
			Cluster string `yaml:"cluster"`
			User    string `yaml:"user"`
		} `yaml:"context"`
	} `yaml:"contexts"`
	Users []struct {
		Name string `yaml:"name"`
		User struct {
			Token                 string    `yaml:"token"`
			TokenFile             string    `yaml:"tokenFile"`
			ClientCertificate     string    `yaml:"client-certificate"`
			ClientCertificateData string    `yaml:"client-certificate-data"`
			ClientKey             string    `yaml:"client-key"`
			ClientKeyData         string    `yaml:"client-key-data"`
			Username              string    `yaml:"username"`
			Password              string    `yaml:"password"`
			Impersonate           string    `yaml:"as"`
			ImpersonateUID        string    `yaml:"as-uid"`
			ImpersonateGroups     []string  `yaml:"as-groups"`
			AuthProvider          yaml.Node `yaml:"auth-provider"`
			Exec                  yaml.Node `yaml:"exec"`
		} `yaml:"user"`
	} `yaml:"users"`
}

// Loader returns what a kubeapi.Client loads its configuration with: the
// kubeconfig file at path (Load) or, when path is "", the in-cluster
// service account (InCluster).
func Loader(path string) func() (*kubeapi.Config, error) {
	if path == "" {
		return InCluster
	}
	return func() (*kubeapi.Config, error) { return Load(path) }
}

// Load reads a kubeconfig file (YAML or JSON) and the files it names, and
// returns its current context's configuration.
func Load(path string) (*kubeapi.Config, error) {
	data, err := kubeapi.ReadFile(path, maxKubeconfigSize)
	if err != nil {
		return nil, err
	}
	c, err := parseKubeconfig(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return c, nil
}

func parseKubeconfig(data []byte, dir string) (*kubeapi.Config, error) {
	var kc kubeconfig
	if err := yaml.Unmarshal(data, &kc); err != nil {
		return nil, fmt.Errorf("not a kubeconfig: %s", clip.Cut(err.Error(), 120))
	}
	if kc.CurrentContext == "" {
		return nil, errors.New("no current-context")
	}
	var clusterName, userName string
	found := false
	for _, c := range kc.Contexts {
		if c.Name == kc.CurrentContext {
			clusterName, userName, found = c.Context.Cluster, c.Context.User, true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("current-context %s is not among its contexts", clip.Quote(kc.CurrentContext))
	}
	cfg := &kubeapi.Config{}
	found = false
	for _, c := range kc.Clusters {
		if c.Name != clusterName {
			continue
		}
		found = true
		cl := c.Cluster
		if cl.ProxyURL != "" {
			return nil, fmt.Errorf("cluster %s: proxy-url is not supported", clip.Quote(clusterName))
		}
		cfg.Server = cl.Server
		cfg.InsecureSkipTLSVerify = cl.InsecureSkipTLSVerify
		cfg.TLSServerName = cl.TLSServerName
		ca, err := dataOrFile(cl.CertificateAuthorityData, cl.CertificateAuthority, dir, "certificate-authority")
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", clip.Quote(clusterName), err)
		}
		cfg.CAPEM = ca
		break
	}
	if !found {
		return nil, fmt.Errorf("cluster %s of context %s is not among its clusters", clip.Quote(clusterName), clip.Quote(kc.CurrentContext))
	}
	if err := checkServer(cfg.Server); err != nil {
		return nil, fmt.Errorf("cluster %s: %w", clip.Quote(clusterName), err)
	}
	if userName == "" {
		return cfg, nil
	}
	found = false
	for _, u := range kc.Users {
		if u.Name != userName {
			continue
		}
		found = true
		us := u.User
		switch {
		case !us.Exec.IsZero():
			return nil, fmt.Errorf("user %s: exec credential plugins are not supported: give a token, tokenFile or client certificate", clip.Quote(userName))
		case !us.AuthProvider.IsZero():
			return nil, fmt.Errorf("user %s: auth-provider is not supported: give a token, tokenFile or client certificate", clip.Quote(userName))
		case us.Impersonate != "" || us.ImpersonateUID != "" || len(us.ImpersonateGroups) > 0:
			return nil, fmt.Errorf("user %s: impersonation (as, as-uid, as-groups) is not supported", clip.Quote(userName))
		}
		cfg.Token, cfg.Username, cfg.Password = us.Token, us.Username, us.Password
		if us.TokenFile != "" {
			cfg.TokenFile = resolve(dir, us.TokenFile)
		}
		cert, err := dataOrFile(us.ClientCertificateData, us.ClientCertificate, dir, "client-certificate")
		if err != nil {
			return nil, fmt.Errorf("user %s: %w", clip.Quote(userName), err)
		}
		key, err := dataOrFile(us.ClientKeyData, us.ClientKey, dir, "client-key")
		if err != nil {
			return nil, fmt.Errorf("user %s: %w", clip.Quote(userName), err)
		}
		if (cert == nil) != (key == nil) {
			return nil, fmt.Errorf("user %s: a client certificate needs its key and a key its certificate", clip.Quote(userName))
		}
		cfg.CertPEM, cfg.KeyPEM = cert, key
		break
	}
	if !found {
		return nil, fmt.Errorf("user %s of context %s is not among its users", clip.Quote(userName), clip.Quote(kc.CurrentContext))
	}
	return cfg, nil
}

func checkServer(server string) error {
	if server == "" {
		return errors.New("no server")
	}
	u, err := url.Parse(server)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("server %s is not an http(s)://host[:port] URL", clip.Quote(server))
	}
	return nil
}

// dataOrFile returns the base64-decoded data, or else the named file's
// contents (nil when neither is set).
func dataOrFile(data, file, dir, key string) ([]byte, error) {
	if data != "" {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(data))
		if err != nil {
			return nil, fmt.Errorf("%s-data is not base64: %w", key, err)
		}
		return b, nil
	}
	if file == "" {
		return nil, nil
	}
	b, err := kubeapi.ReadFile(resolve(dir, file), kubeapi.MaxCredentialSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return b, nil
}

func resolve(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// inClusterDir holds a pod's service-account token and the cluster's CA
// (a variable for tests).
var inClusterDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// InCluster returns the configuration of a process running in a pod: the
// API server at $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, the
// pod's service-account token (read at each request: the kubelet rotates
// it) and the cluster's CA.
func InCluster() (*kubeapi.Config, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT unset)")
	}
	token := filepath.Join(inClusterDir, "token")
	if _, err := kubeapi.ReadFile(token, kubeapi.MaxCredentialSize); err != nil {
		return nil, fmt.Errorf("in-cluster service account: %w", err)
	}
	ca, err := kubeapi.ReadFile(filepath.Join(inClusterDir, "ca.crt"), kubeapi.MaxCredentialSize)
	if err != nil {
		return nil, fmt.Errorf("in-cluster service account: %w", err)
	}
	return &kubeapi.Config{Server: "https://" + net.JoinHostPort(host, port), CAPEM: ca, TokenFile: token}, nil
}
