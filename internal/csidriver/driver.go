// Package csidriver is Sigil's SPIFFE CSI driver node plugin
// (csi.spiffe.io), compatible with spiffe-csi-driver: kubelet asks it,
// over the CSI gRPC API on a unix socket, to publish an ephemeral inline
// volume into a pod, and it bind-mounts the agent's Workload API socket
// directory there, read-only. The pod then reaches the agent's socket
// without a hostPath volume.
//
// Only the Identity and Node services exist (the driver has no
// controller: the volumes are ephemeral), with the calls kubelet makes:
// GetPluginInfo, GetPluginCapabilities, Probe, NodeGetInfo,
// NodeGetCapabilities (VOLUME_CONDITION, GET_VOLUME_STATS),
// NodePublishVolume, NodeUnpublishVolume and NodeGetVolumeStats (the
// volume's health: still a mount point, still readable).
//
// A publish must ask for an ephemeral volume
// (csi.storage.k8s.io/ephemeral = "true"), a plain mount (no file system
// type, no mount flags) and readOnly, as spiffe-csi-driver requires; unlike
// it, the bind mount is also made read-only on the host (a second,
// remounting MS_RDONLY step), so nothing in the pod's volume directory can
// write into the agent's socket directory whatever the container runtime
// does. Connecting to a unix socket needs no write access to its file
// system, so workloads are unaffected.
package csidriver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/version"
)

// DefaultPluginName is the driver's name, spiffe-csi-driver's: the
// CSIDriver object and the pods' volumes name it.
const DefaultPluginName = "csi.spiffe.io"

// ephemeralKey is the volume context key kubelet sets for an ephemeral
// inline volume.
const ephemeralKey = "csi.storage.k8s.io/ephemeral"

// Config configures a Driver.
type Config struct {
	// NodeID is the node's name (NodeGetInfo).
	NodeID string
	// PluginName; "" is DefaultPluginName.
	PluginName string
	// WorkloadAPISocketDir is the directory holding the agent's socket,
	// the source of every mount.
	WorkloadAPISocketDir string
	// Log; nil discards.
	Log *slog.Logger
}

// Driver serves the CSI Identity and Node services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedNodeServer

	nodeID     string
	pluginName string
	sourceDir  string
	log        *slog.Logger
}

// New checks cfg: the node ID is required, and the socket directory must
// be an absolute path to a directory.
func New(cfg Config) (*Driver, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("csi driver: the node ID is required (-node-id, or the variable -node-id-env names)")
	}
	if cfg.WorkloadAPISocketDir == "" || !filepath.IsAbs(cfg.WorkloadAPISocketDir) {
		return nil, fmt.Errorf("csi driver: the Workload API socket directory %q must be an absolute path (-workload-api-socket-dir)", cfg.WorkloadAPISocketDir)
	}
	fi, err := os.Stat(cfg.WorkloadAPISocketDir)
	if err != nil {
		return nil, fmt.Errorf("csi driver: Workload API socket directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("csi driver: %s is not a directory", cfg.WorkloadAPISocketDir)
	}
	if cfg.PluginName == "" {
		cfg.PluginName = DefaultPluginName
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{nodeID: cfg.NodeID, pluginName: cfg.PluginName, sourceDir: filepath.Clean(cfg.WorkloadAPISocketDir), log: log}, nil
}

// GetPluginInfo returns the driver's name and version.
func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.pluginName, VendorVersion: version.String()}, nil
}

// GetPluginCapabilities: none (no controller service).
func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{}, nil
}

// Probe: ready once serving.
func (d *Driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

// NodeGetInfo returns the node ID.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.nodeID}, nil
}

// NodeGetCapabilities: volume condition and stats (the health check).
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	rpc := func(t csi.NodeServiceCapability_RPC_Type) *csi.NodeServiceCapability {
		return &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}}
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: []*csi.NodeServiceCapability{
		rpc(csi.NodeServiceCapability_RPC_VOLUME_CONDITION),
		rpc(csi.NodeServiceCapability_RPC_GET_VOLUME_STATS),
	}}, nil
}

// checkTarget: kubelet's target paths are absolute and clean.
func checkTarget(p, field string) error {
	if p == "" {
		return status.Errorf(codes.InvalidArgument, "request missing required %s", field)
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return status.Errorf(codes.InvalidArgument, "%s %s is not an absolute, clean path", field, clip.Quote(p))
	}
	return nil
}

// NodePublishVolume bind-mounts the socket directory, read-only, at the
// target path (created if missing). Publishing a target already mounted
// succeeds without mounting again.
func (d *Driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	vc := req.GetVolumeCapability()
	mnt := vc.GetMount()
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "request missing required volume id")
	case vc == nil:
		return nil, status.Error(codes.InvalidArgument, "request missing required volume capability")
	case vc.GetAccessType() == nil:
		return nil, status.Error(codes.InvalidArgument, "request missing required volume capability access type")
	case mnt == nil || mnt.GetFsType() != "" || len(mnt.GetMountFlags()) != 0:
		return nil, status.Error(codes.InvalidArgument, "request volume capability access type must be a simple mount (no fsType, no mount flags)")
	case vc.GetAccessMode() == nil:
		return nil, status.Error(codes.InvalidArgument, "request missing required volume capability access mode")
	case !req.GetReadonly():
		return nil, status.Error(codes.InvalidArgument, "pod.spec.volumes[].csi.readOnly must be set to 'true'")
	case req.GetVolumeContext()[ephemeralKey] != "true":
		return nil, status.Error(codes.InvalidArgument, "only ephemeral volumes are supported")
	}
	target := req.GetTargetPath()
	if err := checkTarget(target, "target path"); err != nil {
		return nil, err
	}
	log := d.log.With("volume_id", clip.Cut(req.GetVolumeId(), 128), "target_path", clip.Cut(target, 256))
	if err := os.Mkdir(target, 0o750); err != nil && !errors.Is(err, os.ErrExist) {
		log.Error("Failed to publish volume", "error", err)
		return nil, status.Errorf(codes.Internal, "unable to create target path: %v", err)
	}
	mounted, err := isMountPoint(target)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "unable to verify mount point: %v", err)
	}
	if mounted {
		log.Info("Volume already published")
		return &csi.NodePublishVolumeResponse{}, nil
	}
	if err := bindMountReadOnly(d.sourceDir, target); err != nil {
		log.Error("Failed to publish volume", "error", err)
		return nil, status.Errorf(codes.Internal, "unable to mount: %v", err)
	}
	log.Info("Volume published")
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume unmounts the target path, if mounted, and removes
// it. Unpublishing a target that is gone succeeds.
func (d *Driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "request missing required volume id")
	}
	target := req.GetTargetPath()
	if err := checkTarget(target, "target path"); err != nil {
		return nil, err
	}
	log := d.log.With("volume_id", clip.Cut(req.GetVolumeId(), 128), "target_path", clip.Cut(target, 256))
	mounted, err := isMountPoint(target)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "unable to verify mount point: %v", err)
	}
	if mounted {
		if err := unmount(target); err != nil {
			log.Error("Failed to unpublish volume", "error", err)
			return nil, status.Errorf(codes.Internal, "unable to unmount: %v", err)
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Error("Failed to unpublish volume", "error", err)
		return nil, status.Errorf(codes.Internal, "unable to remove target path: %v", err)
	}
	log.Info("Volume unpublished")
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats reports the volume's condition: abnormal when the
// path is no longer a mount point or cannot be listed.
func (d *Driver) NodeGetVolumeStats(_ context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "request missing required volume id")
	}
	p := req.GetVolumePath()
	if err := checkTarget(p, "volume path"); err != nil {
		return nil, err
	}
	cond := &csi.VolumeCondition{Message: "mounted"}
	if err := checkMount(p); err != nil {
		cond.Abnormal, cond.Message = true, err.Error()
		d.log.Warn("Volume is unhealthy", "volume_id", clip.Cut(req.GetVolumeId(), 128), "volume_path", clip.Cut(p, 256), "error", err)
	}
	return &csi.NodeGetVolumeStatsResponse{VolumeCondition: cond}, nil
}

func checkMount(p string) error {
	mounted, err := isMountPoint(p)
	switch {
	case err != nil:
		return fmt.Errorf("unable to verify mount point: %w", err)
	case !mounted:
		return errors.New("volume path is not mounted")
	}
	if _, err := os.ReadDir(p); err != nil {
		return fmt.Errorf("unable to list the volume: %w", err)
	}
	return nil
}
