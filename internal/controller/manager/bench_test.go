package manager

// BenchmarkController1000Pods: what a ClusterSPIFFEID costs when 1,000
// pods arrive, against the real API server and an in-process sigil-server
// (it lives here, not under bench/, because only the controller's
// packages may link controller-runtime):
//
//	go test ./internal/controller/manager -run '^$' -bench Controller1000Pods -benchtime 3x -count 3
//
// Each op creates a namespace, a ClusterSPIFFEID selecting it and 1,000
// pods on 10 nodes (8 creators in parallel, as a Deployment scale-up's
// ReplicaSet controller would), and measures for each pod, from the start
// of its create request:
//
//   - watch: until a pod informer of the benchmark's own (controller-
//     runtime's cache, as the controller's) delivers it: the floor, what
//     the controller cannot do faster than;
//   - entry: until the controller's BatchCreateEntry that wrote its entry
//     returned OK.
//
// and the time from the first create to the last entry written (all-ms),
// then from the ClusterSPIFFEID's deletion until its 1,000 entries are
// gone (gc-ms). BenchmarkController1000PodsToAgent adds the agent.

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	ctrlcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentapp "github.com/sigil-spiffe/sigil/internal/app/agent"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/controller/api/v1alpha1"
	"github.com/sigil-spiffe/sigil/internal/controller/reconcile"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
)

// stamps records when something named happened, once.
type stamps struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (s *stamps) set(name string, t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.at[name]; !ok {
		s.at[name] = t
	}
}

func (s *stamps) get(name string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.at[name]
	return t, ok
}

// timedEntries records when each entry's creation returned OK, by SPIFFE
// ID path.
type timedEntries struct {
	reconcile.EntryAPI
	written *stamps
}

func (e *timedEntries) BatchCreateEntry(ctx context.Context, in *entryv1.BatchCreateEntryRequest, opts ...grpc.CallOption) (*entryv1.BatchCreateEntryResponse, error) {
	resp, err := e.EntryAPI.BatchCreateEntry(ctx, in, opts...)
	now := time.Now()
	if err == nil {
		for i, r := range resp.GetResults() {
			if codes.Code(r.GetStatus().GetCode()) == codes.OK && i < len(in.Entries) {
				e.written.set(in.Entries[i].GetSpiffeId().GetPath(), now)
			}
		}
	}
	return resp, err
}

func pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func BenchmarkController1000Pods(b *testing.B) { benchPods(b, 10, false) }

// BenchmarkController1000PodsToAgent is the same with the 1,000 pods on one
// node whose agent (an in-process sigil-agent, their parent through
// parentIDTemplate) receives their SVIDs: agent-ms is from the first create request until
// the agent serves all 1,000 X509-SVIDs.
func BenchmarkController1000PodsToAgent(b *testing.B) { benchPods(b, 1, true) }

func benchPods(b *testing.B, nodes int, withAgent bool) {
	const pods, creators = 1000, 8
	k := newCluster(b)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	dir := testutil.ShortTempDir(b)
	scfg := inproc.ServerConfig(td, filepath.Join(dir, "data"), filepath.Join(dir, "api.sock"), 0)
	srv := inproc.RunServer(b, scfg, nil, serverapp.Options{})
	admin := srv.Admin(b)
	written := &stamps{at: map[string]time.Time{}}
	class := kubetest.Name("bench")
	fc := &FileConfig{ClusterName: "demo", TrustDomain: "example.org", ClusterDomain: "cluster.local", ClassName: class}
	var agent *inproc.Agent
	if withAgent {
		// A join-token agent (a k8s_psat agent ID cannot be a join token's)
		// is made the pods' parent with parentIDTemplate.
		token := admin.CreateJoinToken(b, spiffeid.ID{})
		fc.ParentIDTemplate = admin.JoinTokenAgentID(token).String()
		agent = inproc.RunAgent(b, srv.AgentConfig(b, filepath.Join(dir, "agent"), token), nil, agentapp.Options{})
	}
	opts, err := fc.OptionsFrom(k.rest)
	if err != nil {
		b.Fatal(err)
	}
	opts.Controller.GCInterval = time.Hour
	opts.Controller.Entries = &timedEntries{EntryAPI: admin.Entry, written: written}
	opts.Controller.TrustDomains = trustdomainv1.NewTrustDomainClient(admin.Conn)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()

	// The benchmark's own pod informer: when the API server's watch
	// delivers each pod.
	seen := &stamps{at: map[string]time.Time{}}
	scheme, _ := Scheme()
	watch, err := ctrlcache.New(k.rest, ctrlcache.Options{Scheme: scheme})
	if err != nil {
		b.Fatal(err)
	}
	inf, err := watch.GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: func(o any) {
		if p, ok := o.(*corev1.Pod); ok {
			seen.set(p.Namespace+"/"+p.Name, time.Now())
		}
	}}); err != nil {
		b.Fatal(err)
	}
	go func() { _ = watch.Start(ctx) }()
	if !watch.WaitForCacheSync(ctx) {
		b.Fatal("cache not synced")
	}

	var nodeNames []string
	for range nodes {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: kubetest.Name("node")}}
		if err := k.client.Create(ctx, n); err != nil {
			b.Fatal(err)
		}
		nodeNames = append(nodeNames, n.Name)
	}
	svids := func() int { return agent.A.Status().SVIDs }
	var toAgent []time.Duration

	var entryLat, watchLat []time.Duration
	var all, gc []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ns := kubetest.Name("bench")
		for _, o := range []client.Object{
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default"}},
		} {
			if err := k.client.Create(ctx, o); err != nil {
				b.Fatal(err)
			}
		}
		csid := &v1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: ns}, Spec: v1alpha1.ClusterSPIFFEIDSpec{
			SPIFFEIDTemplate:          "spiffe://{{ .TrustDomain }}/" + ns + "/{{ .PodMeta.Name }}",
			NamespaceSelector:         &v1alpha1.NamespaceSelector{MatchNames: []string{ns}},
			WorkloadSelectorTemplates: []string{"k8s:ns:{{ .PodMeta.Namespace }}", "k8s:sa:{{ .PodSpec.ServiceAccountName }}"},
			ClassName:                 class,
		}}
		if err := k.client.Create(ctx, csid); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()

		started := &stamps{at: map[string]time.Time{}}
		first := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, creators)
		for c := range creators {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := c; j < pods; j += creators {
					name := fmt.Sprintf("p%04d", j)
					p := &corev1.Pod{
						ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
						Spec: corev1.PodSpec{NodeName: nodeNames[j%nodes], ServiceAccountName: "default", AutomountServiceAccountToken: new(false),
							Containers: []corev1.Container{{Name: "main", Image: "registry.invalid/none:1"}}},
					}
					started.set(name, time.Now())
					if err := k.client.Create(ctx, p); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		var last time.Time
		err := testutil.Poll(5*time.Minute, 5*time.Millisecond, func() (bool, error) {
			for j := range pods {
				name := fmt.Sprintf("p%04d", j)
				w, ok := written.get("/" + ns + "/" + name)
				if !ok {
					return false, nil
				}
				if w.After(last) {
					last = w
				}
			}
			return true, nil
		})
		if err != nil {
			b.Fatalf("entries not all written: %v", err)
		}
		all = append(all, last.Sub(first))
		if withAgent {
			if err := testutil.Poll(5*time.Minute, 5*time.Millisecond, func() (bool, error) { return svids() >= pods, nil }); err != nil {
				b.Fatalf("the agent serves %d SVIDs: %v", svids(), err)
			}
			toAgent = append(toAgent, time.Since(first))
		}
		for j := range pods {
			name := fmt.Sprintf("p%04d", j)
			s, _ := started.get(name)
			w, _ := written.get("/" + ns + "/" + name)
			entryLat = append(entryLat, w.Sub(s))
			if v, ok := seen.get(ns + "/" + name); ok {
				watchLat = append(watchLat, v.Sub(s))
			}
		}

		// Deleting the resource: its 1,000 entries go.
		gcStart := time.Now()
		if err := k.client.Delete(ctx, csid); err != nil {
			b.Fatal(err)
		}
		err = testutil.Poll(5*time.Minute, 10*time.Millisecond, func() (bool, error) {
			resp, err := admin.Entry.CountEntries(ctx, &entryv1.CountEntriesRequest{})
			return err == nil && resp.GetCount() == 0, err
		})
		if err != nil {
			b.Fatal(err)
		}
		gc = append(gc, time.Since(gcStart))
		if withAgent {
			b.StopTimer()
			if err := testutil.Poll(5*time.Minute, 10*time.Millisecond, func() (bool, error) { return svids() == 0, nil }); err != nil {
				b.Fatalf("the agent still serves %d SVIDs: %v", svids(), err)
			}
			b.StartTimer()
		}
	}
	b.StopTimer()
	b.ReportMetric(ms(pct(entryLat, 0.5)), "entry-p50-ms")
	b.ReportMetric(ms(pct(entryLat, 0.99)), "entry-p99-ms")
	b.ReportMetric(ms(pct(entryLat, 1)), "entry-max-ms")
	if len(watchLat) > 0 {
		b.ReportMetric(ms(pct(watchLat, 0.5)), "watch-p50-ms")
		b.ReportMetric(ms(pct(watchLat, 0.99)), "watch-p99-ms")
	}
	b.ReportMetric(ms(pct(all, 0.5)), "all-ms")
	b.ReportMetric(ms(pct(gc, 0.5)), "gc-ms")
	if withAgent {
		b.ReportMetric(ms(pct(toAgent, 0.5)), "agent-ms")
	}
}
