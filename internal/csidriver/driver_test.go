package csidriver

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// driver serves a driver for socketDir on a CSI socket, as the DaemonSet
// runs it, and returns kubelet's side: the Identity and Node clients.
func driver(t *testing.T, socketDir string) (csi.IdentityClient, csi.NodeClient) {
	t.Helper()
	d, err := New(Config{NodeID: "node-1", WorkloadAPISocketDir: socketDir})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(shortDir(t), "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{SocketPath: sock, Driver: d}).Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind: %v", err)
		}
	})
	// kubelet dials once the socket is there (it watches the plugin
	// directory); so does the test.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the CSI socket never accepted a connection: %v", err)
		}
	}
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return csi.NewIdentityClient(cc), csi.NewNodeClient(cc)
}

// shortDir is a temporary directory with a path short enough for a unix
// socket.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "csi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// publishRequest is what kubelet sends for a csi.spiffe.io ephemeral
// inline volume with readOnly: true.
func publishRequest(target string) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{
		VolumeId:   "csi-4b0b8a3c2f1e",
		TargetPath: target,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		Readonly: true,
		VolumeContext: map[string]string{
			"csi.storage.k8s.io/ephemeral":     "true",
			"csi.storage.k8s.io/pod.name":      "web-5d4f8-abcde",
			"csi.storage.k8s.io/pod.namespace": "shop",
		},
	}
}

func TestIdentityAndNodeInfo(t *testing.T) {
	id, node := driver(t, t.TempDir())
	info, err := id.GetPluginInfo(ctx(t), &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != "csi.spiffe.io" || info.GetVendorVersion() == "" {
		t.Fatalf("%v, %v", info, err)
	}
	if caps, err := id.GetPluginCapabilities(ctx(t), &csi.GetPluginCapabilitiesRequest{}); err != nil || len(caps.GetCapabilities()) != 0 {
		t.Fatalf("%v, %v", caps, err)
	}
	if _, err := id.Probe(ctx(t), &csi.ProbeRequest{}); err != nil {
		t.Fatal(err)
	}
	ni, err := node.NodeGetInfo(ctx(t), &csi.NodeGetInfoRequest{})
	if err != nil || ni.GetNodeId() != "node-1" {
		t.Fatalf("%v, %v", ni, err)
	}
	nc, err := node.NodeGetCapabilities(ctx(t), &csi.NodeGetCapabilitiesRequest{})
	if err != nil || len(nc.GetCapabilities()) != 2 ||
		nc.GetCapabilities()[0].GetRpc().GetType() != csi.NodeServiceCapability_RPC_VOLUME_CONDITION ||
		nc.GetCapabilities()[1].GetRpc().GetType() != csi.NodeServiceCapability_RPC_GET_VOLUME_STATS {
		t.Fatalf("%v, %v", nc, err)
	}
	// The controller-side and staging calls kubelet never makes for this
	// driver are not implemented.
	if _, err := node.NodeStageVolume(ctx(t), &csi.NodeStageVolumeRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("NodeStageVolume: %v", err)
	}
}

// TestPublishValidation: what spiffe-csi-driver refuses is refused, with
// InvalidArgument, and nothing is created.
func TestPublishValidation(t *testing.T) {
	_, node := driver(t, t.TempDir())
	target := filepath.Join(t.TempDir(), "mount")
	for _, tc := range []struct {
		edit func(*csi.NodePublishVolumeRequest)
		want string
	}{
		{func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "" }, "missing required volume id"},
		{func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "" }, "missing required target path"},
		{func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "relative/mount" }, "is not an absolute, clean path"},
		{func(r *csi.NodePublishVolumeRequest) { r.TargetPath = target + "/../x" }, "is not an absolute, clean path"},
		{func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = nil }, "missing required volume capability"},
		{func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.AccessType = nil }, "missing required volume capability access type"},
		{func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		}, "must be a simple mount"},
		{func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().FsType = "ext4" }, "must be a simple mount"},
		{func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().MountFlags = []string{"rw"} }, "must be a simple mount"},
		{func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.AccessMode = nil }, "missing required volume capability access mode"},
		{func(r *csi.NodePublishVolumeRequest) { r.Readonly = false }, "readOnly must be set to 'true'"},
		{func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, ephemeralKey) }, "only ephemeral volumes are supported"},
	} {
		req := publishRequest(target)
		tc.edit(req)
		_, err := node.NodePublishVolume(ctx(t), req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want InvalidArgument containing %q", err, tc.want)
		}
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("target created: %v", err)
	}
	for _, req := range []*csi.NodeUnpublishVolumeRequest{{TargetPath: target}, {VolumeId: "v"}, {VolumeId: "v", TargetPath: "x"}} {
		if _, err := node.NodeUnpublishVolume(ctx(t), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v", req, err)
		}
	}
}

// TestPublishUnpublish: kubelet's calls for a pod's volume, with real bind
// mounts (root): the agent's socket directory appears at the target path,
// read-only, its socket reachable through it; publishing twice mounts
// once; the volume is healthy until unpublished; unpublish unmounts and
// removes the target, and is idempotent.
func TestPublishUnpublish(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bind mounts need root (CI runs the tests as root)")
	}
	socketDir := shortDir(t)
	ln, err := net.Listen("unix", filepath.Join(socketDir, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("agent"))
			c.Close()
		}
	}()
	_, node := driver(t, socketDir)
	// kubelet's layout: pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount,
	// the parent created by kubelet, the mount directory by the driver.
	parent := filepath.Join(shortDir(t), "pods", "4f1c", "volumes", "kubernetes.io~csi", "spiffe-workload-api")
	if err := os.MkdirAll(parent, 0o750); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(parent, "mount")
	t.Cleanup(func() {
		if m, _ := isMountPoint(target); m {
			_ = unmount(target)
		}
	})
	for range 2 {
		if _, err := node.NodePublishVolume(ctx(t), publishRequest(target)); err != nil {
			t.Fatal(err)
		}
	}
	if n := countMounts(t, target); n != 1 {
		t.Fatalf("%d mounts at the target after two publishes", n)
	}
	c, err := net.Dial("unix", filepath.Join(target, "api.sock"))
	if err != nil {
		t.Fatalf("the agent's socket through the volume: %v", err)
	}
	buf := make([]byte, 5)
	if _, err := c.Read(buf); err != nil || string(buf) != "agent" {
		t.Fatalf("read %q, %v", buf, err)
	}
	c.Close()
	if err := os.WriteFile(filepath.Join(target, "planted"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("writing into the volume: %v, want EROFS", err)
	}
	if _, err := os.Stat(filepath.Join(socketDir, "planted")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a file appeared in the agent's socket directory")
	}
	st, err := node.NodeGetVolumeStats(ctx(t), &csi.NodeGetVolumeStatsRequest{VolumeId: "csi-4b0b8a3c2f1e", VolumePath: target})
	if err != nil || st.GetVolumeCondition().GetAbnormal() || st.GetVolumeCondition().GetMessage() != "mounted" {
		t.Fatalf("stats %v, %v", st, err)
	}

	for range 2 {
		if _, err := node.NodeUnpublishVolume(ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-4b0b8a3c2f1e", TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := isMountPoint(target); m || err != nil {
		t.Fatalf("still mounted: %v, %v", m, err)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("target left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(socketDir, "api.sock")); err != nil {
		t.Fatalf("the agent's socket after unpublish: %v", err)
	}
	st, err = node.NodeGetVolumeStats(ctx(t), &csi.NodeGetVolumeStatsRequest{VolumeId: "csi-4b0b8a3c2f1e", VolumePath: target})
	if err != nil || !st.GetVolumeCondition().GetAbnormal() || st.GetVolumeCondition().GetMessage() != "volume path is not mounted" {
		t.Fatalf("stats after unpublish %v, %v", st, err)
	}
}

func countMounts(t *testing.T, p string) int {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 5 && unescapeOctal(f[4]) == p {
			n++
		}
	}
	return n
}

func TestNew(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{WorkloadAPISocketDir: "/"}, "the node ID is required"},
		{Config{NodeID: "n"}, "must be an absolute path"},
		{Config{NodeID: "n", WorkloadAPISocketDir: "run/spire"}, "must be an absolute path"},
		{Config{NodeID: "n", WorkloadAPISocketDir: "/nonexistent/sockets"}, "no such file or directory"},
		{Config{NodeID: "n", WorkloadAPISocketDir: f}, "is not a directory"},
	} {
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

func TestUnescapeOctal(t *testing.T) {
	if got := unescapeOctal(`/var/lib/kubelet/pods/a\040b/vol\134x`); got != `/var/lib/kubelet/pods/a b/vol\x` {
		t.Fatal(got)
	}
}
