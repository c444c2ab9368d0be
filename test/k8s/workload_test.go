package k8s

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/sigil-spiffe/sigil/internal/attest/node/k8spsat"
	"github.com/sigil-spiffe/sigil/internal/controller/crds"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/fakekubelet"
	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
)

// The test binary re-executed as the pod's workload: it waits for a line
// on stdin (the test has then written its cgroup file), asks the Workload
// API at $workloadSocketEnv with go-spiffe until it holds $workloadIDEnv,
// and prints "SVID <id>".
const (
	workloadSocketEnv = "SIGIL_K8S_WORKLOAD_SOCKET"
	workloadIDEnv     = "SIGIL_K8S_WORKLOAD_ID"
)

func init() {
	if addr := os.Getenv(workloadSocketEnv); addr != "" {
		os.Exit(workloadMain(addr, os.Getenv(workloadIDEnv)))
	}
}

func workloadMain(addr, want string) int {
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fmt.Fprintln(os.Stderr, "workload: stdin:", err)
		return 1
	}
	id, err := spiffeid.FromString(want)
	if err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	svid, err := testutil.WaitForSVID(ctx, addr, id)
	if err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		return 1
	}
	fmt.Println("SVID", svid.ID)
	return 0
}

// TestPodWorkloadEndToEnd is the Kubernetes path without a kubelet: on the
// real API server, a sigil-server with k8s_psat, a sigil-agent attested
// with its pod's TokenRequest token, WorkloadAttestor "k8s" asking a fake
// kubelet (which authenticates the agent's token with TokenReview and
// lists the node's pods as the API server has them), a workload pod whose
// container is this test's child process (its cgroup file in the agent's
// proc_dir names the pod and container, and the pod's status, written as
// the kubelet would, lists the container), an entry for the pod (parent:
// the node's agent ID; selectors k8s:ns, k8s:sa, k8s:pod-uid,
// k8s:container-name only) rendered by sigil-controller from a
// ClusterSPIFFEID, and the sigil-csi node plugin publishing the
// agent's socket directory into the pod's volume path: the go-spiffe
// client in the child receives its SVID through that volume.
func TestPodWorkloadEndToEnd(t *testing.T) {
	c := newPSATCluster(t)
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{c.serverPlugin()}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*deadline)
	defer cancel()

	// The workload's pod, scheduled on the agent's node.
	c.kube.ServiceAccount(t, c.ns, "web")
	pod := c.kube.Pod(t, kubetest.PodSpec{Namespace: c.ns, ServiceAccount: "web", NodeName: c.node.Name(),
		Labels: map[string]string{"app": "web"}})

	// The kubelet: TokenReview decides on the agent's token; /pods lists
	// the node's pods from the API server.
	agentSA := "system:serviceaccount:" + c.ns + ":spire-agent"
	kubelet := fakekubelet.Start(t, fakekubelet.Options{Authenticate: func(tok string) bool {
		r, err := c.kube.ReviewToken(ctx, tok, nil)
		return err == nil && r.Authenticated && r.User.Username == agentSA
	}})
	kubelet.OnRequest(func(int, []corev1.Pod) []corev1.Pod {
		var list corev1.PodList
		if err := c.kube.Do(ctx, http.MethodGet, "/api/v1/pods?fieldSelector=spec.nodeName%3D"+c.node.Name(), nil, &list); err != nil {
			t.Errorf("kubelet: listing the node's pods: %v", err)
		}
		return list.Items
	})

	dir := testutil.ShortTempDir(t)
	psatToken, kubeletToken := filepath.Join(dir, "spire-agent"), filepath.Join(dir, "sa-token")
	c.token(t, c.pod, psatToken)
	if err := os.WriteFile(kubeletToken, []byte(c.kube.TokenRequest(t, c.ns, "spire-agent", kubetest.TokenOptions{Pod: c.pod})), 0o600); err != nil {
		t.Fatal(err)
	}
	procDir, socketDir := filepath.Join(dir, "proc"), filepath.Join(dir, "sock")
	for _, d := range []string{procDir, socketDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testutil.AgentWith(t, srv, "", &testutil.Plugin{Type: "NodeAttestor", Name: k8spsat.Type,
		Data: map[string]any{"cluster": "prod", "token_path": psatToken}})
	cfg.SocketPath = filepath.Join(socketDir, "api.sock")
	cfg.WorkloadAttestors = []testutil.Plugin{{Type: "WorkloadAttestor", Name: "k8s", Data: map[string]any{
		"kubelet_secure_port": kubelet.Port, "kubelet_ca_path": kubelet.CAPath, "token_path": kubeletToken,
		"proc_dir": procDir, "poll_retry_interval": "100ms",
	}}}
	agent := testutil.StartAgent(t, cfg)

	// sigil-controller renders a ClusterSPIFFEID into the pod's entry:
	// parent the node's agent ID, selectors k8s:pod-uid (the controller's
	// own) and the templates' k8s:ns, k8s:sa and k8s:container-name, all of
	// which only WorkloadAttestor "k8s" produces.
	agentID := srv.ID("/spire/agent/k8s_psat/prod/" + c.node.UID())
	webID := srv.ID("/ns/" + c.ns + "/sa/web")
	startController(t, c.kube, srv)
	c.kube.Create(t, "/apis/spire.spiffe.io/v1alpha1/clusterspiffeids", kubetest.Object{
		"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
		"metadata": kubetest.Object{"name": "web-" + c.ns},
		"spec": kubetest.Object{
			"spiffeIDTemplate":          "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
			"namespaceSelector":         kubetest.Object{"matchNames": []string{c.ns}},
			"podSelector":               kubetest.Object{"matchLabels": kubetest.Object{"app": "web"}},
			"workloadSelectorTemplates": []string{"k8s:ns:{{ .PodMeta.Namespace }}", "k8s:sa:{{ .PodSpec.ServiceAccountName }}", "k8s:container-name:main"},
		},
	})
	t.Cleanup(func() { c.kube.Delete(t, "/apis/spire.spiffe.io/v1alpha1/clusterspiffeids/web-"+c.ns) })
	wantSels := []string{"k8s:container-name:main", "k8s:ns:" + c.ns, "k8s:pod-uid:" + pod.UID(), "k8s:sa:web"}
	if err := testutil.Poll(deadline, 20*time.Millisecond, func() (bool, error) {
		for _, en := range srv.Admin(t).ListEntries(t) {
			if testutil.IDString(en.GetSpiffeId()) != webID.String() {
				continue
			}
			var sels []string
			for _, s := range en.GetSelectors() {
				sels = append(sels, s.GetType()+":"+s.GetValue())
			}
			slices.Sort(sels)
			if testutil.IDString(en.GetParentId()) != agentID.String() || !slices.Equal(sels, wantSels) {
				return false, fmt.Errorf("entry %s: parent %s, selectors %q; want %s, %q", webID, testutil.IDString(en.GetParentId()), sels, agentID, wantSels)
			}
			return true, nil
		}
		return false, nil
	}); err != nil {
		t.Fatalf("the controller's entry: %v", err)
	}

	// The pod's volume: sigil-csi publishes the agent's socket directory
	// there, as kubelet asks it (bind mounts need root, as the DaemonSet
	// has; without root the workload dials the agent's socket directly).
	addr := agent.SocketAddr()
	if os.Geteuid() == 0 {
		// The container sees the volume at its mountPath: here a short
		// link to the volume's directory (a unix socket's path is at most
		// 107 bytes, and kubelet's volume paths are long).
		mountPath := filepath.Join(dir, "spiffe")
		if err := os.Symlink(publishCSIVolume(t, c.node.Name(), socketDir, pod.UID()), mountPath); err != nil {
			t.Fatal(err)
		}
		addr = "unix://" + filepath.Join(mountPath, "api.sock")
	} else {
		t.Log("not root: the workload dials the agent socket without the CSI volume")
	}

	// The pod's container: this test's child process.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command(self, "-test.run=^$")
	child.Env = append(os.Environ(), workloadSocketEnv+"="+addr, workloadIDEnv+"="+webID.String())
	var stdout, stderr bytes.Buffer
	child.Stdout, child.Stderr = &stdout, &stderr
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() {
		waitErr = child.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = child.Process.Kill()
		<-exited
	})
	containerID := randomHex(t, 32)
	podSlice := strings.ReplaceAll(pod.UID(), "-", "_")
	pidDir := filepath.Join(procDir, fmt.Sprint(child.Process.Pid))
	if err := os.Mkdir(pidDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// cgroup v2, the kubelet's systemd driver, containerd.
	cgroup := "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + podSlice + ".slice/cri-containerd-" + containerID + ".scope\n"
	if err := os.WriteFile(filepath.Join(pidDir, "cgroup"), []byte(cgroup), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	// The runtime started the container; the kubelet reports it in the
	// pod's status (the agent polls the kubelet until it does).
	status := kubetest.Object{"status": kubetest.Object{
		"phase": "Running",
		"containerStatuses": []kubetest.Object{{
			"name": "main", "image": "registry.invalid/none:1", "imageID": "registry.invalid/none@sha256:" + randomHex(t, 32),
			"containerID": "containerd://" + containerID, "ready": true, "restartCount": 0, "started": true,
			"state": kubetest.Object{"running": kubetest.Object{"startedAt": time.Now().UTC().Format(time.RFC3339)}},
		}},
	}}
	if err := c.kube.Do(ctx, http.MethodPatch, "/api/v1/namespaces/"+c.ns+"/pods/"+pod.Name()+"/status", status, nil); err != nil {
		t.Fatal(err)
	}

	select {
	case <-exited:
		if err := waitErr; err != nil || strings.TrimSpace(stdout.String()) != "SVID "+webID.String() {
			t.Fatalf("workload: %v\nstdout: %s\nstderr: %s\nagent:\n%s", err, stdout.String(), stderr.String(), agent.Proc.Logs())
		}
	case <-time.After(2 * deadline):
		t.Fatalf("the workload got no SVID\nstderr: %s\nagent:\n%s", stderr.String(), agent.Proc.Logs())
	}
	if a := kubelet.Auth(); len(a) == 0 || slices.Contains(a, "refused") {
		t.Fatalf("kubelet authentications %q", a)
	}
}

// publishCSIVolume runs sigil-csi for the agent's socket directory and
// asks it, as kubelet does for the pod's csi.spiffe.io volume, to publish
// the volume; it returns the volume's path (unpublished when t ends).
func publishCSIVolume(t *testing.T, node, socketDir, podUID string) string {
	t.Helper()
	bin := testutil.Build(t, "./cmd/sigil-csi")[0]
	csiSock := filepath.Join(testutil.ShortTempDir(t), "csi.sock")
	proc := testutil.Start(t, testutil.Command{Name: "sigil-csi", Path: bin,
		Args: []string{"-node-id", node, "-csi-socket-path", csiSock, "-workload-api-socket-dir", socketDir, "-log-level", "DEBUG"}})
	if err := testutil.Poll(deadline, 10*time.Millisecond, func() (bool, error) {
		if proc.Exited() {
			return false, fmt.Errorf("sigil-csi exited:\n%s", proc.Logs())
		}
		conn, err := net.Dial("unix", csiSock)
		if err == nil {
			conn.Close()
		}
		return err == nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("unix://"+csiSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	node2 := csi.NewNodeClient(cc)
	parent := filepath.Join(testutil.ShortTempDir(t), "pods", podUID, "volumes", "kubernetes.io~csi", "spiffe-workload-api")
	if err := os.MkdirAll(parent, 0o750); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(parent, "mount")
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	_, err = node2.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: "csi-" + podUID, TargetPath: target, Readonly: true,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		VolumeContext: map[string]string{"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.uid": podUID},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		if _, err := node2.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-" + podUID, TargetPath: target}); err != nil {
			t.Errorf("unpublish: %v", err)
			_ = syscall.Unmount(target, 0)
		}
	})
	return target
}

// crdsOnce applies the controller's CRDs to the shared API server once
// per test binary.
var crdsOnce struct {
	sync.Once
	err error
}

// startController applies spire-controller-manager's CRDs and runs
// sigil-controller against the API server and srv's admin socket, for
// cluster "prod", until the test ends.
func startController(t *testing.T, kube *kubetest.Server, srv *testutil.Server) {
	t.Helper()
	crdsOnce.Do(func() { crdsOnce.err = applyCRDs(kube) })
	if crdsOnce.err != nil {
		t.Fatal(crdsOnce.err)
	}
	dir := testutil.ShortTempDir(t)
	kubeconfig, conf := filepath.Join(dir, "kubeconfig"), filepath.Join(dir, "controller.yaml")
	if err := os.WriteFile(kubeconfig, []byte(kube.KubeconfigToken(kube.Token)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := "apiVersion: spire.spiffe.io/v1alpha1\nkind: ControllerManagerConfig\nclusterName: prod\ntrustDomain: " +
		srv.TrustDomain().Name() + "\nspireServerSocketPath: " + srv.Config.SocketPath + "\nlogLevel: debug\n"
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := testutil.Build(t, "./cmd/sigil-controller")[0]
	testutil.Start(t, testutil.Command{Name: "sigil-controller", Path: bin, Args: []string{"-config", conf, "-kubeconfig", kubeconfig}})
}

// applyCRDs creates the CRDs (or finds them) and waits until they are
// established.
func applyCRDs(kube *kubetest.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	const base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
	for _, f := range crds.Files() {
		j, err := yaml.YAMLToJSON(f.YAML)
		if err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		var crd kubetest.Object
		if err := json.Unmarshal(j, &crd); err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		var se *kubetest.StatusError
		if err := kube.Do(ctx, http.MethodPost, base, crd, nil); err != nil && (!errors.As(err, &se) || se.Code != http.StatusConflict) {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		type condition struct{ Type, Status string }
		if err := testutil.Poll(deadline, 20*time.Millisecond, func() (bool, error) {
			var got struct {
				Status struct {
					Conditions []condition `json:"conditions"`
				} `json:"status"`
			}
			if err := kube.Do(ctx, http.MethodGet, base+"/"+crd.Name(), nil, &got); err != nil {
				return false, err
			}
			return slices.Contains(got.Status.Conditions, condition{"Established", "True"}), nil
		}); err != nil {
			return fmt.Errorf("CRD %s not established: %w", crd.Name(), err)
		}
	}
	return nil
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
