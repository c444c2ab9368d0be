package chart

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"k8s.io/client-go/rest"

	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/controller/manager"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
)

// The RBAC the chart gives the server's service account is enough for
// sigil-controller: run with that account's token (and the chart's
// controller.yaml), it watches, writes entries, status, events, its
// Lease and the bundle ConfigMap.
func TestChartRBACSufficesForController(t *testing.T) {
	s := kubetest.Shared(t)
	ctx := context.Background()
	objs := decode(t, helmTemplate(t))
	create := func(path string, o object) {
		t.Helper()
		if err := s.Do(ctx, http.MethodPost, path, o, nil); err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("create %s: %v", path, err)
		}
	}
	create("/api/v1/namespaces", object{"metadata": object{"name": "spire-system"}})
	var ctrlYAML string
	for _, o := range objs {
		kind, name := str(o, "kind"), str(o, "metadata", "name")
		switch {
		case kind == "CustomResourceDefinition",
			(kind == "ServiceAccount" || kind == "ClusterRole" || kind == "ClusterRoleBinding" || kind == "Role" || kind == "RoleBinding") && name == "sigil-server":
			r := resource[kind]
			path := r.group
			if r.namespaced {
				path += "/namespaces/spire-system"
			}
			create(path+"/"+r.plural, o)
		case kind == "ConfigMap" && name == "sigil-server":
			ctrlYAML = str(o, "data", "controller.yaml")
		}
	}
	token := s.TokenRequest(t, "spire-system", "sigil-server", kubetest.TokenOptions{})
	// The authorizer learns of the bindings through a watch: wait until
	// the account may list ClusterSPIFFEIDs and update its Lease.
	for _, attr := range []object{
		{"group": "spire.spiffe.io", "resource": "clusterspiffeids", "verb": "list"},
		{"group": "coordination.k8s.io", "resource": "leases", "verb": "update", "namespace": "spire-system"},
	} {
		sar := object{"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": object{
			"user": "system:serviceaccount:spire-system:sigil-server", "groups": []string{"system:serviceaccounts", "system:authenticated"},
			"resourceAttributes": attr,
		}}
		err := testutil.Poll(30*time.Second, 20*time.Millisecond, func() (bool, error) {
			var out struct {
				Status struct{ Allowed bool } `json:"status"`
			}
			err := s.Do(ctx, http.MethodPost, "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar, &out)
			return out.Status.Allowed, err
		})
		if err != nil {
			t.Fatalf("the chart's RBAC never allowed %v: %v", attr, err)
		}
	}

	fc, err := manager.ParseConfig([]byte(ctrlYAML))
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString(fc.TrustDomain)
	dir := testutil.ShortTempDir(t)
	scfg := inproc.ServerConfig(td, filepath.Join(dir, "data"), filepath.Join(dir, "api.sock"), 0)
	srv := inproc.RunServer(t, scfg, nil, serverapp.Options{})
	admin := srv.Admin(t)
	opts, err := fc.OptionsFrom(&rest.Config{Host: s.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: s.CAPEM}})
	if err != nil {
		t.Fatal(err)
	}
	opts.HealthProbeBindAddress = "0" // the chart's port may be taken here
	opts.Controller.Entries = admin.Entry
	opts.Controller.TrustDomains = trustdomainv1.NewTrustDomainClient(admin.Conn)
	opts.Controller.Bundle = admin.Client
	var log lockedLog
	opts.Controller.Log = log.logger()
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- manager.Run(runCtx, opts) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
		if t.Failed() {
			t.Logf("controller log:\n%s", log.String())
		}
	}()

	// A ClusterSPIFFEID and a pod on a node: the entry appears, the
	// status is written (and events, for the resource that fails).
	ns := s.Namespace(t)
	s.ServiceAccount(t, ns, "web")
	node := s.Node(t, kubetest.NodeSpec{})
	name := kubetest.Name("csid")
	create("/apis/spire.spiffe.io/v1alpha1/clusterspiffeids", object{
		"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID", "metadata": object{"name": name},
		"spec": object{"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
			"namespaceSelector": object{"matchNames": []string{ns}}},
	})
	t.Cleanup(func() {
		_ = s.Do(ctx, http.MethodDelete, "/apis/spire.spiffe.io/v1alpha1/clusterspiffeids/"+name, nil, nil)
	})
	s.Pod(t, kubetest.PodSpec{Namespace: ns, ServiceAccount: "web", NodeName: node.Name()})
	want := "spiffe://" + td.Name() + "/ns/" + ns + "/sa/web"
	err = testutil.Poll(30*time.Second, 20*time.Millisecond, func() (bool, error) {
		for _, e := range admin.ListEntries(t) {
			if testutil.IDString(e.SpiffeId) == want && testutil.IDString(e.ParentId) == "spiffe://"+td.Name()+"/spire/agent/k8s_psat/"+fc.ClusterName+"/"+node.UID() {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no entry %s: %v", want, err)
	}
	err = testutil.Poll(30*time.Second, 20*time.Millisecond, func() (bool, error) {
		var o object
		if err := s.Do(ctx, http.MethodGet, "/apis/spire.spiffe.io/v1alpha1/clusterspiffeids/"+name, nil, &o); err != nil {
			return false, err
		}
		st, _ := o["status"].(map[string]any)
		conds, _ := st["conditions"].([]any)
		for _, c := range conds {
			if m, _ := c.(map[string]any); m["type"] == "Ready" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Errorf("status not written with the chart's RBAC: %v", err)
	}
	err = testutil.Poll(30*time.Second, 20*time.Millisecond, func() (bool, error) {
		var cm object
		err := s.Do(ctx, http.MethodGet, "/api/v1/namespaces/spire-system/configmaps/sigil-bundle", nil, &cm)
		if kubetest.IsNotFound(err) {
			return false, nil
		}
		return strings.Contains(str(cm, "data", "bundle.crt"), "BEGIN CERTIFICATE"), err
	})
	if err != nil {
		t.Errorf("bundle ConfigMap not published with the chart's RBAC: %v", err)
	}
	if strings.Contains(log.String(), "forbidden") {
		t.Errorf("the controller was refused something:\n%s", log.String())
	}
}

// lockedLog keeps the controller's log for the end of the test.
type lockedLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *lockedLog) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }
