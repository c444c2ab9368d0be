// Command sigil-csi is Sigil's SPIFFE CSI driver node plugin
// (csi.spiffe.io, internal/csidriver): run on every node beside the agent,
// it serves the CSI Identity and Node services to kubelet on a unix socket
// and mounts the agent's Workload API socket directory, read-only, into
// the pods that ask for a csi.spiffe.io ephemeral volume. Its flags are
// spiffe-csi-driver's, so its DaemonSet runs unchanged.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/sigil-spiffe/sigil/internal/cli/cliutil"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/csidriver"
	"github.com/sigil-spiffe/sigil/internal/version"
)

const synopsis = "sigil-csi -workload-api-socket-dir <dir> [-node-id <name>] [-csi-socket-path <path>]: the csi.spiffe.io node plugin"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && cliutil.IsVersion(args[0]) {
		return cliutil.Version("sigil-csi", version.String(), args[1:], stdout, stderr)
	}
	fs := cliutil.NewFlagSet("sigil-csi", synopsis)
	nodeID := fs.String("node-id", "", "Kubernetes node name; if unset, the value of the variable -node-id-env names")
	nodeIDEnv := fs.String("node-id-env", "MY_NODE_NAME", "environment variable holding the node name (overridden by -node-id)")
	socketPath := fs.String("csi-socket-path", "/spiffe-csi/csi.sock", "the CSI socket kubelet connects to")
	pluginName := fs.String("plugin-name", csidriver.DefaultPluginName, "the driver name to register")
	socketDir := fs.String("workload-api-socket-dir", "", "the directory holding the agent's Workload API socket (required)")
	logLevel := fs.String("log-level", "INFO", "DEBUG, INFO, WARN or ERROR")
	if err := cliutil.ParseFlags(fs, args, stdout, stderr); err != nil {
		return cliutil.ExitCode(err)
	}
	log, err := config.NewLogger(*logLevel, "text", stderr)
	if err != nil {
		fmt.Fprintln(stderr, "sigil-csi:", err)
		return cliutil.ExitError
	}
	config.SetDefault(log)
	node := *nodeID
	if node == "" {
		node = getenv(*nodeIDEnv)
	}
	d, err := csidriver.New(csidriver.Config{NodeID: node, PluginName: *pluginName, WorkloadAPISocketDir: *socketDir, Log: log})
	if err != nil {
		fmt.Fprintln(stderr, "sigil-csi:", err)
		return cliutil.ExitError
	}
	log.Info("Starting", "version", version.String(), "node_id", node, "plugin_name", *pluginName,
		"workload_api_socket_dir", *socketDir, "csi_socket_path", *socketPath)
	if err := (&csidriver.Server{SocketPath: *socketPath, Driver: d}).Run(ctx); err != nil {
		log.Error("CSI driver stopped", "error", err)
		return cliutil.ExitError
	}
	log.Info("Stopped")
	return cliutil.ExitOK
}
