package manager

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/controller/api/v1alpha1"
	"github.com/sigil-spiffe/sigil/internal/controller/crds"
	"github.com/sigil-spiffe/sigil/internal/controller/reconcile"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// One etcd + kube-apiserver for the whole test binary; tests keep apart
// by className, namespaces and unique names.
func TestMain(m *testing.M) {
	// Once, before any test: the libraries' process-wide loggers (their
	// setters race with logging; each test keeps its controller's own log).
	SetProcessLoggers(slog.New(slog.DiscardHandler))
	os.Exit(kubetest.Main(m))
}

const waitFor = 30 * time.Second

// cluster is the shared API server with the CRDs applied, and a client.
type cluster struct {
	*kubetest.Server
	rest   *rest.Config
	client client.Client
}

var crdOnce struct {
	sync.Once
	err error
}

func newCluster(t testing.TB) *cluster {
	t.Helper()
	s := kubetest.Shared(t)
	rc := &rest.Config{Host: s.URL, BearerToken: s.Token, TLSClientConfig: rest.TLSClientConfig{CAData: s.CAPEM}, QPS: 500, Burst: 1000}
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	if err := eventsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	k := &cluster{Server: s, rest: rc, client: c}
	crdOnce.Do(func() { crdOnce.err = k.applyCRDs() })
	if crdOnce.err != nil {
		t.Fatal(crdOnce.err)
	}
	return k
}

// applyCRDs creates the CRDs and waits until they are established.
func (k *cluster) applyCRDs() error {
	ctx := context.Background()
	for _, f := range crds.Files() {
		objs, err := decodeYAML(f.YAML)
		if err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		for _, o := range objs {
			if err := k.client.Create(ctx, o); err != nil {
				return fmt.Errorf("%s: %w", f.Name, err)
			}
			name := o.GetName()
			err := testutil.Poll(waitFor, 20*time.Millisecond, func() (bool, error) {
				var crd unstructured.Unstructured
				crd.SetAPIVersion("apiextensions.k8s.io/v1")
				crd.SetKind("CustomResourceDefinition")
				if err := k.client.Get(ctx, client.ObjectKey{Name: name}, &crd); err != nil {
					return false, err
				}
				conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
				for _, c := range conds {
					m, _ := c.(map[string]any)
					if m["type"] == "Established" && m["status"] == "True" {
						return true, nil
					}
				}
				return false, nil
			})
			if err != nil {
				return fmt.Errorf("CRD %s not established: %w", name, err)
			}
		}
	}
	// The client's REST mapper learns the new kinds lazily; a list of each
	// proves they are served.
	for _, l := range []client.ObjectList{&v1alpha1.ClusterSPIFFEIDList{}, &v1alpha1.ClusterStaticEntryList{}, &v1alpha1.ClusterFederatedTrustDomainList{}} {
		if err := testutil.Poll(waitFor, 20*time.Millisecond, func() (bool, error) { return k.client.List(ctx, l) == nil, nil }); err != nil {
			return fmt.Errorf("list %T: %w", l, err)
		}
	}
	return nil
}

// decodeYAML splits a multi-document YAML file into objects.
func decodeYAML(b []byte) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(j)) == 0 || string(bytes.TrimSpace(j)) == "null" {
			continue
		}
		var u unstructured.Unstructured
		if err := u.UnmarshalJSON(j); err != nil {
			return nil, err
		}
		out = append(out, &u)
	}
}

// env is a sigil-server and a sigil-controller against the shared API
// server, reconciling the resources of its own class.
type env struct {
	*cluster
	t      *testing.T
	td     spiffeid.TrustDomain
	server *inproc.Server
	admin  *testutil.Admin
	class  string
	opts   envOptions
	syncs  chan reconcile.Result
	stop   func()
}

type envOptions struct {
	td        string
	classless bool // reconcile resources without a className (the seeds')
	prefix    string
	// noController: the test starts its controllers (startController).
	noController bool
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	k := newCluster(t)
	if o.td == "" {
		o.td = "example.org"
	}
	td := spiffeid.RequireTrustDomainFromString(o.td)
	dir := testutil.ShortTempDir(t)
	scfg := inproc.ServerConfig(td, filepath.Join(dir, "data"), filepath.Join(dir, "api.sock"), 0)
	srv := inproc.RunServer(t, scfg, nil, serverapp.Options{})
	admin := srv.Admin(t)
	e := &env{cluster: k, t: t, td: td, server: srv, admin: admin}
	if !o.classless {
		e.class = kubetest.Name("class")
	}
	e.opts = o
	if !o.noController {
		e.syncs, e.stop = e.startController(nil)
	}
	return e
}

// startController runs a controller of the env's class against its
// server; edit may change its options. It returns the channel its runs
// report to and its stop function (also called on cleanup).
func (e *env) startController(edit func(*Options)) (chan reconcile.Result, func()) {
	t := e.t
	t.Helper()
	fc := &FileConfig{ClusterName: "demo", TrustDomain: e.td.Name(), ClusterDomain: "cluster.local", ClassName: e.class, EntryIDPrefix: e.opts.prefix, IgnoreNamespaces: []string{"^kube-system$"}}
	if err := fc.Check(); err != nil {
		t.Fatal(err)
	}
	opts, err := fc.OptionsFrom(e.rest)
	if err != nil {
		t.Fatal(err)
	}
	opts.Controller.GCInterval = time.Hour // only triggers: the test sees event-driven reconciliation
	opts.Controller.Entries = e.admin.Entry
	opts.Controller.TrustDomains = trustdomainv1.NewTrustDomainClient(e.admin.Conn)
	opts.Controller.Log = testLogger(t)
	syncs := make(chan reconcile.Result, 1000)
	opts.Controller.OnSync = func(r reconcile.Result, err error) {
		select {
		case syncs <- r:
		default:
		}
	}
	if edit != nil {
		edit(&opts)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("controller: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return syncs, stop
}

// testLogger keeps the controller's log and prints its end if the test
// fails (a logger writing to t could be called after the test ends).
func testLogger(t *testing.T) *slog.Logger {
	buf := &lockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			b := buf.String()
			if len(b) > 16<<10 {
				b = b[len(b)-16<<10:]
			}
			t.Logf("controller log (end):\n%s", b)
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// entries lists the server's entries by SPIFFE ID.
func (e *env) entries() map[string]*types.Entry {
	m := map[string]*types.Entry{}
	for _, en := range e.admin.ListEntries(e.t) {
		m[testutil.IDString(en.SpiffeId)] = en
	}
	return m
}

// waitEntries waits until the server's entries satisfy cond.
func (e *env) waitEntries(what string, cond func(map[string]*types.Entry) bool) map[string]*types.Entry {
	e.t.Helper()
	var last map[string]*types.Entry
	err := testutil.Poll(waitFor, 10*time.Millisecond, func() (bool, error) {
		last = e.entries()
		return cond(last), nil
	})
	if err != nil {
		e.t.Fatalf("%s: %v; entries: %s", what, err, ids(last))
	}
	return last
}

func ids(m map[string]*types.Entry) string {
	var s []string
	for id := range m {
		s = append(s, id)
	}
	slices.Sort(s)
	return strings.Join(s, " ")
}

func (e *env) create(obj client.Object) {
	e.t.Helper()
	if err := e.client.Create(context.Background(), obj); err != nil {
		e.t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

func (e *env) delete(obj client.Object) {
	e.t.Helper()
	if err := e.client.Delete(context.Background(), obj, client.GracePeriodSeconds(0)); err != nil && !apierrors.IsNotFound(err) {
		e.t.Fatalf("delete %T %s: %v", obj, obj.GetName(), err)
	}
}

func (e *env) node() *corev1.Node {
	e.t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: kubetest.Name("node")}}
	e.create(n)
	e.t.Cleanup(func() { _ = e.client.Delete(context.Background(), n) })
	return n
}

func (e *env) namespace(labels map[string]string) string {
	e.t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: kubetest.Name("ns"), Labels: labels}}
	e.create(ns)
	e.serviceAccount(ns.Name)
	return ns.Name
}

// serviceAccount creates the namespace's "default" service account (no
// controller-manager makes it here).
func (e *env) serviceAccount(ns string) {
	e.t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default"}}
	if err := e.client.Create(context.Background(), sa); err != nil && !apierrors.IsAlreadyExists(err) {
		e.t.Fatal(err)
	}
}

func (e *env) pod(ns, name, node string, labels map[string]string) *corev1.Pod {
	e.t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                     node,
			ServiceAccountName:           "default",
			AutomountServiceAccountToken: new(false),
			Containers:                   []corev1.Container{{Name: "main", Image: "registry.invalid/none:1"}},
		},
	}
	e.create(p)
	return p
}

func (e *env) csid(spec v1alpha1.ClusterSPIFFEIDSpec) *v1alpha1.ClusterSPIFFEID {
	e.t.Helper()
	spec.ClassName = e.class
	c := &v1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: kubetest.Name("csid")}, Spec: spec}
	e.create(c)
	e.t.Cleanup(func() { _ = e.client.Delete(context.Background(), c) })
	return c
}

// ready waits for obj's Ready condition to have status and returns it.
func (e *env) ready(obj client.Object, status metav1.ConditionStatus) metav1.Condition {
	e.t.Helper()
	return e.readyWhere(obj, status, nil)
}

// readyWhere is ready, also waiting for also (reading obj) to hold.
func (e *env) readyWhere(obj client.Object, status metav1.ConditionStatus, also func() bool) metav1.Condition {
	e.t.Helper()
	var cond metav1.Condition
	err := testutil.Poll(waitFor, 10*time.Millisecond, func() (bool, error) {
		if err := e.client.Get(context.Background(), client.ObjectKeyFromObject(obj), obj); err != nil {
			return false, err
		}
		var conds []metav1.Condition
		switch o := obj.(type) {
		case *v1alpha1.ClusterSPIFFEID:
			conds = o.Status.Conditions
		case *v1alpha1.ClusterStaticEntry:
			conds = o.Status.Conditions
		case *v1alpha1.ClusterFederatedTrustDomain:
			conds = o.Status.Conditions
		}
		c := meta.FindStatusCondition(conds, "Ready")
		if c == nil || c.Status != status || c.ObservedGeneration != obj.GetGeneration() || (also != nil && !also()) {
			return false, nil
		}
		cond = *c
		return true, nil
	})
	if err != nil {
		e.t.Fatalf("%s: Ready %s: %v (object: %+v)", obj.GetName(), status, err, obj)
	}
	return cond
}

// Pods created as API objects get entries, parented by their node's
// agent ID; a pod deleted loses its entry, a ClusterSPIFFEID deleted
// loses all of its; its status counts what it selected.
func TestClusterSPIFFEIDPodsToEntries(t *testing.T) {
	e := newEnv(t, envOptions{})
	node := e.node()
	ns := e.namespace(nil)
	other := e.namespace(nil)
	csid := e.csid(v1alpha1.ClusterSPIFFEIDSpec{
		SPIFFEIDTemplate:          "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}",
		NamespaceSelector:         &v1alpha1.NamespaceSelector{MatchNames: []string{ns}},
		PodSelector:               &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
		WorkloadSelectorTemplates: []string{"k8s:ns:{{ .PodMeta.Namespace }}", "k8s:sa:{{ .PodSpec.ServiceAccountName }}"},
		DNSNameTemplates:          []string{"{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}"},
		TTL:                       v1alpha1.Duration{Duration: time.Hour},
	})

	start := time.Now()
	var pods []*corev1.Pod
	for i := range 3 {
		pods = append(pods, e.pod(ns, fmt.Sprintf("web-%d", i), node.Name, map[string]string{"app": "web"}))
	}
	e.pod(ns, "db-0", node.Name, map[string]string{"app": "db"})      // not selected: labels
	e.pod(other, "web-0", node.Name, map[string]string{"app": "web"}) // not selected: namespace
	e.pod(ns, "web-unscheduled", "", map[string]string{"app": "web"}) // selected, no node yet: no entry
	id := func(name string) string { return "spiffe://example.org/ns/" + ns + "/pod/" + name }
	got := e.waitEntries("entries for the 3 pods", func(m map[string]*types.Entry) bool { return len(m) == 3 })
	t.Logf("3 pods created -> 3 entries in %v", time.Since(start))
	parent := "spiffe://example.org/spire/agent/k8s_psat/demo/" + string(node.UID)
	for _, p := range pods {
		en := got[id(p.Name)]
		if en == nil {
			t.Fatalf("no entry %s; entries %s", id(p.Name), ids(got))
		}
		if testutil.IDString(en.ParentId) != parent {
			t.Errorf("entry %s: parent %s, want the node's agent ID %s", id(p.Name), testutil.IDString(en.ParentId), parent)
		}
		var sels []string
		for _, s := range en.Selectors {
			sels = append(sels, s.Type+":"+s.Value)
		}
		slices.Sort(sels)
		want := []string{"k8s:ns:" + ns, "k8s:pod-uid:" + string(p.UID), "k8s:sa:default"}
		if !slices.Equal(sels, want) {
			t.Errorf("entry %s: selectors %q, want %q", id(p.Name), sels, want)
		}
		if want := p.Name + "." + ns + ".svc.cluster.local"; !slices.Equal(en.DnsNames, []string{want}) || en.X509SvidTtl != 3600 {
			t.Errorf("entry %s: DNS names %q, X509-SVID TTL %d; want [%s], 3600", id(p.Name), en.DnsNames, en.X509SvidTtl, want)
		}
	}
	// The status counts the unscheduled pod once the cache has it.
	cond := e.readyWhere(csid, metav1.ConditionTrue, func() bool { return csid.Status.Stats.PodsSelected == 4 })
	if s := csid.Status.Stats; s.NamespacesSelected != 1 || s.PodsSelected != 4 || s.EntriesToSet != 3 || s.PodEntryRenderFailures != 0 {
		t.Errorf("stats %+v, want 1 namespace, 4 pods selected, 3 entries", s)
	}
	if !strings.Contains(cond.Message, "4 pods selected, 3 entries set") {
		t.Errorf("Ready message %q", cond.Message)
	}

	// A pod deleted loses its entry.
	start = time.Now()
	e.delete(pods[0])
	e.waitEntries("pod deleted", func(m map[string]*types.Entry) bool { return len(m) == 2 && m[id(pods[0].Name)] == nil })
	t.Logf("pod deleted -> entry deleted in %v", time.Since(start))

	// The node's pods move nowhere, but a relabelled pod leaves the selection.
	p1 := pods[1].DeepCopy()
	if err := e.client.Get(context.Background(), client.ObjectKeyFromObject(p1), p1); err != nil {
		t.Fatal(err)
	}
	p1.Labels["app"] = "other"
	if err := e.client.Update(context.Background(), p1); err != nil {
		t.Fatal(err)
	}
	e.waitEntries("pod relabelled", func(m map[string]*types.Entry) bool { return len(m) == 1 && m[id(pods[2].Name)] != nil })

	// The node deleted: its pods' entries go (they have no parent any more).
	e.delete(node)
	e.waitEntries("node deleted", func(m map[string]*types.Entry) bool { return len(m) == 0 })
	e.readyWhere(csid, metav1.ConditionFalse, func() bool { return csid.Status.Stats.PodEntryRenderFailures == 1 })

	// The resource deleted: its entries go.
	other2 := e.node()
	e.pod(ns, "web-late", other2.Name, map[string]string{"app": "web"})
	e.waitEntries("pod on a new node", func(m map[string]*types.Entry) bool { return m[id("web-late")] != nil })
	e.delete(csid)
	e.waitEntries("ClusterSPIFFEID deleted", func(m map[string]*types.Entry) bool { return len(m) == 0 })
}

// A template that fails for a pod is reported in the resource's status and
// as a Warning event naming the pod and the field; the pods it renders for
// still get their entries.
func TestTemplateErrorsReported(t *testing.T) {
	e := newEnv(t, envOptions{})
	node := e.node()
	ns := e.namespace(nil)
	csid := e.csid(v1alpha1.ClusterSPIFFEIDSpec{
		SPIFFEIDTemplate:  `spiffe://{{ .TrustDomain }}/device/{{ required "device-id label required" .PodMeta.Labels.device-id }}`,
		NamespaceSelector: &v1alpha1.NamespaceSelector{MatchNames: []string{ns}},
	})
	e.pod(ns, "good", node.Name, map[string]string{"device-id": "d1"})
	e.pod(ns, "bad", node.Name, nil)
	e.waitEntries("the good pod's entry", func(m map[string]*types.Entry) bool { return m["spiffe://example.org/device/d1"] != nil })
	cond := e.ready(csid, metav1.ConditionFalse)
	for _, want := range []string{"pod " + ns + "/bad", "spec.spiffeIDTemplate", "device-id label required"} {
		if !strings.Contains(cond.Message, want) {
			t.Errorf("Ready message %q does not contain %q", cond.Message, want)
		}
	}
	if cond.Reason != "RenderFailed" || csid.Status.Stats.PodEntryRenderFailures != 1 {
		t.Errorf("Ready reason %s, stats %+v: want RenderFailed, 1 render failure", cond.Reason, csid.Status.Stats)
	}
	// The event (events.k8s.io/v1; a cluster-scoped object's go to "default").
	err := testutil.Poll(waitFor, 20*time.Millisecond, func() (bool, error) {
		var evs eventsv1.EventList
		if err := e.client.List(context.Background(), &evs, client.InNamespace("default")); err != nil {
			return false, err
		}
		for _, ev := range evs.Items {
			if ev.Regarding.Name == csid.Name && ev.Type == corev1.EventTypeWarning && ev.Reason == "RenderFailed" &&
				strings.Contains(ev.Note, "pod "+ns+"/bad") && strings.Contains(ev.Note, "spec.spiffeIDTemplate") {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Errorf("no Warning event for %s naming the pod and the field: %v", csid.Name, err)
	}

	// A spec that does not parse: InvalidSpec, no entries from it.
	bad := e.csid(v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "spiffe://{{ .TrustDomain }}/{{ .Bad", NamespaceSelector: &v1alpha1.NamespaceSelector{MatchNames: []string{ns}}})
	cond = e.ready(bad, metav1.ConditionFalse)
	if cond.Reason != "InvalidSpec" || !strings.Contains(cond.Message, "spec.spiffeIDTemplate") {
		t.Errorf("Ready %s %q, want InvalidSpec naming spec.spiffeIDTemplate", cond.Reason, cond.Message)
	}
}

// ClusterStaticEntry: its entry is created, updated and deleted with it.
func TestClusterStaticEntry(t *testing.T) {
	e := newEnv(t, envOptions{})
	cse := &v1alpha1.ClusterStaticEntry{
		ObjectMeta: metav1.ObjectMeta{Name: kubetest.Name("cse")},
		Spec: v1alpha1.ClusterStaticEntrySpec{
			SPIFFEID: "spiffe://example.org/nested/server", ParentID: "spiffe://example.org/spire/agent/x509pop/abc",
			Selectors: []string{"unix:uid:0"}, Downstream: true, ClassName: e.class,
			X509SVIDTTL: v1alpha1.Duration{Duration: 30 * time.Minute},
		},
	}
	e.create(cse)
	got := e.waitEntries("static entry", func(m map[string]*types.Entry) bool { return m["spiffe://example.org/nested/server"] != nil })
	if en := got["spiffe://example.org/nested/server"]; !en.Downstream || en.X509SvidTtl != 1800 {
		t.Errorf("entry %+v", en)
	}
	e.ready(cse, metav1.ConditionTrue)
	if !cse.Status.Rendered || !cse.Status.Set || cse.Status.Masked {
		t.Errorf("status %+v", cse.Status)
	}
	cse.Spec.X509SVIDTTL = v1alpha1.Duration{Duration: time.Hour}
	if err := e.client.Update(context.Background(), cse); err != nil {
		t.Fatal(err)
	}
	e.waitEntries("static entry updated", func(m map[string]*types.Entry) bool {
		en := m["spiffe://example.org/nested/server"]
		return en != nil && en.X509SvidTtl == 3600
	})
	e.delete(cse)
	e.waitEntries("static entry deleted", func(m map[string]*types.Entry) bool { return len(m) == 0 })
}

// ClusterFederatedTrustDomain: the relationship is created, updated and
// deleted with the resource.
func TestClusterFederatedTrustDomain(t *testing.T) {
	e := newEnv(t, envOptions{})
	tdc := trustdomainv1.NewTrustDomainClient(e.admin.Conn)
	rels := func() map[string]*types.FederationRelationship {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := tdc.ListFederationRelationships(ctx, &trustdomainv1.ListFederationRelationshipsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]*types.FederationRelationship{}
		for _, fr := range resp.FederationRelationships {
			m[fr.TrustDomain] = fr
		}
		return m
	}
	wait := func(what string, cond func(map[string]*types.FederationRelationship) bool) {
		t.Helper()
		if err := testutil.Poll(waitFor, 10*time.Millisecond, func() (bool, error) { return cond(rels()), nil }); err != nil {
			t.Fatalf("%s: %v (relationships %v)", what, err, rels())
		}
	}
	cftd := &v1alpha1.ClusterFederatedTrustDomain{
		ObjectMeta: metav1.ObjectMeta{Name: kubetest.Name("cftd")},
		Spec: v1alpha1.ClusterFederatedTrustDomainSpec{
			TrustDomain: "partner.example.com", BundleEndpointURL: "https://partner.example.com:8443",
			BundleEndpointProfile: v1alpha1.BundleEndpointProfile{Type: "https_spiffe", EndpointSPIFFEID: "spiffe://partner.example.com/spire/server"},
			ClassName:             e.class,
		},
	}
	e.create(cftd)
	wait("relationship created", func(m map[string]*types.FederationRelationship) bool {
		fr := m["partner.example.com"]
		return fr != nil && fr.BundleEndpointUrl == "https://partner.example.com:8443" && fr.GetHttpsSpiffe().GetEndpointSpiffeId() == "spiffe://partner.example.com/spire/server"
	})
	e.ready(cftd, metav1.ConditionTrue)
	cftd.Spec.BundleEndpointURL = "https://partner.example.com:9443"
	cftd.Spec.BundleEndpointProfile = v1alpha1.BundleEndpointProfile{Type: "https_web"}
	if err := e.client.Update(context.Background(), cftd); err != nil {
		t.Fatal(err)
	}
	wait("relationship updated", func(m map[string]*types.FederationRelationship) bool {
		fr := m["partner.example.com"]
		return fr != nil && fr.BundleEndpointUrl == "https://partner.example.com:9443" && fr.GetHttpsWeb() != nil
	})
	e.delete(cftd)
	wait("relationship deleted", func(m map[string]*types.FederationRelationship) bool { return len(m) == 0 })
}

// applyFile creates every object of a YAML file as it is, and deletes them
// when the test ends.
func (e *env) applyFile(path string) {
	e.t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatal(err)
	}
	objs, err := decodeYAML(b)
	if err != nil {
		e.t.Fatalf("%s: %v", path, err)
	}
	for _, o := range objs {
		e.create(o)
		e.t.Cleanup(func() { _ = e.client.Delete(context.Background(), o) })
	}
}

func (e *env) namedNamespace(name string, labels map[string]string) {
	e.t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := e.client.Create(context.Background(), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		e.t.Fatal(err)
	}
	e.serviceAccount(name)
}

// federate gives the server a bundle for each trust domain, as federation
// (or an operator) would: the server refuses entries federating with a
// trust domain it has no bundle of, as SPIRE does.
func (e *env) federate(tds ...string) {
	e.t.Helper()
	for _, name := range tds {
		td := spiffeid.RequireTrustDomainFromString(name)
		e.admin.SetFederatedBundle(e.t, spiffebundle.FromX509Authorities(td, []*x509.Certificate{testca.SelfSigned(e.t, testca.TrustDomain(td))}))
	}
}

func entryString(en *types.Entry) string {
	var sels []string
	for _, s := range en.Selectors {
		sels = append(sels, s.Type+":"+s.Value)
	}
	slices.Sort(sels)
	fw := slices.Clone(en.FederatesWith)
	slices.Sort(fw)
	return fmt.Sprintf("selectors=%s dns=%s ttl=%d jwt_ttl=%d admin=%v federates_with=%s",
		strings.Join(sels, ","), strings.Join(en.DnsNames, ","), en.X509SvidTtl, en.JwtSvidTtl, en.Admin, strings.Join(fw, ","))
}

// The spire-on-kubernetes seed's ClusterSPIFFEIDs, applied unchanged,
// render the entries the article describes.
func TestSeedSPIREOnKubernetes(t *testing.T) {
	e := newEnv(t, envOptions{td: "prod.example.com", classless: true})
	node := e.node()
	e.namedNamespace("production", nil)
	e.namedNamespace("staging", nil)
	app := e.namespace(nil)
	e.federate("partner.example.com", "cloud.example.com")
	e.applyFile("testdata/seed-spire-on-kubernetes.yaml")
	front := e.pod(app, "frontend-1", node.Name, map[string]string{"spiffe": "enabled"})
	db := e.pod("production", kubetest.Name("postgres"), node.Name, map[string]string{"app": "postgresql"})
	other := e.pod(app, kubetest.Name("postgres"), node.Name, map[string]string{"app": "postgresql"}) // not in production/staging
	t.Cleanup(func() { e.delete(db) })

	want := map[string]string{
		"spiffe://prod.example.com/ns/" + app + "/sa/default": fmt.Sprintf("selectors=k8s:ns:%s,k8s:pod-uid:%s,k8s:sa:default dns=frontend-1.%s.svc.cluster.local ttl=3600 jwt_ttl=0 admin=false federates_with=",
			app, front.UID, app),
		"spiffe://prod.example.com/ns/production/sa/default/" + db.Name: fmt.Sprintf("selectors=k8s:ns:production,k8s:pod-name:%s,k8s:pod-uid:%s,k8s:sa:default dns= ttl=0 jwt_ttl=0 admin=false federates_with=cloud.example.com,partner.example.com",
			db.Name, db.UID),
	}
	got := e.waitEntries("the seed's entries", func(m map[string]*types.Entry) bool { return len(m) >= len(want) })
	for id, w := range want {
		en := got[id]
		if en == nil {
			t.Errorf("no entry %s; entries %s", id, ids(got))
			continue
		}
		if g := entryString(en); g != w {
			t.Errorf("entry %s:\n got %s\nwant %s", id, g, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("entries %s, want only %d (pod %s is outside production/staging)", ids(got), len(want), other.Name)
	}
}

// The edge IoT seed's four ClusterSPIFFEIDs, applied unchanged, render
// the entries the article describes (Helm's required/default, dashed label
// keys, jwtSvidTTL, a namespace label selector).
func TestSeedEdgeIoT(t *testing.T) {
	e := newEnv(t, envOptions{td: "edge.company.com", classless: true})
	node := e.node()
	edge := e.namespace(map[string]string{"edge-zone": "true"})
	plant := e.namespace(map[string]string{"industrial": "true"})
	e.federate("cloud.company.com", "edge-west.company.com", "edge-east.company.com")
	e.applyFile("testdata/seed-edge-iot-zero-trust.yaml")
	sensor := e.pod(edge, "sensor-1", node.Name, map[string]string{"device-type": "sensor", "iot-managed": "true", "device-id": "temp-sensor-001",
		"security-level": "standard", "sensor-type": "temperature", "location": "warehouse-a"})
	ctl := e.pod(plant, "plc-1", node.Name, map[string]string{"device-type": "controller", "security-level": "high", "controller-id": "plc-7",
		"system": "conveyor", "zone": "line-2", "safety-level": "sil2"})
	gw := e.pod(edge, "gw-1", node.Name, map[string]string{"device-type": "gateway", "gateway-id": "gw-001", "region": "us-east-1",
		"facility": "warehouse-a", "gateway-type": "lte"})
	bld := e.pod(edge, "hvac-1", node.Name, map[string]string{"category": "building-automation", "building": "hq", "floor": "3", "room": "301",
		"device-type": "hvac"})

	want := map[string]string{
		"spiffe://edge.company.com/iot/sensor/temp-sensor-001/temperature/warehouse-a": fmt.Sprintf(
			"selectors=k8s:device-id:temp-sensor-001,k8s:location:warehouse-a,k8s:ns:%s,k8s:pod-name:sensor-1,k8s:pod-uid:%s,k8s:sensor-type:temperature dns= ttl=7200 jwt_ttl=300 admin=false federates_with=", edge, sensor.UID),
		"spiffe://edge.company.com/industrial/conveyor/controller/plc-7/line-2": fmt.Sprintf(
			"selectors=k8s:controller-id:plc-7,k8s:ns:%s,k8s:pod-uid:%s,k8s:safety-level:sil2,k8s:system:conveyor,k8s:zone:line-2 dns=plc-7.conveyor.industrial.local ttl=14400 jwt_ttl=0 admin=false federates_with=cloud.company.com", plant, ctl.UID),
		"spiffe://edge.company.com/edge/gateway/gw-001/us-east-1/warehouse-a": fmt.Sprintf(
			"selectors=k8s:facility:warehouse-a,k8s:gateway-id:gw-001,k8s:gateway-type:lte,k8s:ns:%s,k8s:pod-uid:%s,k8s:region:us-east-1 dns=gw-001.edge.company.com,gateway.warehouse-a.company.com ttl=3600 jwt_ttl=0 admin=true federates_with=cloud.company.com,edge-east.company.com,edge-west.company.com", edge, gw.UID),
		"spiffe://edge.company.com/building/hq/floor-3/room-301/hvac": fmt.Sprintf(
			"selectors=k8s:building:hq,k8s:device-type:hvac,k8s:floor:3,k8s:ns:%s,k8s:pod-uid:%s,k8s:room:301 dns= ttl=10800 jwt_ttl=0 admin=false federates_with=", edge, bld.UID),
	}
	got := e.waitEntries("the seed's entries", func(m map[string]*types.Entry) bool { return len(m) >= len(want) })
	for id, w := range want {
		en := got[id]
		if en == nil {
			t.Errorf("no entry %s; entries %s", id, ids(got))
			continue
		}
		if g := entryString(en); g != w {
			t.Errorf("entry %s:\n got %s\nwant %s", id, g, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("entries %s, want %d", ids(got), len(want))
	}
}

// One leader at a time: of two controllers sharing a Lease only the
// leader reconciles; when it stops (releasing the Lease) the other takes
// over.
func TestLeaderElection(t *testing.T) {
	e := newEnv(t, envOptions{noController: true})
	leaseNS := e.namespace(nil)
	lease := kubetest.Name("lease")
	elect := func(o *Options) {
		o.LeaderElection, o.LeaderElectionID, o.LeaderElectionNamespace = true, lease, leaseNS
		// The leader releases the Lease when it stops, so the other takes
		// over at its next retry; the renew deadline is long enough that a
		// loaded machine does not make the leader lose it.
		o.LeaseDuration, o.RenewDeadline, o.RetryPeriod = 15*time.Second, 10*time.Second, 200*time.Millisecond
	}
	syncsA, stopA := e.startController(elect)
	select {
	case <-syncsA:
	case <-time.After(waitFor):
		t.Fatal("the first controller never became leader")
	}
	syncsB, stopB := e.startController(elect)
	defer stopB()

	node := e.node()
	ns := e.namespace(nil)
	e.csid(v1alpha1.ClusterSPIFFEIDSpec{
		SPIFFEIDTemplate:  "spiffe://{{ .TrustDomain }}/pod/{{ .PodMeta.Name }}",
		NamespaceSelector: &v1alpha1.NamespaceSelector{MatchNames: []string{ns}},
	})
	e.pod(ns, "a", node.Name, nil)
	e.waitEntries("the leader's entry", func(m map[string]*types.Entry) bool { return m["spiffe://example.org/pod/a"] != nil })
	select {
	case <-syncsB:
		t.Fatal("the second controller reconciled while the first held the lease")
	default:
	}

	stopA()
	e.pod(ns, "b", node.Name, nil)
	e.waitEntries("the new leader's entry", func(m map[string]*types.Entry) bool { return m["spiffe://example.org/pod/b"] != nil })
	select { // the entry is written before the run reports
	case <-syncsB:
	case <-time.After(waitFor):
		t.Fatal("the entry appeared but the second controller never reported a run")
	}
}

// trustBundleConfigMap: the leader publishes the server's bundle (PEM)
// into the ConfigMap agents bootstrap from, and puts it back when it is
// changed behind its back.
func TestTrustBundleConfigMap(t *testing.T) {
	e := newEnv(t, envOptions{noController: true})
	ns := e.namespace(nil)
	syncs, _ := e.startController(func(o *Options) {
		o.Controller.BundleConfigMap = BundleConfigMap{Namespace: ns, Name: "spire-bundle", Key: "bundle.crt"}
		o.Controller.Bundle = e.admin.Client
		o.Controller.GCInterval = 100 * time.Millisecond // the ConfigMap is not watched: the GC runs repair it
	})
	want := string(e.admin.BundlePEM(t))
	get := func() string {
		var cm corev1.ConfigMap
		if err := e.client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "spire-bundle"}, &cm); err != nil {
			if apierrors.IsNotFound(err) {
				return ""
			}
			t.Fatal(err)
		}
		return cm.Data["bundle.crt"]
	}
	if err := testutil.Poll(waitFor, 10*time.Millisecond, func() (bool, error) { return get() == want, nil }); err != nil {
		t.Fatalf("ConfigMap bundle %q, want the server's %q: %v", get(), want, err)
	}
	var cm corev1.ConfigMap
	if err := e.client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "spire-bundle"}, &cm); err != nil {
		t.Fatal(err)
	}
	cm.Data["bundle.crt"] = "stale"
	if err := e.client.Update(context.Background(), &cm); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Poll(waitFor, 10*time.Millisecond, func() (bool, error) { return get() == want, nil }); err != nil {
		t.Fatalf("ConfigMap not repaired: %v", err)
	}
	if len(syncs) == 0 {
		t.Error("no run reported")
	}
}

// Entries deleted or changed behind the controller's back are put back by
// the next GC run (every gcInterval, untriggered).
func TestEntriesRepairedByGC(t *testing.T) {
	e := newEnv(t, envOptions{noController: true})
	e.startController(func(o *Options) { o.Controller.GCInterval = 200 * time.Millisecond })
	node := e.node()
	ns := e.namespace(nil)
	e.csid(v1alpha1.ClusterSPIFFEIDSpec{
		SPIFFEIDTemplate:  "spiffe://{{ .TrustDomain }}/pod/{{ .PodMeta.Name }}",
		NamespaceSelector: &v1alpha1.NamespaceSelector{MatchNames: []string{ns}},
		TTL:               v1alpha1.Duration{Duration: time.Hour},
	})
	e.pod(ns, "a", node.Name, nil)
	got := e.waitEntries("entry", func(m map[string]*types.Entry) bool { return m["spiffe://example.org/pod/a"] != nil })
	en := got["spiffe://example.org/pod/a"]

	// Changed: the TTL is put back.
	en.X509SvidTtl = 60
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.admin.Entry.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{Entries: []*types.Entry{en}}); err != nil {
		t.Fatal(err)
	}
	e.waitEntries("TTL restored", func(m map[string]*types.Entry) bool {
		x := m["spiffe://example.org/pod/a"]
		return x != nil && x.X509SvidTtl == 3600
	})
	// Deleted: created again.
	e.admin.DeleteEntries(t, en.Id)
	e.waitEntries("entry re-created", func(m map[string]*types.Entry) bool {
		x := m["spiffe://example.org/pod/a"]
		return x != nil && x.Id != en.Id
	})
}
