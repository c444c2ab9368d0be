// Package sds is Envoy's Secret Discovery Service (envoy.service.secret.v3,
// Envoy's SDS v3 wire format: the messages of sdspb, generated from
// go-control-plane's descriptors), a service of the agent socket
// (internal/agent/endpoints), answering as SPIRE's agent does.
//
// # Resources
//
// A caller (attested by the endpoints, no security header: Envoy sends
// none) asks for secrets by name. The names it may get are:
//
//   - the SPIFFE ID of each of its identities: a TLS certificate secret
//     (PEM chain and PKCS#8 key); several entries with one SPIFFE ID serve
//     the first in serving order (internal/agent/cache);
//   - Config.DefaultSVIDName ("default"): the same for its default
//     identity, the first in serving order (go-spiffe's default SVID);
//   - the trust domain ID of our trust domain ("spiffe://example.org") and
//     of each trust domain its entries federate with: a validation context
//     for that trust domain;
//   - Config.DefaultBundleName ("ROOTCA"): our trust domain's validation
//     context under that name;
//   - Config.DefaultAllBundlesName ("ALL"): one validation context for our
//     trust domain and every trust domain its entries federate with.
//
// A caller without entries gets the validation contexts of our trust
// domain (and no TLS certificate), as in SPIRE.
//
// A validation context is, by default, Envoy's SPIFFE certificate validator
// (envoy.tls.cert_validator.spiffe, SPIFFECertValidatorConfig with one
// trust domain per bundle, the all-bundles one carrying all of them); with
// SPIFFE validation disabled (Config.DisableSPIFFECertValidation, or the
// Envoy node's metadata "disable_spiffe_cert_validation", a bool or a
// string strconv.ParseBool reads, which overrides it), or for an Envoy
// whose build version is 1.17 or older, it is a plain trusted_ca. The
// all-bundles name cannot be served as a trusted_ca: asking for it then
// fails the request (FailedPrecondition).
//
// # Protocol
//
// StreamSecrets is state-of-the-world xDS. Each response carries a version
// (a counter per stream, incremented whenever the secrets for the
// subscribed names change) and a fresh nonce. A request whose nonce is not
// the last one sent is stale and ignored; one with the last nonce
// acknowledges it when its version is ours, and rejects it (a NACK, logged
// with Envoy's error_detail) otherwise; neither is answered unless it
// changes the subscribed names, so a NACK never loops. A rotation, a
// bundle change or an entry change pushes a new version when, and only
// when, it changes the secrets of the subscribed names. The first response
// waits (up to Config.IdentityWait) until the agent has its trust bundle,
// an SVID for every entry of the caller and the bundles of the trust
// domains those federate with. FetchSecrets answers once,
// with no version or nonce, as SPIRE's does; DeltaSecrets is Unimplemented.
//
// # Refusals
//
// A name the caller may not have ends the call with InvalidArgument naming
// (a bounded prefix of) the unknown names, as SPIRE does. Requests that
// SPIRE accepts or crashes on are refused precisely, and never take the
// agent down: an Envoy node whose user_agent_build_version has no version
// (spire-agent 1.15.3 dereferences it and exits), an empty resource_names
// list on a stream's first request or in FetchSecrets (SPIRE serves every
// secret of the caller: SDS has no wildcard subscription), an empty name,
// more than MaxResourceNames names or a name longer than MaxNameLen, and a
// type_url other than the Secret type (an empty one is taken as it). An
// empty list after the first request unsubscribes: nothing is pushed until
// names are requested again. A revoked agent refuses every SDS call
// (PermissionDenied), as the Workload API does.
package sds

import (
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Limits on what a caller may ask for.
const (
	// MaxResourceNames bounds the names of one request.
	MaxResourceNames = 1024
	// MaxNameLen bounds one name: the longest SPIFFE ID.
	MaxNameLen = 2048
)

// DefaultIdentityWait bounds how long a stream's first response waits for
// the agent's trust bundle and the caller's SVIDs.
const DefaultIdentityWait = 30 * time.Second

// Cache is what SDS reads of the agent's workload state
// (internal/agent/cache).
type Cache interface {
	Subscribe(selector.Set) *cache.Subscription
	FetchWorkloadUpdate(selector.Set) *cache.WorkloadUpdate
	Revoked() bool
}

// Config configures the service; the names are agent.sds's.
type Config struct {
	Cache                       Cache
	DefaultSVIDName             string
	DefaultBundleName           string
	DefaultAllBundlesName       string
	DisableSPIFFECertValidation bool
	// IdentityWait; 0 means DefaultIdentityWait.
	IdentityWait time.Duration
	Log          *slog.Logger
	Clock        clock.Clock
}

// Service is Envoy SDS, to register on the agent endpoints.
type Service struct {
	cfg Config
	log *slog.Logger
	clk clock.Clock
}

// New validates cfg.
func New(cfg Config) (*Service, error) {
	if cfg.Cache == nil {
		return nil, errors.New("sds: cache is required")
	}
	if cfg.DefaultSVIDName == "" || cfg.DefaultBundleName == "" || cfg.DefaultAllBundlesName == "" {
		return nil, errors.New("sds: the default SVID, bundle and all-bundles names are required")
	}
	if cfg.IdentityWait <= 0 {
		cfg.IdentityWait = DefaultIdentityWait
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, log: log, clk: clock.OrReal(cfg.Clock)}, nil
}

// Register registers SDS on the agent's gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	r.RegisterService(&serviceDesc, &handler{s: s})
}

// handler serves serviceDesc.
type handler struct {
	s *Service
}

var _ secretServer = (*handler)(nil)
