package reconcile

import (
	"context"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/controller/api/v1alpha1"
	"github.com/sigil-spiffe/sigil/internal/controller/render"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func config(t *testing.T, prefix string) *Config {
	t.Helper()
	parent, err := render.ParseParentIDTemplate("")
	if err != nil {
		t.Fatal(err)
	}
	return &Config{
		TrustDomain: td, ClusterName: "demo", ClusterDomain: "cluster.local", ParentID: parent,
		IgnoreNamespaces: []*regexp.Regexp{regexp.MustCompile("kube-system")},
		EntryIDPrefix:    prefix,
	}
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func csid(name string, age int, spec v1alpha1.ClusterSPIFFEIDSpec) *v1alpha1.ClusterSPIFFEID {
	return &v1alpha1.ClusterSPIFFEID{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name), CreationTimestamp: metav1.NewTime(t0.Add(-time.Duration(age) * time.Hour))},
		Spec:       spec,
	}
}

func pod(ns, name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name), Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: "sa-" + name},
	}
}

func world() *World {
	return &World{
		Namespaces: []*corev1.Namespace{
			{ObjectMeta: metav1.ObjectMeta{Name: "default"}},
			{ObjectMeta: metav1.ObjectMeta{Name: "kube-system"}},
			{ObjectMeta: metav1.ObjectMeta{Name: "prod", Labels: map[string]string{"env": "prod"}}},
		},
		Nodes: []*corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "node-a", UID: "node-uid-a"}}},
		Pods: []*corev1.Pod{
			pod("default", "a", "node-a", map[string]string{"app": "a"}),
			pod("prod", "b", "node-a", map[string]string{"app": "b"}),
			pod("prod", "pending", "", map[string]string{"app": "b"}),
			pod("prod", "lost", "node-gone", map[string]string{"app": "b"}),
			pod("kube-system", "dns", "node-a", nil),
		},
	}
}

const nsSA = "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"

func ids(d map[Key][]Declared) []string {
	var out []string
	for _, g := range d {
		out = append(out, g[0].Entry.SPIFFEID.Path()+"<-"+g[0].By.Obj.GetName())
	}
	slices.Sort(out)
	return out
}

func TestDeclare(t *testing.T) {
	cfg := config(t, "")
	w := world()
	w.ClusterSPIFFEIDs = []*v1alpha1.ClusterSPIFFEID{
		csid("fallback", 9, v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "spiffe://example.org/fallback/{{ .PodMeta.Name }}", Fallback: true}),
		csid("prod", 1, v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: nsSA, NamespaceSelector: &v1alpha1.NamespaceSelector{LabelSelector: metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}}}),
		// The same entries as "prod", younger: masked.
		csid("prod-copy", 0, v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: nsSA, NamespaceSelector: &v1alpha1.NamespaceSelector{MatchNames: []string{"prod"}}}),
		csid("other-class", 0, v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: nsSA, ClassName: "other"}),
		csid("broken", 0, v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "spiffe://example.org/{{ .Nope"}),
	}
	owners, declared := Declare(cfg, w)
	want := []string{"/fallback/a<-fallback", "/ns/prod/sa/sa-b<-prod"}
	if got := ids(declared); !slices.Equal(got, want) {
		t.Errorf("declared %q, want %q", got, want)
	}
	byName := map[string]*Owner{}
	for _, o := range owners {
		byName[o.Obj.GetName()] = o
	}
	if _, ok := byName["other-class"]; ok {
		t.Error("a resource of another class was reconciled")
	}
	if o := byName["broken"]; o.SpecErr == nil || !strings.Contains(o.SpecErr.Error(), "template: spec.spiffeIDTemplate:1:") {
		t.Errorf("broken: spec error %v", o.SpecErr)
	}
	// fallback: every namespace, kube-system ignored; a, b, pending and
	// lost selected; b has an entry from prod (skipped), pending no node
	// yet (skipped), lost's node is missing (a failure), a renders.
	if got, want := byName["fallback"].Stats, (v1alpha1.ClusterSPIFFEIDStats{NamespacesSelected: 3, NamespacesIgnored: 1, PodsSelected: 4, PodEntryRenderFailures: 1}); got != want {
		t.Errorf("fallback stats %+v, want %+v", got, want)
	}
	if got, want := byName["prod"].Stats, (v1alpha1.ClusterSPIFFEIDStats{NamespacesSelected: 1, PodsSelected: 3, PodEntryRenderFailures: 1}); got != want {
		t.Errorf("prod stats %+v, want %+v", got, want)
	}
	if f := byName["prod"].Failures; len(f) != 1 || f[0] != `pod prod/lost: node "node-gone" not found` {
		t.Errorf("prod failures %q", f)
	}
	k := KeyOf(&declared[keyOfPath(declared, "/ns/prod/sa/sa-b")][0].Entry)
	if g := declared[k]; len(g) != 2 || g[0].By.Obj.GetName() != "prod" || g[1].By.Obj.GetName() != "prod-copy" {
		t.Errorf("masking order wrong: %v", g)
	}
}

func keyOfPath(d map[Key][]Declared, path string) Key {
	for k, g := range d {
		if g[0].Entry.SPIFFEID.Path() == path {
			return k
		}
	}
	return ""
}

// Sync against a real server: creates, leaves alone, updates, masks and
// deletes; with an ID prefix it touches only its own entries.
func TestSyncAgainstServer(t *testing.T) {
	dir := testutil.ShortTempDir(t)
	scfg := inproc.ServerConfig(td, filepath.Join(dir, "data"), filepath.Join(dir, "api.sock"), 0)
	inproc.RunServer(t, scfg, nil, serverapp.Options{})
	c, err := adminclient.Dial(scfg.SocketPath, td)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Someone else's entry: with a prefix it stays.
	foreign, err := adminclient.NewEntry(spiffeid.RequireFromPath(td, "/foreign"), spiffeid.RequireFromPath(td, "/agent"), "unix:uid:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateEntry(ctx, foreign); err != nil {
		t.Fatal(err)
	}

	cfg := config(t, "k8s.")
	w := world()
	spec := v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: nsSA, WorkloadSelectorTemplates: []string{"k8s:ns:{{ .PodMeta.Namespace }}"}, TTL: v1alpha1.Duration{Duration: time.Hour}}
	w.ClusterSPIFFEIDs = []*v1alpha1.ClusterSPIFFEID{csid("all", 1, spec), csid("copy", 0, spec)}
	w.StaticEntries = []*v1alpha1.ClusterStaticEntry{{
		ObjectMeta: metav1.ObjectMeta{Name: "static", UID: "uid-static"},
		Spec:       v1alpha1.ClusterStaticEntrySpec{SPIFFEID: "spiffe://example.org/static", ParentID: "spiffe://example.org/spire/server", Selectors: []string{"k8s_psat:cluster:demo"}},
	}}

	list := func() map[string]*render.Entry {
		t.Helper()
		cur, err := ListCurrent(ctx, c.Entry, "")
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*render.Entry{}
		for _, e := range cur {
			out[e.SPIFFEID.Path()] = &e
		}
		return out
	}
	sync := func() ([]*Owner, Result) {
		t.Helper()
		owners, res, err := Sync(ctx, cfg, c.Entry, w)
		if err != nil {
			t.Fatal(err)
		}
		return owners, res
	}

	owners, res := sync()
	if res.Created != 3 || res.Updated != 0 || res.Deleted != 0 || res.Failed != 0 {
		t.Fatalf("first sync %+v", res)
	}
	got := list()
	for _, p := range []string{"/foreign", "/static", "/ns/default/sa/sa-a", "/ns/prod/sa/sa-b"} {
		if got[p] == nil {
			t.Errorf("no entry %s after the first sync (have %v)", p, got)
		}
	}
	if e := got["/ns/prod/sa/sa-b"]; e != nil && (!strings.HasPrefix(e.ID, "k8s.") || e.X509SVIDTTL != time.Hour || e.ParentID.String() != "spiffe://example.org/spire/agent/k8s_psat/demo/node-uid-a") {
		t.Errorf("entry %+v", e)
	}
	if o := owners[1]; o.Obj.GetName() != "all" || o.Stats.EntriesToSet != 2 || o.Stats.EntriesMasked != 0 {
		t.Errorf("owner all: %+v", o.Stats)
	}
	if o := owners[2]; o.Obj.GetName() != "copy" || o.Stats.EntriesToSet != 0 || o.Stats.EntriesMasked != 2 {
		t.Errorf("owner copy: %+v", o.Stats)
	}

	// Nothing changed: nothing written (the server keeps what it was sent,
	// TTL 0 included).
	if _, res := sync(); res.Created+res.Updated+res.Deleted+res.Failed != 0 {
		t.Errorf("second sync wrote: %+v", res)
	}

	// A changed TTL updates in place; a deleted pod's entry goes.
	w.ClusterSPIFFEIDs[0].Spec.TTL.Duration = 2 * time.Hour
	w.ClusterSPIFFEIDs[1].Spec.TTL.Duration = 2 * time.Hour
	w.Pods = slices.DeleteFunc(w.Pods, func(p *corev1.Pod) bool { return p.Name == "a" })
	if _, res := sync(); res.Updated != 1 || res.Deleted != 1 || res.Created != 0 {
		t.Errorf("third sync %+v", res)
	}
	got = list()
	if got["/ns/default/sa/sa-a"] != nil || got["/ns/prod/sa/sa-b"] == nil || got["/ns/prod/sa/sa-b"].X509SVIDTTL != 2*time.Hour {
		t.Errorf("after update and delete: %v", got)
	}

	// The resources gone: their entries go, the foreign entry stays.
	w.ClusterSPIFFEIDs, w.StaticEntries = nil, nil
	if _, res := sync(); res.Deleted != 2 {
		t.Errorf("fourth sync %+v", res)
	}
	if got := list(); len(got) != 1 || got["/foreign"] == nil {
		t.Errorf("left %v, want only /foreign", got)
	}

	// Without a prefix every entry is the controller's: /foreign goes.
	cfg.EntryIDPrefix = ""
	if _, res := sync(); res.Deleted != 1 {
		t.Errorf("sync without prefix %+v", res)
	}

	// A refused entry is the owner's failure, named.
	w.ClusterSPIFFEIDs = []*v1alpha1.ClusterSPIFFEID{csid("fed", 0, v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: nsSA, FederatesWith: []string{"nobundle.org"}})}
	owners, res = sync()
	if res.Failed != 1 || owners[0].Stats.EntryFailures != 1 || len(owners[0].Failures) != 2 || !strings.Contains(owners[0].Failures[1], `create entry spiffe://example.org/ns/prod/sa/sa-b: InvalidArgument: failed to create entry: unable to find federated bundle "nobundle.org"`) {
		t.Errorf("federating with a trust domain without bundle: %+v %+v %q", res, owners[0].Stats, owners[0].Failures)
	}
}
