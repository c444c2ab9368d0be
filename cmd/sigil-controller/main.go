// Command sigil-controller registers Kubernetes workloads with a
// sigil-server: it reconciles spire-controller-manager's resources
// (ClusterSPIFFEID, ClusterStaticEntry, ClusterFederatedTrustDomain, group
// spire.spiffe.io/v1alpha1) into registration entries and federation
// relationships through the server's admin socket, with one leader at a
// time (a Lease). It reads spire-controller-manager's configuration file
// (-config); -kubeconfig or KUBECONFIG point it at a cluster from outside,
// otherwise it uses the pod's service account.
//
// It is the only binary that links the Kubernetes client libraries
// (controller-runtime, client-go); the deps test keeps it so.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/client/config"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/cli/cliutil"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/controller/manager"
	"github.com/sigil-spiffe/sigil/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && cliutil.IsVersion(args[0]) {
		return cliutil.Version("sigil-controller", version.String(), args[1:], stdout, stderr)
	}
	// flag.CommandLine carries controller-runtime's -kubeconfig.
	fs := flag.CommandLine
	fs.Init("sigil-controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "spire-controller-manager's configuration file (ControllerManagerConfig YAML)")
	check := fs.Bool("check", false, "check the configuration file and exit")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: sigil-controller -config <file> [-kubeconfig <file>] [-check]: registers Kubernetes workloads (ClusterSPIFFEID, ClusterStaticEntry, ClusterFederatedTrustDomain) with a sigil-server")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *configPath == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	fc, err := manager.LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "sigil-controller: %s: %v\n", *configPath, err)
		return 1
	}
	format := "text"
	if fc.LogEncoding == "json" {
		format = "json"
	}
	level := fc.LogLevel
	if level == "" {
		level = "info"
	}
	log, err := config.NewLogger(level, format, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "sigil-controller: %v\n", err)
		return 1
	}
	slog.SetDefault(log)
	manager.SetProcessLoggers(log)
	for _, w := range fc.Warnings() {
		log.Warn(w)
	}
	if *check {
		fmt.Fprintln(stdout, "configuration OK")
		return 0
	}
	rc, err := ctrlconfig.GetConfig()
	if err != nil {
		log.Error("No Kubernetes API configuration", "error", err)
		return 1
	}
	opts, err := fc.OptionsFrom(rc)
	if err != nil {
		log.Error("Invalid configuration", "error", err)
		return 1
	}
	admin, err := adminclient.Dial(fc.SocketPath(), opts.Controller.Reconcile.TrustDomain)
	if err != nil {
		log.Error("Server admin socket", "error", err)
		return 1
	}
	defer admin.Close()
	opts.Controller.Entries = admin.Entry
	opts.Controller.TrustDomains = trustdomainv1.NewTrustDomainClient(admin.Conn)
	opts.Controller.Bundle = admin
	opts.Controller.Log = log
	log.Info("Starting", "version", version.String(), "trust_domain", fc.TrustDomain, "cluster", fc.ClusterName,
		"cluster_domain", opts.Controller.Reconcile.ClusterDomain, "server_socket", fc.SocketPath(), "leader_election", opts.LeaderElection)
	if err := manager.Run(ctx, opts); err != nil {
		log.Error("Stopped", "error", err)
		return 1
	}
	return 0
}
