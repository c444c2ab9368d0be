// Package manager runs sigil-controller's reconciliation on
// controller-runtime: informers on pods, nodes, namespaces, endpoint slices
// and the three spire.spiffe.io resources trigger a reconciliation of the
// whole cluster (internal/controller/reconcile) against the server's entry
// and trust domain APIs; triggers that arrive while one runs coalesce into
// one more. It also runs every GCInterval, so entries converge after
// changes made behind the controller's back. Only the elected leader
// reconciles (the Runnable needs leader election); every replica keeps its
// caches warm.
//
// After each run it writes the resources' status (spire-controller-manager's
// stats, plus a Ready condition naming the first failure) when it changed,
// and a Warning event for each failure not reported by the previous run.
package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmanager "sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/sigil-spiffe/sigil/internal/controller/api/v1alpha1"
	"github.com/sigil-spiffe/sigil/internal/controller/reconcile"
)

// Config is what the controller reconciles and against which server.
type Config struct {
	Reconcile reconcile.Config
	// Which resources to reconcile (spire-controller-manager's
	// reconcile.{clusterSPIFFEIDs,clusterStaticEntries,
	// clusterFederatedTrustDomains}).
	ClusterSPIFFEIDs, ClusterStaticEntries, ClusterFederatedTrustDomains bool
	// GCInterval is how long the controller waits, untriggered, before it
	// reconciles again.
	GCInterval   time.Duration
	Entries      reconcile.EntryAPI
	TrustDomains reconcile.TrustDomainAPI
	Log          *slog.Logger
	// BundleConfigMap, if set (Name not empty), is where the server's
	// trust bundle is published at each run, from Bundle.
	BundleConfigMap BundleConfigMap
	Bundle          BundleSource
	// OnSync, if set, is called after each run (tests, benchmarks).
	OnSync func(reconcile.Result, error)
}

// Scheme is the scheme of the objects the controller reads and writes.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, discoveryv1.AddToScheme, v1alpha1.AddToScheme} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Controller is the reconciliation loop, a leader-elected Runnable of a
// controller-runtime manager.
type Controller struct {
	cfg      Config
	client   client.Client
	reader   client.Reader // uncached
	recorder recorder.EventRecorder
	trigger  chan struct{}

	mu       sync.Mutex
	reported map[types.UID]map[string]bool // failures already sent as events
}

// Add creates the controller, registers its event handlers on mgr's
// informers and adds it to mgr (started when mgr is, on the leader).
func Add(ctx context.Context, mgr ctrlmanager.Manager, cfg Config) (*Controller, error) {
	if cfg.GCInterval <= 0 {
		cfg.GCInterval = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	c := &Controller{
		cfg:      cfg,
		client:   mgr.GetClient(),
		reader:   mgr.GetAPIReader(),
		recorder: mgr.GetEventRecorder("sigil-controller"),
		trigger:  make(chan struct{}, 1),
		reported: map[types.UID]map[string]bool{},
	}
	watch := func(obj client.Object, h toolscache.ResourceEventHandler) error {
		inf, err := mgr.GetCache().GetInformer(ctx, obj)
		if err != nil {
			return fmt.Errorf("informer for %T: %w", obj, err)
		}
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("event handler for %T: %w", obj, err)
		}
		return nil
	}
	always := c.handler(func(_, _ any) bool { return true })
	if cfg.ClusterSPIFFEIDs || cfg.ClusterStaticEntries {
		objs := []client.Object{}
		if cfg.ClusterSPIFFEIDs {
			objs = append(objs, &v1alpha1.ClusterSPIFFEID{}, &corev1.Pod{}, &corev1.Node{}, &corev1.Namespace{}, &discoveryv1.EndpointSlice{})
		}
		if cfg.ClusterStaticEntries {
			objs = append(objs, &v1alpha1.ClusterStaticEntry{})
		}
		for _, obj := range objs {
			h := always
			switch obj.(type) {
			case *corev1.Pod:
				h = c.handler(podChanged)
			case *corev1.Node, *corev1.Namespace, *discoveryv1.EndpointSlice:
				h = c.handler(metaOrSpecChanged)
			case *v1alpha1.ClusterSPIFFEID, *v1alpha1.ClusterStaticEntry:
				h = c.handler(specChanged)
			}
			if err := watch(obj, h); err != nil {
				return nil, err
			}
		}
	}
	if cfg.ClusterFederatedTrustDomains {
		if err := watch(&v1alpha1.ClusterFederatedTrustDomain{}, c.handler(specChanged)); err != nil {
			return nil, err
		}
	}
	if err := mgr.Add(c); err != nil {
		return nil, err
	}
	return c, nil
}

// handler triggers a run on adds, deletes and the updates changed accepts.
func (c *Controller) handler(changed func(old, new any) bool) toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { c.Trigger() },
		UpdateFunc: func(old, new any) {
			if changed(old, new) {
				c.Trigger()
			}
		},
		DeleteFunc: func(any) { c.Trigger() },
	}
}

// podChanged: what templates and selection read (metadata, spec) changed;
// status updates (most of a pod's updates) do not trigger.
func podChanged(old, new any) bool {
	o, ok1 := old.(*corev1.Pod)
	n, ok2 := new.(*corev1.Pod)
	if !ok1 || !ok2 {
		return true
	}
	return o.Spec.NodeName != n.Spec.NodeName || o.Generation != n.Generation ||
		!maps.Equal(o.Labels, n.Labels) || !maps.Equal(o.Annotations, n.Annotations) ||
		(o.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil) || o.UID != n.UID
}

func metaOrSpecChanged(old, new any) bool {
	o, ok1 := old.(client.Object)
	n, ok2 := new.(client.Object)
	if !ok1 || !ok2 {
		return true
	}
	if o.GetGeneration() != n.GetGeneration() || !maps.Equal(o.GetLabels(), n.GetLabels()) || !maps.Equal(o.GetAnnotations(), n.GetAnnotations()) {
		return true
	}
	switch o := old.(type) {
	case *corev1.Node:
		return !equality.Semantic.DeepEqual(o.Spec, new.(*corev1.Node).Spec)
	case *discoveryv1.EndpointSlice:
		return !equality.Semantic.DeepEqual(o.Endpoints, new.(*discoveryv1.EndpointSlice).Endpoints)
	}
	return false
}

// specChanged ignores the status writes the controller itself makes.
func specChanged(old, new any) bool {
	o, ok1 := old.(client.Object)
	n, ok2 := new.(client.Object)
	if !ok1 || !ok2 {
		return true
	}
	return o.GetGeneration() != n.GetGeneration() || (o.GetDeletionTimestamp() == nil) != (n.GetDeletionTimestamp() == nil)
}

// Trigger asks for a run; it never blocks.
func (c *Controller) Trigger() {
	select {
	case c.trigger <- struct{}{}:
	default:
	}
}

// NeedLeaderElection: only the leader reconciles.
func (c *Controller) NeedLeaderElection() bool { return true }

// Start runs the loop until ctx ends.
func (c *Controller) Start(ctx context.Context) error {
	c.cfg.Log.Info("Reconciling as leader", "gc_interval", c.cfg.GCInterval)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.trigger:
		case <-timer.C:
		}
		// Drain the timer so Reset starts afresh.
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		c.runOnce(ctx)
		timer.Reset(c.cfg.GCInterval)
	}
}

func (c *Controller) runOnce(ctx context.Context) {
	start := time.Now()
	res, err := c.reconcile(ctx)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		c.cfg.Log.Error("Reconciliation failed", "error", err)
	} else if res.Created+res.Updated+res.Deleted+res.Failed > 0 {
		c.cfg.Log.Info("Reconciled", "created", res.Created, "updated", res.Updated, "deleted", res.Deleted, "failed", res.Failed, "duration", time.Since(start))
	}
	for _, msg := range res.DeleteErrs {
		c.cfg.Log.Warn("Entry not deleted", "error", msg)
	}
	if c.cfg.OnSync != nil {
		c.cfg.OnSync(res, err)
	}
}

func (c *Controller) reconcile(ctx context.Context) (reconcile.Result, error) {
	var res reconcile.Result
	var errs []error
	if c.cfg.ClusterSPIFFEIDs || c.cfg.ClusterStaticEntries {
		w, err := c.world(ctx)
		if err != nil {
			return res, err
		}
		var owners []*reconcile.Owner
		owners, res, err = reconcile.Sync(ctx, &c.cfg.Reconcile, c.cfg.Entries, w)
		if err != nil {
			errs = append(errs, err)
		}
		for _, o := range owners {
			c.report(ctx, o, err)
		}
	}
	if c.cfg.ClusterFederatedTrustDomains {
		var list v1alpha1.ClusterFederatedTrustDomainList
		if err := c.client.List(ctx, &list); err != nil {
			return res, fmt.Errorf("list ClusterFederatedTrustDomains: %w", err)
		}
		objs := make([]*v1alpha1.ClusterFederatedTrustDomain, len(list.Items))
		for i := range list.Items {
			objs[i] = &list.Items[i]
		}
		owners, err := reconcile.SyncFederation(ctx, &c.cfg.Reconcile, c.cfg.TrustDomains, objs)
		if err != nil {
			errs = append(errs, err)
		}
		for _, o := range owners {
			c.reportFederation(ctx, o, err)
		}
	}
	if c.cfg.BundleConfigMap.Name != "" {
		if err := c.publishBundle(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return res, errors.Join(errs...)
}

// world reads the cluster from the informers' caches.
func (c *Controller) world(ctx context.Context) (*reconcile.World, error) {
	w := &reconcile.World{}
	if c.cfg.ClusterStaticEntries {
		var l v1alpha1.ClusterStaticEntryList
		if err := c.client.List(ctx, &l); err != nil {
			return nil, fmt.Errorf("list ClusterStaticEntries: %w", err)
		}
		for i := range l.Items {
			w.StaticEntries = append(w.StaticEntries, &l.Items[i])
		}
	}
	if !c.cfg.ClusterSPIFFEIDs {
		return w, nil
	}
	var csids v1alpha1.ClusterSPIFFEIDList
	if err := c.client.List(ctx, &csids); err != nil {
		return nil, fmt.Errorf("list ClusterSPIFFEIDs: %w", err)
	}
	dns := false
	for i := range csids.Items {
		w.ClusterSPIFFEIDs = append(w.ClusterSPIFFEIDs, &csids.Items[i])
		dns = dns || csids.Items[i].Spec.AutoPopulateDNSNames
	}
	// Pods, nodes and namespaces are only read: no copies.
	var pods corev1.PodList
	if err := c.client.List(ctx, &pods, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	for i := range pods.Items {
		w.Pods = append(w.Pods, &pods.Items[i])
	}
	var nodes corev1.NodeList
	if err := c.client.List(ctx, &nodes, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	for i := range nodes.Items {
		w.Nodes = append(w.Nodes, &nodes.Items[i])
	}
	var nss corev1.NamespaceList
	if err := c.client.List(ctx, &nss, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	for i := range nss.Items {
		w.Namespaces = append(w.Namespaces, &nss.Items[i])
	}
	if dns {
		var slices discoveryv1.EndpointSliceList
		if err := c.client.List(ctx, &slices, client.UnsafeDisableDeepCopy); err != nil {
			return nil, fmt.Errorf("list endpoint slices: %w", err)
		}
		byPod := map[types.UID][]string{}
		for _, s := range slices.Items {
			svc := s.Labels[discoveryv1.LabelServiceName]
			if svc == "" {
				continue
			}
			for _, ep := range s.Endpoints {
				if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" && ep.TargetRef.UID != "" {
					byPod[ep.TargetRef.UID] = append(byPod[ep.TargetRef.UID], svc)
				}
			}
		}
		w.Services = func(p *corev1.Pod) []string { return byPod[p.UID] }
	}
	return w, nil
}

const maxEventsPerRun = 10

// events sends a Warning event for each failure obj did not have in the
// previous run (at most maxEventsPerRun), and forgets the ones that went.
func (c *Controller) events(obj runtime.Object, uid types.UID, reason string, failures []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev := c.reported[uid]
	now := make(map[string]bool, len(failures))
	sent := 0
	for _, f := range failures {
		now[f] = true
		if prev[f] || sent >= maxEventsPerRun {
			continue
		}
		c.recorder.Eventf(obj, nil, corev1.EventTypeWarning, reason, "Reconcile", "%s", clip(f))
		sent++
	}
	if len(now) == 0 {
		delete(c.reported, uid)
	} else {
		c.reported[uid] = now
	}
}

func clip(s string) string {
	if len(s) > 1024 {
		return s[:1024] + "..."
	}
	return s
}

// readyCondition is the Ready condition for an outcome.
func readyCondition(gen int64, specErr error, failures []string, syncErr error, okMsg string) metav1.Condition {
	c := metav1.Condition{Type: "Ready", Status: metav1.ConditionTrue, Reason: "Reconciled", Message: okMsg, ObservedGeneration: gen}
	switch {
	case specErr != nil:
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, "InvalidSpec", specErr.Error()
	case len(failures) > 0:
		c.Status, c.Reason = metav1.ConditionFalse, failureReason(nil, failures)
		c.Message = failures[0]
		if len(failures) > 1 {
			c.Message += fmt.Sprintf(" (and %d more)", len(failures)-1)
		}
	case syncErr != nil:
		c.Status, c.Reason, c.Message = metav1.ConditionUnknown, "ServerUnavailable", syncErr.Error()
	}
	c.Message = clip(c.Message)
	return c
}

func failureReason(specErr error, failures []string) string {
	if specErr != nil {
		return "InvalidSpec"
	}
	for _, f := range failures {
		if strings.HasPrefix(f, "pod ") {
			return "RenderFailed"
		}
	}
	return "EntryFailed"
}

func (c *Controller) report(ctx context.Context, o *reconcile.Owner, syncErr error) {
	failures := o.Failures
	if o.SpecErr != nil {
		failures = []string{o.SpecErr.Error()}
	}
	switch obj := o.Obj.(type) {
	case *v1alpha1.ClusterSPIFFEID:
		c.events(obj, obj.UID, failureReason(o.SpecErr, o.Failures), failures)
		next := obj.DeepCopy()
		next.Status.Stats = o.Stats
		meta.SetStatusCondition(&next.Status.Conditions, readyCondition(obj.Generation, o.SpecErr, o.Failures, syncErr,
			fmt.Sprintf("%d pods selected, %d entries set", o.Stats.PodsSelected, o.Stats.EntriesToSet)))
		c.patchStatus(ctx, obj, next.Status, equality.Semantic.DeepEqual(obj.Status, next.Status))
	case *v1alpha1.ClusterStaticEntry:
		c.events(obj, obj.UID, failureReason(o.SpecErr, o.Failures), failures)
		next := obj.DeepCopy()
		next.Status.Rendered, next.Status.Masked, next.Status.Set = o.Rendered, o.Masked, o.Set
		msg := "entry set"
		if o.Masked {
			msg = "masked by an older resource declaring the same entry"
		}
		meta.SetStatusCondition(&next.Status.Conditions, readyCondition(obj.Generation, o.SpecErr, o.Failures, syncErr, msg))
		c.patchStatus(ctx, obj, next.Status, equality.Semantic.DeepEqual(obj.Status, next.Status))
	}
}

func (c *Controller) reportFederation(ctx context.Context, o *reconcile.FederationOwner, syncErr error) {
	failures := o.Failures
	if o.SpecErr != nil {
		failures = []string{o.SpecErr.Error()}
	}
	if o.Conflict != "" {
		failures = append(failures, fmt.Sprintf("trust domain %s is declared by the older ClusterFederatedTrustDomain %s, which wins", o.Obj.Spec.TrustDomain, o.Conflict))
	}
	c.events(o.Obj, o.Obj.UID, failureReason(o.SpecErr, failures), failures)
	next := o.Obj.DeepCopy()
	meta.SetStatusCondition(&next.Status.Conditions, readyCondition(o.Obj.Generation, o.SpecErr, slices.Clip(failures), syncErr, "federation relationship set"))
	c.patchStatus(ctx, o.Obj, next.Status, equality.Semantic.DeepEqual(o.Obj.Status, next.Status))
}

// patchStatus writes next's status over obj's when it changed: a merge
// patch holding the whole status (every field, so that the schema's
// required ones are there even when unchanged), which does not conflict
// with a concurrent spec change; the next run corrects a lost race.
func (c *Controller) patchStatus(ctx context.Context, obj client.Object, status any, same bool) {
	if same {
		return
	}
	patch, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		c.cfg.Log.Warn("Status not written", "resource", fmt.Sprintf("%T %s", obj, obj.GetName()), "error", err)
		return
	}
	if err := c.client.Status().Patch(ctx, obj.DeepCopyObject().(client.Object), client.RawPatch(types.MergePatchType, patch)); err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
		c.cfg.Log.Warn("Status not written", "resource", fmt.Sprintf("%T %s", obj, obj.GetName()), "error", err)
	}
}
