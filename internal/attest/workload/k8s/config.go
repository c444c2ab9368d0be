package k8s

import (
	"path/filepath"
	"time"

	"github.com/sigil-spiffe/sigil/internal/config"
)

// Defaults of Config, SPIRE's.
const (
	DefaultSecurePort        = 10250
	DefaultKubeletCAPath     = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	DefaultTokenPath         = "/var/run/secrets/kubernetes.io/serviceaccount/token" //nolint:gosec // a path
	DefaultNodeNameEnv       = "MY_NODE_NAME"
	DefaultMaxPollAttempts   = 60
	DefaultPollRetryInterval = 500 * time.Millisecond
	DefaultReloadInterval    = time.Minute
	DefaultRequestTimeout    = 5 * time.Second
)

// ParseConfig reads WorkloadAttestor "k8s"'s plugin_data, SPIRE's keys:
//
//	kubelet_secure_port             HTTPS port of the kubelet (default 10250)
//	kubelet_read_only_port          plain-HTTP read-only port (10255); excludes kubelet_secure_port
//	skip_kubelet_verification       do not verify the kubelet's certificate
//	kubelet_ca_path                 CA of the kubelet's certificate (default: the service account's ca.crt)
//	token_path                      bearer token for the secure port (default: the service account's token)
//	certificate_path, private_key_path   a client certificate instead of the token (both or neither)
//	use_anonymous_authentication    no credentials at all
//	node_name, node_name_env        the kubelet's host: node_name, else $node_name_env (default MY_NODE_NAME), else 127.0.0.1
//	max_poll_attempts               tries for a container the kubelet does not list yet (default 60)
//	poll_retry_interval             between tries (default 500ms)
//	reload_interval                 how often the CA, token and client key pair are re-read (default 1m)
//	disable_container_selectors     pod selectors only (also for a container not listed yet)
//	use_new_container_locator       default true; false: SPIRE's legacy cgroup-path patterns
//	verbose_container_locator_logs  default false
//
// and Sigil's proc_dir (default /proc). SPIRE's sigstore, experimental,
// enable_namespace_labels (they need the API server, which the agent does
// not talk to) and disable_kubelet_client (only for the experimental
// broker) are refused by name.
func ParseConfig(d *config.PluginData) (Config, error) {
	var c Config
	d.Unsupported("sigstore", "experimental", "enable_namespace_labels", "disable_kubelet_client")
	var secure, readOnly int
	hasSecure := d.Port("kubelet_secure_port", &secure)
	hasRO := d.Port("kubelet_read_only_port", &readOnly)
	switch {
	case hasSecure && hasRO && secure > 0 && readOnly > 0:
		d.Errorf("kubelet_read_only_port", "kubelet_read_only_port and kubelet_secure_port cannot both be set (as in SPIRE): the kubelet is asked on one port")
	case readOnly > 0:
		c.Port, c.ReadOnly = readOnly, true
	case secure > 0:
		c.Port = secure
	}
	d.Bool("skip_kubelet_verification", &c.SkipKubeletVerification)
	for _, k := range []struct {
		key string
		dst *string
	}{
		{"kubelet_ca_path", &c.KubeletCAPath},
		{"token_path", &c.TokenPath},
		{"certificate_path", &c.CertificatePath},
		{"private_key_path", &c.PrivateKeyPath},
		{"proc_dir", &c.ProcDir},
	} {
		if d.String(k.key, k.dst) && (!filepath.IsAbs(*k.dst) || filepath.Clean(*k.dst) != *k.dst) {
			d.Errorf(k.key, "%s %q is not an absolute, clean path", k.key, *k.dst)
		}
	}
	d.Bool("use_anonymous_authentication", &c.Anonymous)
	switch {
	case (c.CertificatePath == "") != (c.PrivateKeyPath == ""):
		key := "certificate_path"
		if c.CertificatePath == "" {
			key = "private_key_path"
		}
		d.Errorf(key, "certificate_path and private_key_path go together: the kubelet client certificate needs its key")
	case c.Anonymous && (c.CertificatePath != "" || c.TokenPath != ""):
		d.Errorf("use_anonymous_authentication", "use_anonymous_authentication excludes token_path, certificate_path and private_key_path")
	}
	d.String("node_name", &c.NodeName)
	d.String("node_name_env", &c.NodeNameEnv)
	var attempts int64
	if d.Int("max_poll_attempts", &attempts) {
		if attempts < 0 || attempts > 10000 {
			d.Errorf("max_poll_attempts", "max_poll_attempts %d is not between 0 (the default, 60) and 10000", attempts)
		}
		c.MaxPollAttempts = int(attempts)
	}
	for _, k := range []struct {
		key string
		dst *time.Duration
	}{{"poll_retry_interval", &c.PollRetryInterval}, {"reload_interval", &c.ReloadInterval}} {
		if d.Duration(k.key, k.dst) && *k.dst < 0 {
			d.Errorf(k.key, "%s %s is negative", k.key, *k.dst)
		}
	}
	d.Bool("disable_container_selectors", &c.DisableContainerSelectors)
	c.NewLocator = true
	d.Bool("use_new_container_locator", &c.NewLocator)
	d.Bool("verbose_container_locator_logs", &c.VerboseLocatorLogs)
	return c, d.Done()
}
