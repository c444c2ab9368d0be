package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// Options are the controller and the controller-runtime manager around
// it: leader election (a Lease), health probes, metrics.
type Options struct {
	Controller Config
	Rest       *rest.Config

	LeaderElection          bool
	LeaderElectionID        string // Lease name (DefaultLeaderElectionID)
	LeaderElectionNamespace string // "": the pod's namespace (in a cluster)
	LeaseDuration           time.Duration
	RenewDeadline           time.Duration
	RetryPeriod             time.Duration

	// HealthProbeBindAddress serves LivenessEndpointName (/healthz: the
	// process runs) and ReadinessEndpointName (/readyz: the informers'
	// caches are synced); "" or "0" serves none.
	HealthProbeBindAddress                      string
	ReadinessEndpointName, LivenessEndpointName string
	// MetricsBindAddress serves controller-runtime's metrics; "" or "0"
	// serves none.
	MetricsBindAddress string

	// Started, if set, receives the controller once it is added to the
	// manager (tests).
	Started func(*Controller)
}

// OptionsFrom fills the manager options of the file (the controller's
// Config still needs its API clients).
func (c *FileConfig) OptionsFrom(rc *rest.Config) (Options, error) {
	rcfg, err := c.ReconcileConfig(LookupCNAME)
	if err != nil {
		return Options{}, err
	}
	res := c.Resources()
	o := Options{
		Controller: Config{
			Reconcile:                    rcfg,
			ClusterSPIFFEIDs:             res.ClusterSPIFFEIDs,
			ClusterStaticEntries:         res.ClusterStaticEntries,
			ClusterFederatedTrustDomains: res.ClusterFederatedTrustDomains,
			GCInterval:                   c.GC(),
		},
		Rest:             rc,
		LeaderElectionID: DefaultLeaderElectionID,
	}
	if b := c.TrustBundleConfigMap; b != nil {
		o.Controller.BundleConfigMap = BundleConfigMap{Namespace: b.Namespace, Name: b.Name, Key: b.Key}
		if o.Controller.BundleConfigMap.Key == "" {
			o.Controller.BundleConfigMap.Key = "bundle.crt"
		}
	}
	if le := c.LeaderElection; le != nil {
		o.LeaderElection = le.LeaderElect
		if le.ResourceName != "" {
			o.LeaderElectionID = le.ResourceName
		}
		o.LeaderElectionNamespace = le.ResourceNamespace
		o.LeaseDuration, o.RenewDeadline, o.RetryPeriod = le.LeaseDuration.Duration, le.RenewDeadline.Duration, le.RetryPeriod.Duration
	}
	if h := c.Health; h != nil {
		o.HealthProbeBindAddress, o.ReadinessEndpointName, o.LivenessEndpointName = h.HealthProbeBindAddress, h.ReadinessEndpointName, h.LivenessEndpointName
	}
	if m := c.Metrics; m != nil {
		o.MetricsBindAddress = m.BindAddress
	}
	return o, nil
}

// SetProcessLoggers sends controller-runtime's and client-go's (klog)
// process-wide logs to log. Call it once, before Run and before any client
// exists: the setters are not safe while those libraries log.
func SetProcessLoggers(log *slog.Logger) {
	logger := logr.FromSlogHandler(log.Handler())
	ctrllog.SetLogger(logger)
	klog.SetLogger(logger)
}

func durationPtr(d time.Duration) *time.Duration {
	if d <= 0 {
		return nil
	}
	return &d
}

// Run runs the manager (informers, leader election, probes) and the
// controller on the leader until ctx ends. It returns nil then; an error
// when the manager cannot start or loses its lease (the process should
// exit and restart, as controller-runtime requires).
func Run(ctx context.Context, o Options) error {
	if o.Controller.Entries == nil || (o.Controller.ClusterFederatedTrustDomains && o.Controller.TrustDomains == nil) ||
		(o.Controller.BundleConfigMap.Name != "" && o.Controller.Bundle == nil) {
		return errors.New("controller: no server API clients")
	}
	log := o.Controller.Log
	if log == nil {
		log = discard()
		o.Controller.Log = log
	}
	logger := logr.FromSlogHandler(log.Handler())
	scheme, err := Scheme()
	if err != nil {
		return err
	}
	addr := func(a string) string {
		if a == "" {
			return "0"
		}
		return a
	}
	mgr, err := ctrl.NewManager(o.Rest, ctrl.Options{
		Scheme:                        scheme,
		Logger:                        logger,
		LeaderElection:                o.LeaderElection,
		LeaderElectionID:              o.LeaderElectionID,
		LeaderElectionNamespace:       o.LeaderElectionNamespace,
		LeaderElectionResourceLock:    "leases",
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 durationPtr(o.LeaseDuration),
		RenewDeadline:                 durationPtr(o.RenewDeadline),
		RetryPeriod:                   durationPtr(o.RetryPeriod),
		HealthProbeBindAddress:        addr(o.HealthProbeBindAddress),
		ReadinessEndpointName:         o.ReadinessEndpointName,
		LivenessEndpointName:          o.LivenessEndpointName,
		Metrics:                       metricsserver.Options{BindAddress: addr(o.MetricsBindAddress)},
	})
	if err != nil {
		return fmt.Errorf("controller manager: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("informers", func(req *http.Request) error {
		ctx, cancel := context.WithTimeout(req.Context(), time.Second)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return errors.New("informer caches not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	c, err := Add(ctx, mgr, o.Controller)
	if err != nil {
		return err
	}
	if o.Started != nil {
		o.Started(c)
	}
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("controller manager: %w", err)
	}
	return nil
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
