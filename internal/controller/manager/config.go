package manager

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/sigil-spiffe/sigil/internal/controller/reconcile"
	"github.com/sigil-spiffe/sigil/internal/controller/render"
)

// FileConfig is sigil-controller's configuration file: spire-controller-
// manager's ControllerManagerConfig (apiVersion spire.spiffe.io/v1alpha1),
// so that its file works unchanged. Unknown keys are refused; the keys of
// features Sigil does not have (the validating webhook, static manifests,
// informer label filters) are refused when they would change behaviour
// and reported by Warnings when they would not.
type FileConfig struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   map[string]any `json:"metadata,omitempty"`

	ClusterName      string   `json:"clusterName"`
	TrustDomain      string   `json:"trustDomain"`
	ClusterDomain    string   `json:"clusterDomain,omitempty"`
	IgnoreNamespaces []string `json:"ignoreNamespaces,omitempty"`
	GCInterval       Duration `json:"gcInterval,omitempty"`
	// SPIREServerSocketPath is the server's admin socket.
	SPIREServerSocketPath string          `json:"spireServerSocketPath,omitempty"`
	LogLevel              string          `json:"logLevel,omitempty"`
	LogEncoding           string          `json:"logEncoding,omitempty"`
	ClassName             string          `json:"className,omitempty"`
	WatchClassless        bool            `json:"watchClassless,omitempty"`
	ParentIDTemplate      string          `json:"parentIDTemplate,omitempty"`
	EntryIDPrefix         string          `json:"entryIDPrefix,omitempty"`
	Reconcile             *ReconcileFlags `json:"reconcile,omitempty"`

	// TrustBundleConfigMap (a Sigil extension) publishes the server's
	// trust bundle (PEM) into a ConfigMap for agents to bootstrap from.
	TrustBundleConfigMap *TrustBundleConfigMap `json:"trustBundleConfigMap,omitempty"`

	LeaderElection *LeaderElection `json:"leaderElection,omitempty"`
	Health         *Health         `json:"health,omitempty"`
	Metrics        *Metrics        `json:"metrics,omitempty"`

	// Accepted for compatibility, without effect (Warnings says so).
	ValidatingWebhookConfigurationName string          `json:"validatingWebhookConfigurationName,omitempty"`
	Webhook                            json.RawMessage `json:"webhook,omitempty"`
	GRPC                               json.RawMessage `json:"grpc,omitempty"`
	// Refused when set (Check says why).
	StaticManifestPath           *string         `json:"staticManifestPath,omitempty"`
	ClusterSPIFFEIDLabelSelector json.RawMessage `json:"clusterSPIFFEIDLabelSelector,omitempty"`
	FilterByClassName            bool            `json:"filterByClassName,omitempty"`
}

// ReconcileFlags says which resources are reconciled (all when the
// section is missing).
type ReconcileFlags struct {
	ClusterSPIFFEIDs             bool `json:"clusterSPIFFEIDs"`
	ClusterFederatedTrustDomains bool `json:"clusterFederatedTrustDomains"`
	ClusterStaticEntries         bool `json:"clusterStaticEntries"`
}

// TrustBundleConfigMap is where the trust bundle is published.
type TrustBundleConfigMap struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Key       string `json:"key,omitempty"` // default bundle.crt
}

// LeaderElection is controller-runtime's leader election section.
type LeaderElection struct {
	LeaderElect       bool     `json:"leaderElect"`
	ResourceName      string   `json:"resourceName,omitempty"`
	ResourceNamespace string   `json:"resourceNamespace,omitempty"`
	ResourceLock      string   `json:"resourceLock,omitempty"`
	LeaseDuration     Duration `json:"leaseDuration,omitempty"`
	RenewDeadline     Duration `json:"renewDeadline,omitempty"`
	RetryPeriod       Duration `json:"retryPeriod,omitempty"`
}

// Health is the health probe section.
type Health struct {
	HealthProbeBindAddress string `json:"healthProbeBindAddress,omitempty"`
	ReadinessEndpointName  string `json:"readinessEndpointName,omitempty"`
	LivenessEndpointName   string `json:"livenessEndpointName,omitempty"`
}

// Metrics is the metrics section.
type Metrics struct {
	BindAddress string `json:"bindAddress,omitempty"`
}

// Duration is a Go duration string in the file ("10s").
type Duration struct{ time.Duration }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration such as \"10s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("negative duration %s", s)
	}
	d.Duration = v
	return nil
}

// Defaults of spire-controller-manager.
var (
	DefaultIgnoreNamespaces = []string{"kube-system", "kube-public", "spire-system"}
	DefaultSocketPath       = "/spire-server/api.sock"
	DefaultGCInterval       = 10 * time.Second
	DefaultLeaderElectionID = "98c9c988.spiffe.io"
)

// LoadConfig reads and checks the configuration file.
func LoadConfig(path string) (*FileConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(b)
}

// ParseConfig parses and checks a configuration file's contents.
func ParseConfig(b []byte) (*FileConfig, error) {
	var c FileConfig
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	if err := c.Check(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Check validates the configuration.
func (c *FileConfig) Check() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.APIVersion != "" && c.APIVersion != "spire.spiffe.io/v1alpha1" {
		bad("apiVersion %q: want spire.spiffe.io/v1alpha1", c.APIVersion)
	}
	if c.Kind != "" && c.Kind != "ControllerManagerConfig" {
		bad("kind %q: want ControllerManagerConfig", c.Kind)
	}
	if c.ClusterName == "" {
		bad("clusterName is required")
	}
	if c.TrustDomain == "" {
		bad("trustDomain is required")
	} else if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		bad("trustDomain: %v", err)
	}
	for i, ns := range c.IgnoreNamespaces {
		if _, err := regexp.Compile(ns); err != nil {
			bad("ignoreNamespaces[%d]: %v", i, err)
		}
	}
	if _, err := render.ParseParentIDTemplate(c.ParentIDTemplate); err != nil {
		bad("parentIDTemplate: %v", err)
	}
	if c.WatchClassless && c.ClassName == "" {
		bad("watchClassless needs className")
	}
	switch c.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		bad("logLevel %q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogEncoding {
	case "", "console", "json":
	default:
		bad("logEncoding %q: want console or json", c.LogEncoding)
	}
	if c.StaticManifestPath != nil {
		bad("staticManifestPath: static mode is not supported by sigil-controller (apply the manifests to the cluster, or create the entries with sigil-server entry create)")
	}
	if len(c.ClusterSPIFFEIDLabelSelector) > 0 || c.FilterByClassName {
		bad("clusterSPIFFEIDLabelSelector and filterByClassName are not supported: className alone selects the resources")
	}
	if b := c.TrustBundleConfigMap; b != nil && (b.Namespace == "" || b.Name == "") {
		bad("trustBundleConfigMap needs namespace and name")
	}
	if le := c.LeaderElection; le != nil {
		switch le.ResourceLock {
		case "", "leases":
		default:
			bad("leaderElection.resourceLock %q: only leases", le.ResourceLock)
		}
	}
	return errors.Join(errs...)
}

// Warnings are the keys accepted without effect.
func (c *FileConfig) Warnings() []string {
	var w []string
	if c.ValidatingWebhookConfigurationName != "" || len(c.Webhook) > 0 {
		w = append(w, "validatingWebhookConfigurationName and webhook are ignored: sigil-controller has no admission webhook; invalid resources are reported in their status and events")
	}
	if len(c.GRPC) > 0 {
		w = append(w, "grpc is ignored")
	}
	return w
}

// ReconcileConfig is what the reconciler renders with. clusterDomain,
// when unset, is detected as spire-controller-manager does (the CNAME of
// kubernetes.default.svc), else cluster.local.
func (c *FileConfig) ReconcileConfig(lookupCNAME func(string) (string, error)) (reconcile.Config, error) {
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil {
		return reconcile.Config{}, fmt.Errorf("trustDomain: %w", err)
	}
	parent, err := render.ParseParentIDTemplate(c.ParentIDTemplate)
	if err != nil {
		return reconcile.Config{}, fmt.Errorf("parentIDTemplate: %w", err)
	}
	ignore := c.IgnoreNamespaces
	if ignore == nil {
		ignore = DefaultIgnoreNamespaces
	}
	var res []*regexp.Regexp
	for i, ns := range ignore {
		re, err := regexp.Compile(ns)
		if err != nil {
			return reconcile.Config{}, fmt.Errorf("ignoreNamespaces[%d]: %w", i, err)
		}
		res = append(res, re)
	}
	domain := c.ClusterDomain
	if domain == "" && lookupCNAME != nil {
		domain = detectClusterDomain(lookupCNAME)
	}
	if domain == "" {
		domain = "cluster.local"
	}
	return reconcile.Config{
		TrustDomain:      td,
		ClusterName:      c.ClusterName,
		ClusterDomain:    domain,
		ParentID:         parent,
		IgnoreNamespaces: res,
		ClassName:        c.ClassName,
		WatchClassless:   c.WatchClassless || c.ClassName == "",
		EntryIDPrefix:    c.EntryIDPrefix,
	}, nil
}

// detectClusterDomain: kubernetes.default.svc's canonical name is
// kubernetes.default.svc.<cluster domain>.
func detectClusterDomain(lookupCNAME func(string) (string, error)) string {
	cname, err := lookupCNAME("kubernetes.default.svc")
	if err != nil {
		return ""
	}
	d, ok := strings.CutPrefix(strings.TrimSuffix(cname, "."), "kubernetes.default.svc.")
	if !ok || d == "" {
		return ""
	}
	return d
}

// LookupCNAME is net.LookupCNAME, for ReconcileConfig.
var LookupCNAME = net.LookupCNAME

// Resources says which resources are reconciled.
func (c *FileConfig) Resources() ReconcileFlags {
	if c.Reconcile == nil {
		return ReconcileFlags{ClusterSPIFFEIDs: true, ClusterFederatedTrustDomains: true, ClusterStaticEntries: true}
	}
	return *c.Reconcile
}

// SocketPath is the server's admin socket.
func (c *FileConfig) SocketPath() string {
	if c.SPIREServerSocketPath == "" {
		return DefaultSocketPath
	}
	return c.SPIREServerSocketPath
}

// GC is the interval between untriggered runs.
func (c *FileConfig) GC() time.Duration {
	if c.GCInterval.Duration <= 0 {
		return DefaultGCInterval
	}
	return c.GCInterval.Duration
}
