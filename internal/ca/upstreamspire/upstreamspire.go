// Package upstreamspire is UpstreamAuthority "spire": a nested
// (downstream) server gets its intermediate CA from an upstream server of
// the same trust domain. It authenticates with the X509-SVID that its
// co-located agent serves it over the Workload API (an entry created on the
// upstream with downstream=true), calls svid/v1 NewDownstreamX509CA over
// mTLS, publishes the downstream's JWT keys with bundle/v1
// PublishJWTAuthority, and polls bundle/v1 GetBundle so that upstream root
// rotations reach the local bundle.
//
// Everything is lazy: New does no I/O, so a downstream server whose CA is
// still valid starts and keeps signing while the upstream (or even its
// agent) is unreachable; calls fail and the CA manager retries them.
package upstreamspire

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/server/api/convert"
)

// Defaults for zero Config fields.
const (
	DefaultPollInterval = 5 * time.Second  // upstream bundle poll, as SPIRE
	DefaultCallTimeout  = 30 * time.Second // one upstream call (incl. getting our SVID)
)

// maxCerts bounds the certificates accepted in one upstream answer.
const maxCerts = 64

// Config configures an Authority.
type Config struct {
	TrustDomain       spiffeid.TrustDomain
	ServerAddress     string // upstream server host
	ServerPort        int    // upstream server port
	WorkloadAPISocket string // the co-located agent's Workload API socket path
	PollInterval      time.Duration
	CallTimeout       time.Duration
	Log               *slog.Logger
}

// Authority is the "spire" upstream authority.
type Authority struct {
	cfg      Config
	addr     string
	serverID spiffeid.ID
	log      *slog.Logger
	kick     chan struct{}

	mu     sync.Mutex
	closed bool
	source *workloadapi.X509Source
	conn   *grpc.ClientConn
}

var (
	_ ca.UpstreamAuthority     = (*Authority)(nil)
	_ ca.JWTAuthorityPublisher = (*Authority)(nil)
	_ ca.UpstreamBundleWatcher = (*Authority)(nil)
)

// New validates cfg. It does no I/O.
func New(cfg Config) (*Authority, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("upstream spire: trust domain is required")
	}
	if cfg.ServerAddress == "" {
		return nil, errors.New("upstream spire: server_address is required")
	}
	if cfg.ServerPort <= 0 || cfg.ServerPort > 65535 {
		return nil, fmt.Errorf("upstream spire: invalid server_port %d", cfg.ServerPort)
	}
	if cfg.WorkloadAPISocket == "" {
		return nil, errors.New("upstream spire: workload_api_socket is required")
	}
	if cfg.PollInterval < 0 || cfg.CallTimeout < 0 {
		return nil, errors.New("upstream spire: negative interval")
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	serverID, err := spiffeid.FromSegments(cfg.TrustDomain, "spire", "server")
	if err != nil {
		return nil, fmt.Errorf("upstream spire: server ID: %w", err)
	}
	return &Authority{
		cfg:      cfg,
		addr:     net.JoinHostPort(cfg.ServerAddress, strconv.Itoa(cfg.ServerPort)),
		serverID: serverID,
		log:      log.With("upstream", net.JoinHostPort(cfg.ServerAddress, strconv.Itoa(cfg.ServerPort))),
		kick:     make(chan struct{}, 1),
	}, nil
}

// Close releases the Workload API source and the upstream connection.
func (a *Authority) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	var errs []error
	if a.conn != nil {
		errs = append(errs, a.conn.Close())
		a.conn = nil
	}
	if a.source != nil {
		errs = append(errs, a.source.Close())
		a.source = nil
	}
	return errors.Join(errs...)
}

// client returns the connection to the upstream server, creating the
// Workload API source (which waits for our first SVID) and the gRPC client
// on first use.
func (a *Authority) client(ctx context.Context) (*grpc.ClientConn, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, errors.New("upstream spire: closed")
	}
	if a.conn != nil {
		// Calls are rare (a poll every few seconds, rotation retries): do
		// not let a long reconnect back-off delay recovery once the
		// upstream is back.
		if a.conn.GetState() == connectivity.TransientFailure {
			a.conn.ResetConnectBackoff()
		}
		return a.conn, nil
	}
	if a.source == nil {
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+a.cfg.WorkloadAPISocket)))
		if err != nil {
			return nil, fmt.Errorf("get an X509-SVID from the Workload API at %s: %w", a.cfg.WorkloadAPISocket, err)
		}
		a.source = src
		if svid, err := src.GetX509SVID(); err == nil {
			a.log.Info("using the Workload API X509-SVID to reach the upstream server", "spiffe_id", svid.ID.String())
		}
	}
	tlsCfg := tlsconfig.MTLSClientConfig(a.source, a.source, tlsconfig.AuthorizeID(a.serverID))
	conn, err := grpc.NewClient(a.addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}))
	if err != nil {
		return nil, fmt.Errorf("upstream client: %w", err)
	}
	a.conn = conn
	return conn, nil
}

// MintX509CA asks the upstream server to sign csr as an intermediate CA
// with preferredTTL (the downstream's ca_ttl; the upstream caps it to its
// own CA's lifetime). It returns the CA chain and the upstream roots.
func (a *Authority) MintX509CA(ctx context.Context, csr []byte, preferredTTL time.Duration) (chain, roots []*x509.Certificate, err error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CallTimeout)
	defer cancel()
	conn, err := a.client(ctx)
	if err != nil {
		return nil, nil, err
	}
	ttl := int64(preferredTTL / time.Second)
	if ttl > math.MaxInt32 {
		ttl = math.MaxInt32
	}
	resp, err := svidv1.NewSVIDClient(conn).NewDownstreamX509CA(ctx, &svidv1.NewDownstreamX509CARequest{Csr: csr, PreferredTtl: int32(max(ttl, 0))})
	if err != nil {
		return nil, nil, fmt.Errorf("NewDownstreamX509CA: %w", err)
	}
	if chain, err = parseCAs("CA chain", resp.GetCaCertChain()); err != nil {
		return nil, nil, err
	}
	if roots, err = parseCAs("X.509 authorities", resp.GetX509Authorities()); err != nil {
		return nil, nil, err
	}
	a.log.Info("upstream server signed a downstream X.509 CA", "serial", chain[0].SerialNumber.String(), "not_after", chain[0].NotAfter)
	a.poke() // the roots may have changed: refresh the bundle now
	return chain, roots, nil
}

func parseCAs(what string, ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, fmt.Errorf("upstream returned an empty %s", what)
	}
	if len(ders) > maxCerts {
		return nil, fmt.Errorf("upstream returned %d certificates in its %s (limit %d)", len(ders), what, maxCerts)
	}
	out := make([]*x509.Certificate, 0, len(ders))
	for i, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("upstream %s certificate %d: %w", what, i, err)
		}
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, fmt.Errorf("upstream %s certificate %d is not a CA", what, i)
		}
		out = append(out, c)
	}
	return out, nil
}

// PublishJWTAuthority publishes one of our JWT signing keys upstream and
// returns the upstream's JWT authorities.
func (a *Authority) PublishJWTAuthority(ctx context.Context, key datastore.JWTKey) ([]datastore.JWTKey, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CallTimeout)
	defer cancel()
	conn, err := a.client(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := bundlev1.NewBundleClient(conn).PublishJWTAuthority(ctx, &bundlev1.PublishJWTAuthorityRequest{
		JwtAuthority: &types.JWTKey{KeyId: key.KeyID, PublicKey: key.PublicKey, ExpiresAt: key.ExpiresAt},
	})
	if err != nil {
		return nil, fmt.Errorf("PublishJWTAuthority: %w", err)
	}
	keys, err := convert.JWTKeysFromProto(resp.GetJwtAuthorities())
	if err != nil {
		return nil, fmt.Errorf("upstream JWT authorities: %w", err)
	}
	a.log.Info("JWT authority published upstream", "kid", key.KeyID)
	return keys, nil
}

// fetchBundle reads the upstream trust domain bundle.
func (a *Authority) fetchBundle(ctx context.Context) (ca.UpstreamBundle, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CallTimeout)
	defer cancel()
	conn, err := a.client(ctx)
	if err != nil {
		return ca.UpstreamBundle{}, err
	}
	b, err := bundlev1.NewBundleClient(conn).GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return ca.UpstreamBundle{}, fmt.Errorf("GetBundle: %w", err)
	}
	if b.GetTrustDomain() != a.cfg.TrustDomain.Name() {
		return ca.UpstreamBundle{}, fmt.Errorf("upstream bundle is for trust domain %q, want %q", b.GetTrustDomain(), a.cfg.TrustDomain.Name())
	}
	var ders [][]byte
	for _, x := range b.GetX509Authorities() {
		ders = append(ders, x.GetAsn1())
	}
	roots, err := parseCAs("bundle", ders)
	if err != nil {
		return ca.UpstreamBundle{}, err
	}
	keys, err := convert.JWTKeysFromProto(b.GetJwtAuthorities())
	if err != nil {
		return ca.UpstreamBundle{}, fmt.Errorf("upstream JWT authorities: %w", err)
	}
	return ca.UpstreamBundle{X509Authorities: roots, JWTKeys: keys}, nil
}

func (a *Authority) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// WatchUpstreamBundle polls the upstream bundle every PollInterval (and
// right after each minted CA) and calls update whenever it differs from the
// last one applied, until ctx ends. Failures are logged once per outage.
func (a *Authority) WatchUpstreamBundle(ctx context.Context, update func(context.Context, ca.UpstreamBundle) error) error {
	var last string
	failing := false
	for {
		b, err := a.fetchBundle(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			if !failing {
				a.log.Warn("cannot read the upstream bundle; will keep trying", "error", err)
			} else {
				a.log.Debug("cannot read the upstream bundle", "error", err)
			}
			failing = true
		default:
			if failing {
				a.log.Info("upstream bundle reachable again")
			}
			failing = false
			if fp := fingerprint(b); fp != last {
				if err := update(ctx, b); err != nil {
					a.log.Error("cannot apply the upstream bundle", "error", err)
				} else {
					last = fp
				}
			}
		}
		t := time.NewTimer(a.cfg.PollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-a.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

func fingerprint(b ca.UpstreamBundle) string {
	var s []byte
	for _, c := range b.X509Authorities {
		s = append(s, 'x')
		s = append(s, c.Raw...)
	}
	for _, k := range b.JWTKeys {
		s = append(s, 'j')
		s = append(s, k.KeyID...)
		s = append(s, 0)
		s = append(s, k.PublicKey...)
	}
	return string(s)
}
