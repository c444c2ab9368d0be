package csidriver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
)

// Server serves a Driver's CSI services on a unix socket.
type Server struct {
	// SocketPath is where kubelet connects (the plugin registration
	// directory's csi.sock); a stale socket file there is replaced.
	SocketPath string
	Driver     *Driver
}

// Run serves until ctx is done, then stops gracefully and removes the
// socket.
func (s *Server) Run(ctx context.Context) error {
	if s.Driver == nil || s.SocketPath == "" {
		return errors.New("csi server: a driver and a socket path are required")
	}
	if err := os.MkdirAll(filepath.Dir(s.SocketPath), 0o750); err != nil {
		return fmt.Errorf("csi server: %w", err)
	}
	if err := os.Remove(s.SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("csi server: removing the old socket: %w", err)
	}
	ln, err := net.Listen("unix", s.SocketPath)
	if err != nil {
		return fmt.Errorf("csi server: %w", err)
	}
	defer os.Remove(s.SocketPath)
	if err := os.Chmod(s.SocketPath, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("csi server: %w", err)
	}
	gs := grpc.NewServer(grpc.UnaryInterceptor(s.Driver.logCalls))
	csi.RegisterIdentityServer(gs, s.Driver)
	csi.RegisterNodeServer(gs, s.Driver)
	done := make(chan error, 1)
	go func() { done <- gs.Serve(ln) }()
	select {
	case <-ctx.Done():
		gs.GracefulStop()
		<-done
		return nil
	case err := <-done:
		return fmt.Errorf("csi server: %w", err)
	}
}

// logCalls logs each call's method and outcome at debug level (errors at
// warn are the handlers' own).
func (d *Driver) logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	if err != nil {
		d.log.Debug("CSI call failed", "method", info.FullMethod, "error", err)
	} else {
		d.log.Debug("CSI call", "method", info.FullMethod)
	}
	return resp, err
}
