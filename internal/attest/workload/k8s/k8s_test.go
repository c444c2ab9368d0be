package k8s

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sigil-spiffe/sigil/internal/attest/workload/cgroup"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/fakekubelet"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// The IDs of the cgroup package's fixtures (its testdata/README.md says
// where each shape comes from); each holds pid 4242.
const (
	fixtures = "../cgroup/testdata/"
	idB      = "51a26816221d284f3eeca29d1cc373d81a22813df09aa83a3cb031320a3f67ff" // containerd
	idC      = "d919534105f4a85e3046d7328191bd276fd1068e107058e46575a2bbbacb079f" // CRI-O
	pod1     = "28a98c5c-748b-46b4-966b-155b4067c70c"
	pod2     = "c221d8a1-93b0-402c-9605-a5c2699a45e9"
	pid      = 4242
	token    = "kubelet-token-of-the-agent"
)

const (
	webImage   = "registry.example.org/web:1.4"
	webImageID = "registry.example.org/web@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	sideImage  = "docker.io/envoyproxy/envoy:v1.33.0"
	sideID     = "docker.io/envoyproxy/envoy@sha256:1111111111111111111111111111111111111111111111111111111111111111"
	initImage  = "busybox:1.37"
	initID     = "docker.io/library/busybox@sha256:2222222222222222222222222222222222222222222222222222222222222222"
	otherID    = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

// webPod is pod1 running container idB ("web") beside a sidecar, after an
// init container, owned by a ReplicaSet.
func webPod() corev1.Pod {
	p := fakekubelet.Pod("shop", "web-5d4f8-abcde", pod1, "node-1", "web-sa",
		fakekubelet.Running("web", webImage, webImageID, idB),
		fakekubelet.Running("envoy", sideImage, sideID, otherID))
	p.Labels = map[string]string{"app": "web", "tier": "front"}
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d4f8", UID: "rs-uid-1"}}
	p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "init", Image: initImage, ImageID: initID,
		ContainerID: "containerd://" + strings.Repeat("e", 64),
		State:       corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}}}
	return p
}

// otherPod is pod2 with an unrelated container.
func otherPod() corev1.Pod {
	return fakekubelet.Pod("kube-system", "dns-1", pod2, "node-1", "dns",
		fakekubelet.Running("dns", "dns:1", "dns@sha256:"+strings.Repeat("3", 64), strings.Repeat("f", 64)))
}

func webSelectors(container bool) []string {
	s := []string{
		"ns:shop", "sa:web-sa", "node-name:node-1", "pod-uid:" + pod1, "pod-name:web-5d4f8-abcde",
		"pod-image-count:2", "pod-init-image-count:1",
		"pod-image:" + webImage, "pod-image:" + webImageID, "pod-image:" + sideImage, "pod-image:" + sideID,
		"pod-init-image:" + initImage, "pod-init-image:" + initID,
		"pod-label:app:web", "pod-label:tier:front",
		"pod-owner:ReplicaSet:web-5d4f8", "pod-owner-uid:ReplicaSet:rs-uid-1",
	}
	if container {
		s = append(s, "container-name:web", "container-image:"+webImage, "container-image:"+webImageID)
	}
	slices.Sort(s)
	return s
}

func values(sels []selector.Selector) []string {
	var out []string
	for _, s := range sels {
		if s.Type != Type {
			out = append(out, "WRONG TYPE "+s.Type)
		}
		out = append(out, s.Value)
	}
	slices.Sort(out)
	return out
}

// secureKubelet starts a kubelet expecting the token, and a config for it.
func secureKubelet(t *testing.T, pods ...corev1.Pod) (*fakekubelet.Kubelet, Config) {
	t.Helper()
	k := fakekubelet.Start(t, fakekubelet.Options{Token: token})
	k.SetPods(pods...)
	tokenPath := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenPath, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return k, Config{
		Port: k.Port, KubeletCAPath: k.CAPath, TokenPath: tokenPath, NewLocator: true,
		ProcDir: fixtures + "k8s-v2-systemd-containerd", PollRetryInterval: 5 * time.Millisecond,
		Getenv: func(string) string { return "" },
	}
}

func newAttestor(t *testing.T, cfg Config) *Attestor {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

func attest(t *testing.T, a *Attestor) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sels, err := a.Attest(ctx, pid)
	return values(sels), err
}

// TestAttestSecurePort: the pod of the process's cgroups and its container,
// from a kubelet on its secure port asked with the service-account token
// and verified with the kubelet CA (by chain: 127.0.0.1 is in no name).
func TestAttestSecurePort(t *testing.T) {
	k, cfg := secureKubelet(t, otherPod(), webPod())
	got, err := attest(t, newAttestor(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	if want := webSelectors(true); !slices.Equal(got, want) {
		t.Fatalf("selectors\n got %q\nwant %q", got, want)
	}
	if a := k.Auth(); !slices.Equal(a, []string{"token"}) {
		t.Fatalf("kubelet saw %q", a)
	}
}

// TestAttestFixtures: every Kubernetes cgroup shape (cgroup v1 and v2,
// cgroupfs and systemd drivers, containerd and CRI-O, a kind node) finds
// its pod and container, with the new locator and with SPIRE's legacy one.
func TestAttestFixtures(t *testing.T) {
	crioPod := fakekubelet.Pod("ns2", "crio-pod", pod2, "node-1", "sa2", fakekubelet.Running("app", "app:1", "app@sha256:"+strings.Repeat("4", 64), idC))
	crioPod.Status.ContainerStatuses[0].ContainerID = "cri-o://" + idC
	for _, dir := range []string{"k8s-v1-cgroupfs-containerd", "k8s-v2-cgroupfs-containerd", "k8s-v2-systemd-containerd",
		"k8s-v1-systemd-crio", "k8s-v2-systemd-crio", "kind-node-v1"} {
		for _, newLocator := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/new=%v", dir, newLocator), func(t *testing.T) {
				_, cfg := secureKubelet(t, otherPod(), webPod(), crioPod)
				cfg.ProcDir, cfg.NewLocator = fixtures+dir, newLocator
				got, err := attest(t, newAttestor(t, cfg))
				if err != nil {
					t.Fatal(err)
				}
				want := "pod-uid:" + pod1
				if strings.Contains(dir, "crio") {
					want = "pod-uid:" + pod2
				}
				if !slices.Contains(got, want) {
					t.Fatalf("selectors %q, want %s", got, want)
				}
			})
		}
	}
}

// TestAttestNotInContainer: a host process gets no selectors, no error,
// and the kubelet is not asked.
func TestAttestNotInContainer(t *testing.T) {
	for _, dir := range []string{"host-v2-service", "host-v1-session"} {
		k, cfg := secureKubelet(t, webPod())
		cfg.ProcDir = fixtures + dir
		got, err := attest(t, newAttestor(t, cfg))
		if err != nil || got != nil {
			t.Fatalf("%s: %q, %v", dir, got, err)
		}
		if n := k.Requests(); n != 0 {
			t.Fatalf("%s: %d kubelet requests", dir, n)
		}
	}
}

// TestAttestRetriesUntilListed: a container whose ID is not in its pod's
// status yet (the kubelet has not caught up with the runtime) is found at
// a later poll, as SPIRE does; each poll is a new GET /pods.
func TestAttestRetriesUntilListed(t *testing.T) {
	k, cfg := secureKubelet(t)
	k.OnRequest(func(n int, _ []corev1.Pod) []corev1.Pod {
		p := webPod()
		if n < 3 {
			p.Status.ContainerStatuses[0].ContainerID = "" // created, not yet reported
		}
		return []corev1.Pod{otherPod(), p}
	})
	got, err := attest(t, newAttestor(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, webSelectors(true)) {
		t.Fatalf("selectors %q", got)
	}
	if n := k.Requests(); n != 3 {
		t.Fatalf("%d kubelet requests, want 3", n)
	}
}

// TestAttestGivesUp: a container never listed fails after max_poll_attempts
// GET /pods, naming the container and pod; the caller's deadline ends the
// polling too.
func TestAttestGivesUp(t *testing.T) {
	k, cfg := secureKubelet(t, otherPod())
	cfg.MaxPollAttempts = 4
	_, err := attest(t, newAttestor(t, cfg))
	if err == nil || !strings.Contains(err.Error(), "container "+idB+" of pod "+pod1+" not in the kubelet's pod list after 4 attempts") {
		t.Fatalf("error %v", err)
	}
	if n := k.Requests(); n != 4 {
		t.Fatalf("%d kubelet requests, want 4", n)
	}

	_, cfg = secureKubelet(t, otherPod())
	a := newAttestor(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = a.Attest(ctx, pid)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not in the kubelet's pod list") {
		t.Fatalf("error %v", err)
	}
}

// TestAttestKubeletErrors: a failing kubelet is retried; a refused token
// is reported with the kubelet's status; a kubelet whose certificate the
// CA did not issue is refused unless skip_kubelet_verification.
func TestAttestKubeletErrors(t *testing.T) {
	k, cfg := secureKubelet(t, webPod())
	k.FailNext(2)
	if _, err := attest(t, newAttestor(t, cfg)); err != nil {
		t.Fatal(err)
	}
	if n := k.Requests(); n != 3 {
		t.Fatalf("%d requests", n)
	}

	_, cfg = secureKubelet(t, webPod())
	if err := os.WriteFile(cfg.TokenPath, []byte("stolen"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.MaxPollAttempts = 2
	_, err := attest(t, newAttestor(t, cfg))
	if err == nil || !strings.Contains(err.Error(), `401 Unauthorized: "Unauthorized"`) || strings.Contains(err.Error(), "stolen") {
		t.Fatalf("error %v", err)
	}

	_, cfg = secureKubelet(t, webPod())
	other := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(other, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: testca.New(t).Cert.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.KubeletCAPath, cfg.MaxPollAttempts = other, 1
	if _, err := attest(t, newAttestor(t, cfg)); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("error %v", err)
	}
	cfg.SkipKubeletVerification = true
	if _, err := attest(t, newAttestor(t, cfg)); err != nil {
		t.Fatal(err)
	}
}

// TestAttestNodeName: with a node name the kubelet is asked at that host
// and its certificate must name it.
func TestAttestNodeName(t *testing.T) {
	_, cfg := secureKubelet(t, webPod())
	cfg.NodeNameEnv = "SIGIL_TEST_NODE"
	cfg.Getenv = func(k string) string {
		if k == "SIGIL_TEST_NODE" {
			return "localhost"
		}
		return ""
	}
	if _, err := attest(t, newAttestor(t, cfg)); err != nil {
		t.Fatal(err)
	}
	cfg.NodeName, cfg.MaxPollAttempts = "127.0.0.1.nip.invalid", 1
	if _, err := attest(t, newAttestor(t, cfg)); err == nil || !strings.Contains(err.Error(), "127.0.0.1.nip.invalid") {
		t.Fatalf("error %v", err)
	}
}

// TestAttestClientCertAndAnonymous: the secure port with a client
// certificate, or with no credentials at all.
func TestAttestClientCertAndAnonymous(t *testing.T) {
	ca := testca.New(t)
	k := fakekubelet.Start(t, fakekubelet.Options{ClientCA: ca.Cert, Anonymous: false})
	k.SetPods(webPod())
	cert, key := ca.Leaf(t, testca.Subject("system:node:node-1"))
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := os.WriteFile(certPath, testca.CertsPEM(cert), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, testca.KeyPEM(t, key), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Port: k.Port, KubeletCAPath: k.CAPath, CertificatePath: certPath, PrivateKeyPath: keyPath, NewLocator: true,
		ProcDir: fixtures + "k8s-v2-systemd-containerd", Getenv: func(string) string { return "" }}
	if _, err := attest(t, newAttestor(t, cfg)); err != nil {
		t.Fatal(err)
	}
	anon := fakekubelet.Start(t, fakekubelet.Options{Anonymous: true})
	anon.SetPods(webPod())
	cfg = Config{Port: anon.Port, KubeletCAPath: anon.CAPath, Anonymous: true, NewLocator: true,
		ProcDir: fixtures + "k8s-v2-systemd-containerd", Getenv: func(string) string { return "" }}
	if _, err := attest(t, newAttestor(t, cfg)); err != nil {
		t.Fatal(err)
	}
	if a, b := k.Auth(), anon.Auth(); !slices.Equal(a, []string{"cert"}) || !slices.Equal(b, []string{"anonymous"}) {
		t.Fatalf("auth %q %q", a, b)
	}
}

// TestAttestReadOnlyPort: plain HTTP, no credentials read.
func TestAttestReadOnlyPort(t *testing.T) {
	k := fakekubelet.Start(t, fakekubelet.Options{ReadOnly: true})
	k.SetPods(webPod())
	cfg := Config{Port: k.Port, ReadOnly: true, KubeletCAPath: "/nonexistent", TokenPath: "/nonexistent", NewLocator: true,
		ProcDir: fixtures + "k8s-v2-systemd-containerd"}
	got, err := attest(t, newAttestor(t, cfg))
	if err != nil || !slices.Equal(got, webSelectors(true)) {
		t.Fatalf("%q, %v", got, err)
	}
}

// TestTokenReread: the token is re-read at reload_interval (kubelet
// rotates projected tokens), and a missing credential stops New with its
// key's name.
func TestTokenReread(t *testing.T) {
	k := fakekubelet.Start(t, fakekubelet.Options{Token: "first"})
	k.SetPods(webPod())
	tokenPath := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenPath, []byte("first"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Port: k.Port, KubeletCAPath: k.CAPath, TokenPath: tokenPath, NewLocator: true, ReloadInterval: time.Nanosecond,
		ProcDir: fixtures + "k8s-v2-systemd-containerd", PollRetryInterval: time.Nanosecond, MaxPollAttempts: 1,
		Getenv: func(string) string { return "" }}
	a := newAttestor(t, cfg)
	if _, err := attest(t, a); err != nil {
		t.Fatal(err)
	}
	k.SetToken("second")
	if err := os.WriteFile(tokenPath, []byte("second\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := attest(t, a); err != nil {
		t.Fatal(err)
	}
	if got := k.Auth(); !slices.Equal(got, []string{"token", "token"}) {
		t.Fatalf("auth %q", got)
	}
	cfg.TokenPath = filepath.Join(t.TempDir(), "missing")
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "kubelet token (token_path)") {
		t.Fatalf("error %v", err)
	}
	cfg.KubeletCAPath = tokenPath
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("error %v", err)
	}
}

// TestAttestSharesPodLists: concurrent callers share one GET /pods.
func TestAttestSharesPodLists(t *testing.T) {
	k, cfg := secureKubelet(t, webPod())
	cfg.PollRetryInterval = time.Minute
	a := newAttestor(t, cfg)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if got, err := attest(t, a); err != nil || len(got) == 0 {
				t.Errorf("%q, %v", got, err)
			}
		})
	}
	wg.Wait()
	if n := k.Requests(); n != 1 {
		t.Fatalf("%d kubelet requests for 20 callers", n)
	}
}

// TestAttestContainerSelectors: disable_container_selectors gives the pod's
// selectors, even before the container is listed; an init container is
// found like the others; a container listed in two pods is an error.
func TestAttestContainerSelectors(t *testing.T) {
	k, cfg := secureKubelet(t)
	p := webPod()
	p.Status.ContainerStatuses[0].ContainerID = ""
	k.SetPods(p)
	cfg.DisableContainerSelectors = true
	got, err := attest(t, newAttestor(t, cfg))
	if err != nil || !slices.Equal(got, webSelectors(false)) {
		t.Fatalf("%q, %v", got, err)
	}

	k, cfg = secureKubelet(t)
	p = webPod()
	p.Status.InitContainerStatuses[0].ContainerID = "containerd://" + idB
	p.Status.ContainerStatuses[0].ContainerID = ""
	k.SetPods(p)
	got, err = attest(t, newAttestor(t, cfg))
	if err != nil || !slices.Contains(got, "container-name:init") || !slices.Contains(got, "container-image:"+initImage) {
		t.Fatalf("%q, %v", got, err)
	}

	// CRI-O as KubeEdge runs it names no pod in the cgroup: every pod is
	// searched, and two listing the container is an error.
	proc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(proc, "4242"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "4242", "cgroup"), []byte("0::/../crio-"+idB+".scope\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	twin := webPod()
	twin.UID, twin.Name = "99999999-8888-7777-6666-555555555555", "twin"
	k, cfg = secureKubelet(t, otherPod(), webPod())
	cfg.ProcDir = proc
	for _, legacy := range []bool{false, true} {
		cfg.NewLocator = !legacy
		if got, err := attest(t, newAttestor(t, cfg)); err != nil || !slices.Contains(got, "pod-uid:"+pod1) {
			t.Fatalf("legacy=%v: %q, %v", legacy, got, err)
		}
	}
	k.SetPods(webPod(), twin)
	if _, err := attest(t, newAttestor(t, cfg)); err == nil || !strings.Contains(err.Error(), "is listed in two pods, shop/web-5d4f8-abcde and shop/twin") {
		t.Fatalf("error %v", err)
	}
}

// TestLegacyLocate: SPIRE's legacy patterns, and their conflicts.
func TestLegacyLocate(t *testing.T) {
	for _, tc := range []struct {
		path     string
		pod, cid string
	}{
		{"/kubepods/burstable/pod2c48913c-b29f-11e7-9350-020968147796/" + idB, "2c48913c-b29f-11e7-9350-020968147796", idB},
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c48913c_b29f_11e7_9350_020968147796.slice/docker-" + idB + ".scope", "2c48913c-b29f-11e7-9350-020968147796", idB},
		{"/kubepods-besteffort-pod72f7f152_440c_66ac_9084_e0fc1d8a910c.slice:cri-containerd:" + idB, "72f7f152-440c-66ac-9084-e0fc1d8a910c", idB},
		{"/../../pod2c48913c-b29f-11e7-9350-020968147796/" + idB, "2c48913c-b29f-11e7-9350-020968147796", idB},
		{"/../crio-" + idB + ".scope", "", idB},
		{"/docker/" + idB, "", ""},
		{"/system.slice/nginx.service", "", ""},
	} {
		w, err := legacyLocate([]cgroup.Entry{{HierarchyID: "0", Path: tc.path}})
		if err != nil || w.podUID != tc.pod || w.containerID != tc.cid {
			t.Errorf("%s: %+v, %v", tc.path, w, err)
		}
	}
	_, err := legacyLocate([]cgroup.Entry{{Path: "/kubepods/pod" + pod1 + "/" + idB}, {Path: "/kubepods/pod" + pod1 + "/" + idC}})
	if !errors.Is(err, cgroup.ErrConflict) {
		t.Fatalf("error %v", err)
	}
}

// benchPod is a pod as a kubelet lists it, with what a Deployment's pod
// usually carries (labels, an owner, two containers with environment,
// mounts, resources and probes, conditions).
func benchPod(i int) corev1.Pod {
	uid := fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
	cid := fmt.Sprintf("%064x", i+1)
	p := fakekubelet.Pod("shop", fmt.Sprintf("web-5d4f8-%05d", i), uid, "node-1", "web-sa",
		fakekubelet.Running("web", webImage, webImageID, cid),
		fakekubelet.Running("envoy", sideImage, sideID, fmt.Sprintf("%064x", i+1<<32)))
	p.Labels = map[string]string{"app": "web", "tier": "front", "pod-template-hash": "5d4f8"}
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d4f8", UID: "rs-uid-1"}}
	for j := range p.Spec.Containers {
		c := &p.Spec.Containers[j]
		for k := range 8 {
			c.Env = append(c.Env, corev1.EnvVar{Name: fmt.Sprintf("SETTING_%d", k), Value: "value-of-the-setting"})
		}
		c.VolumeMounts = []corev1.VolumeMount{{Name: "spiffe-workload-api", MountPath: "/spiffe-workload-api", ReadOnly: true}}
		c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}
		c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready"}}, PeriodSeconds: 10}
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}, {Type: corev1.PodScheduled, Status: corev1.ConditionTrue}}
	p.Status.PodIP, p.Status.HostIP = "10.0.0.1", "192.0.2.10"
	return p
}

// BenchmarkAttest is one attestation of a process in a pod's container:
// its cgroup file read and located, the pod found in the kubelet's list,
// the selectors. "cached": the default poll_retry_interval (500 ms), so
// calls in a burst share one GET /pods; "get-pods-N": every call asks the
// kubelet (in this process, HTTPS on a kept-alive connection) for a list
// of N pods and decodes it (110 is the kubelet's default maximum).
func BenchmarkAttest(b *testing.B) {
	for _, tc := range []struct {
		name     string
		pods     int
		interval time.Duration
	}{{"cached", 30, 0}, {"get-pods-30", 30, time.Nanosecond}, {"get-pods-110", 110, time.Nanosecond}} {
		b.Run(tc.name, func(b *testing.B) {
			pods := []corev1.Pod{webPod()}
			for i := range tc.pods - 1 {
				pods = append(pods, benchPod(i+1))
			}
			k := fakekubelet.Start(b, fakekubelet.Options{Token: token})
			k.SetPods(pods...)
			tokenPath := filepath.Join(b.TempDir(), "token")
			if err := os.WriteFile(tokenPath, []byte(token), 0o600); err != nil {
				b.Fatal(err)
			}
			a, err := New(Config{Port: k.Port, KubeletCAPath: k.CAPath, TokenPath: tokenPath, NewLocator: true,
				ProcDir: fixtures + "k8s-v2-systemd-containerd", PollRetryInterval: tc.interval, Getenv: func(string) string { return "" }})
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			ctx := context.Background()
			before := k.Requests()
			for b.Loop() {
				if sels, err := a.Attest(ctx, pid); err != nil || len(sels) != 20 {
					b.Fatal(len(sels), err)
				}
			}
			b.ReportMetric(float64(k.Requests()-before)/float64(b.N), "gets/op")
			b.ReportMetric(float64(len(podListJSONOf(b, pods)))/1024, "list-KiB")
		})
	}
	// The agent's share of get-pods-110: decoding the answer alone.
	b.Run("decode-110", func(b *testing.B) {
		pods := []corev1.Pod{webPod()}
		for i := range 109 {
			pods = append(pods, benchPod(i+1))
		}
		data := podListJSONOf(b, pods)
		for b.Loop() {
			var l podListJSON
			if err := json.Unmarshal(data, &l); err != nil || len(l.Items) != 110 {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(data))/1024, "list-KiB")
	})
}

// podListJSONOf is the kubelet's answer listing pods.
func podListJSONOf(b *testing.B, pods []corev1.Pod) []byte {
	data, err := json.Marshal(corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}, Items: pods})
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// FuzzPodList: whatever the kubelet answers, decoding and matching do not
// panic, and selectors come only with a pod whose status lists the
// container (or, with disable_container_selectors, the pod the cgroups
// named), carrying that pod's UID.
func FuzzPodList(f *testing.F) {
	data, err := json.Marshal(corev1.PodList{Items: []corev1.Pod{webPod(), otherPod()}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data, pod1, false)
	f.Add(data, "", true)
	f.Add([]byte(`{"items":[{"metadata":{"uid":"u"},"status":{"containerStatuses":[{"containerID":"x://`+idB+`"}]}},{"status":{"initContainerStatuses":[{"containerID":"://`+idB+`"}]}}]}`), "", false)
	f.Add([]byte(`{"items":null}`), pod1, true)
	f.Fuzz(func(t *testing.T, data []byte, podUID string, podOnly bool) {
		var l podListJSON
		if json.Unmarshal(data, &l) != nil {
			return
		}
		list := newPodList(1, time.Now(), l.Items)
		a := &Attestor{cfg: Config{DisableContainerSelectors: podOnly}}
		sels, err := a.match(list, where{podUID: podUID, containerID: idB})
		if err != nil || sels == nil {
			return
		}
		var uid string
		for _, s := range sels {
			if s.Type != Type {
				t.Fatalf("selector %v", s)
			}
			if v, ok := strings.CutPrefix(s.Value, "pod-uid:"); ok {
				uid = v
			}
		}
		if podUID != "" && uid != podUID {
			t.Fatalf("cgroups named pod %q, selectors are of %q", podUID, uid)
		}
		found := false
		for i := range list.pods {
			p := &list.pods[i]
			if p.Metadata.UID == uid && (p.container(idB) != nil || podOnly && podUID != "") {
				found = true
			}
		}
		if !found {
			t.Fatalf("selectors %v for no pod listing the container", sels)
		}
	})
}
