// Package reconcile computes the registration entries the cluster declares
// (ClusterSPIFFEIDs rendered for the pods they select, ClusterStaticEntries)
// and brings the server's entries to them: it creates what is missing,
// updates what differs and deletes what nothing declares any more (pods,
// nodes or resources gone), with spire-controller-manager's semantics:
//
//   - an entry is identified by SPIFFE ID, parent ID and selector set; when
//     several resources declare the same one, the oldest resource's wins
//     and the others count it as masked;
//   - a fallback ClusterSPIFFEID applies to a pod only when no other
//     ClusterSPIFFEID gave it an entry;
//   - className filtering (a resource with no class is reconciled when the
//     controller has no class or watches classless resources);
//   - ignored namespaces (regular expressions, unanchored) are skipped;
//   - with an entry ID prefix, only entries whose ID has it are the
//     controller's, and new ones get it; without one every entry of the
//     server is (join token entries are never deleted).
//
// It is pure computation on a snapshot (World) plus the server's entry API;
// internal/controller/manager feeds it from the Kubernetes API.
package reconcile

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"text/template"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sigil-spiffe/sigil/internal/controller/api/v1alpha1"
	"github.com/sigil-spiffe/sigil/internal/controller/render"
)

// Config is what the controller renders with.
type Config struct {
	TrustDomain      spiffeid.TrustDomain
	ClusterName      string
	ClusterDomain    string
	ParentID         *template.Template // render.ParseParentIDTemplate
	IgnoreNamespaces []*regexp.Regexp
	ClassName        string
	WatchClassless   bool
	EntryIDPrefix    string
}

// Reconciles reports whether a resource of className is the controller's.
func (c *Config) Reconciles(className string) bool {
	return (className == "" && c.WatchClassless) || className == c.ClassName
}

// Ignored reports whether the namespace is ignored.
func (c *Config) Ignored(ns string) bool {
	for _, re := range c.IgnoreNamespaces {
		if re.MatchString(ns) {
			return true
		}
	}
	return false
}

// World is a snapshot of the cluster's objects. Nothing in it is modified.
type World struct {
	ClusterSPIFFEIDs []*v1alpha1.ClusterSPIFFEID
	StaticEntries    []*v1alpha1.ClusterStaticEntry
	Namespaces       []*corev1.Namespace
	Pods             []*corev1.Pod
	Nodes            []*corev1.Node
	// Services gives the names of the services whose endpoints hold the
	// pod (autoPopulateDNSNames); nil means none.
	Services func(pod *corev1.Pod) []string
}

// Owner is a resource that declares entries, and what happened to them.
type Owner struct {
	Kind string // ClusterSPIFFEID, ClusterStaticEntry
	Obj  metav1.Object

	// ClusterSPIFFEID stats (spire-controller-manager's status.stats).
	Stats v1alpha1.ClusterSPIFFEIDStats
	// ClusterStaticEntry status.
	Rendered, Masked, Set bool

	// SpecErr is why the spec is unusable (nil: it parsed).
	SpecErr error
	// Failures are the render and server failures, with the pod or entry
	// they concern ("pod ns/name: spec.dnsNameTemplates[0]: ...").
	Failures []string
}

// Name is kind/name, for logs and events.
func (o *Owner) Name() string { return o.Kind + "/" + o.Obj.GetName() }

func (o *Owner) fail(format string, args ...any) {
	o.Failures = append(o.Failures, fmt.Sprintf(format, args...))
}

// Declared is an entry and the owner declaring it.
type Declared struct {
	Entry render.Entry
	By    *Owner
}

// Key identifies an entry: SPIFFE ID, parent ID, selector set.
type Key string

// KeyOf is e's key.
func KeyOf(e *render.Entry) Key {
	sels := make([]string, len(e.Selectors))
	for i, s := range e.Selectors {
		sels[i] = s.Type + "\x00" + s.Value
	}
	slices.Sort(sels)
	return Key(e.SPIFFEID.String() + "\x01" + e.ParentID.String() + "\x01" + strings.Join(sels, "\x01"))
}

// Declare renders what the world declares: the owners (every resource of
// the controller's class, with its stats and failures) and the declared
// entries grouped by key, each group ordered by preference (the first is
// the one to set).
func Declare(cfg *Config, w *World) ([]*Owner, map[Key][]Declared) {
	var owners []*Owner
	declared := map[Key][]Declared{}
	add := func(e *render.Entry, o *Owner) {
		k := KeyOf(e)
		declared[k] = append(declared[k], Declared{Entry: *e, By: o})
	}

	for _, cse := range w.StaticEntries {
		if !cfg.Reconciles(cse.Spec.ClassName) {
			continue
		}
		o := &Owner{Kind: "ClusterStaticEntry", Obj: cse}
		owners = append(owners, o)
		e, err := render.StaticEntry(&cse.Spec)
		if err != nil {
			o.SpecErr = err
			continue
		}
		o.Rendered = true
		add(e, o)
	}

	nodes := make(map[string]*corev1.Node, len(w.Nodes))
	for _, n := range w.Nodes {
		nodes[n.Name] = n
	}
	podsByNS := map[string][]*corev1.Pod{}
	for _, p := range w.Pods {
		podsByNS[p.Namespace] = append(podsByNS[p.Namespace], p)
	}
	namespaces := slices.Clone(w.Namespaces)
	slices.SortFunc(namespaces, func(a, b *corev1.Namespace) int { return cmp.Compare(a.Name, b.Name) })

	// Non-fallback resources first, so that fallbacks know which pods
	// already have an entry.
	csids := slices.Clone(w.ClusterSPIFFEIDs)
	slices.SortStableFunc(csids, func(a, b *v1alpha1.ClusterSPIFFEID) int {
		switch {
		case a.Spec.Fallback == b.Spec.Fallback:
			return objCmp(a, b)
		case b.Spec.Fallback:
			return -1
		}
		return 1
	})
	withEntry := map[types.UID]bool{}
	for _, csid := range csids {
		if !cfg.Reconciles(csid.Spec.ClassName) {
			continue
		}
		o := &Owner{Kind: "ClusterSPIFFEID", Obj: csid}
		owners = append(owners, o)
		spec, err := render.ParseClusterSPIFFEID(&csid.Spec)
		if err != nil {
			o.SpecErr = err
			continue
		}
		for _, ns := range namespaces {
			if !spec.SelectsNamespace(ns) {
				continue
			}
			o.Stats.NamespacesSelected++
			if cfg.Ignored(ns.Name) {
				o.Stats.NamespacesIgnored++
				continue
			}
			for _, pod := range podsByNS[ns.Name] {
				if !spec.SelectsPod(pod) {
					continue
				}
				o.Stats.PodsSelected++
				if spec.Fallback && withEntry[pod.UID] {
					continue
				}
				if pod.Spec.NodeName == "" {
					continue // not scheduled yet: no agent to parent it
				}
				node := nodes[pod.Spec.NodeName]
				if node == nil {
					o.Stats.PodEntryRenderFailures++
					o.fail("pod %s/%s: node %q not found", pod.Namespace, pod.Name, pod.Spec.NodeName)
					continue
				}
				var extra []string
				if spec.AutoPopulateDNS && w.Services != nil {
					for _, svc := range w.Services(pod) {
						extra = append(extra, render.ServiceDNSNames(svc, pod.Namespace, cfg.ClusterDomain)...)
					}
					slices.Sort(extra)
					extra = slices.Compact(extra)
				}
				e, err := spec.PodEntry(cfg.TrustDomain, cfg.ClusterName, cfg.ClusterDomain, cfg.ParentID, pod, node, extra)
				if err != nil {
					o.Stats.PodEntryRenderFailures++
					o.fail("pod %s/%s: %v", pod.Namespace, pod.Name, err)
					continue
				}
				add(e, o)
				if !spec.Fallback {
					withEntry[pod.UID] = true
				}
			}
		}
	}
	for _, group := range declared {
		slices.SortStableFunc(group, func(a, b Declared) int { return objCmp(a.By.Obj, b.By.Obj) })
	}
	return owners, declared
}

// objCmp orders resources by preference: older first, then those not
// being deleted, then those deleted later, then by UID.
func objCmp(a, b metav1.Object) int {
	if c := a.GetCreationTimestamp().Time.Compare(b.GetCreationTimestamp().Time); c != 0 {
		return c
	}
	da, db := a.GetDeletionTimestamp(), b.GetDeletionTimestamp()
	switch {
	case da == nil && db != nil:
		return -1
	case da != nil && db == nil:
		return 1
	case da != nil && db != nil:
		if c := db.Time.Compare(da.Time); c != 0 {
			return c
		}
	}
	return cmp.Compare(a.GetUID(), b.GetUID())
}
