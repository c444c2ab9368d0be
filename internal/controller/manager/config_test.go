package manager

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// spire-controller-manager's sample configuration (its Helm chart's shape)
// loads unchanged.
func TestConfigSPIREControllerManagerFile(t *testing.T) {
	c, err := ParseConfig([]byte(`apiVersion: spire.spiffe.io/v1alpha1
kind: ControllerManagerConfig
metadata:
  name: config
metrics:
  bindAddress: 127.0.0.1:8082
health:
  healthProbeBindAddress: 0.0.0.0:8083
leaderElection:
  leaderElect: true
  resourceName: 98c9c988.spiffe.io
  resourceNamespace: spire-system
validatingWebhookConfigurationName: spire-controller-manager-webhook
clusterName: demo-cluster
trustDomain: example.org
ignoreNamespaces:
  - kube-system
  - kube-public
  - spire-system
  - local-path-storage
gcInterval: 30s
spireServerSocketPath: /tmp/spire-server/private/api.sock
entryIDPrefix: scm
className: scm
watchClassless: true
logLevel: debug
`))
	if err != nil {
		t.Fatal(err)
	}
	o, err := c.OptionsFrom(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !o.LeaderElection || o.LeaderElectionID != "98c9c988.spiffe.io" || o.LeaderElectionNamespace != "spire-system" ||
		o.HealthProbeBindAddress != "0.0.0.0:8083" || o.MetricsBindAddress != "127.0.0.1:8082" {
		t.Errorf("manager options %+v", o)
	}
	r := o.Controller.Reconcile
	if r.TrustDomain.Name() != "example.org" || r.ClusterName != "demo-cluster" || r.EntryIDPrefix != "scm" || r.ClassName != "scm" || !r.WatchClassless ||
		!r.Ignored("local-path-storage") || r.Ignored("default") || o.Controller.GCInterval != 30*time.Second ||
		!o.Controller.ClusterSPIFFEIDs || !o.Controller.ClusterStaticEntries || !o.Controller.ClusterFederatedTrustDomains {
		t.Errorf("controller config %+v", o.Controller)
	}
	if c.SocketPath() != "/tmp/spire-server/private/api.sock" {
		t.Errorf("socket %s", c.SocketPath())
	}
	if w := c.Warnings(); len(w) != 1 || !strings.Contains(w[0], "validatingWebhookConfigurationName") {
		t.Errorf("warnings %q", w)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"trustDomain: example.org\n", "clusterName is required"},
		{"clusterName: c\ntrustDomain: Example Org\n", "trustDomain: "},
		{"clusterName: c\ntrustDomain: example.org\nnoSuchKey: 1\n", `unknown field "noSuchKey"`},
		{"clusterName: c\ntrustDomain: example.org\nstaticManifestPath: /m\n", "staticManifestPath: static mode is not supported"},
		{"clusterName: c\ntrustDomain: example.org\nignoreNamespaces: ['(']\n", "ignoreNamespaces[0]: "},
		{"clusterName: c\ntrustDomain: example.org\ngcInterval: soon\n", `invalid duration "soon"`},
		{"clusterName: c\ntrustDomain: example.org\nparentIDTemplate: '{{ .Bad'\n", "parentIDTemplate: "},
		{"clusterName: c\ntrustDomain: example.org\nkind: Other\n", `kind "Other"`},
	} {
		_, err := ParseConfig([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to contain %q", tc.yaml, err, tc.want)
		}
	}
}

// clusterDomain unset: detected from kubernetes.default.svc's canonical
// name, as spire-controller-manager does, else cluster.local.
func TestConfigClusterDomain(t *testing.T) {
	c := &FileConfig{ClusterName: "c", TrustDomain: "example.org"}
	for _, tc := range []struct {
		cname string
		err   error
		want  string
	}{
		{"kubernetes.default.svc.corp.internal.", nil, "corp.internal"},
		{"", errors.New("no such host"), "cluster.local"},
		{"elsewhere.example.", nil, "cluster.local"},
	} {
		r, err := c.ReconcileConfig(func(string) (string, error) { return tc.cname, tc.err })
		if err != nil {
			t.Fatal(err)
		}
		if r.ClusterDomain != tc.want {
			t.Errorf("CNAME %q: cluster domain %q, want %q", tc.cname, r.ClusterDomain, tc.want)
		}
	}
}
