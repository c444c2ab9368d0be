// Package client is the agent's client for the server's agent-facing gRPC
// APIs (spire-api-sdk agent/v1, entry/v1, svid/v1, bundle/v1) over TCP.
//
// A Client holds one gRPC connection. It authenticates the server as
// spiffe://<trust domain>/spire/server against the current trust bundle
// (or, for an insecure bootstrap, not at all) and, once the agent has an
// SVID, presents it as its client certificate. The SVID and bundle are read
// through callbacks at every TLS handshake, but an established connection
// keeps the certificate it was opened with: after renewing the agent SVID,
// close the Client and dial a new one (the server only accepts the renewed
// certificate from then on).
//
// The package is wire-compatible with SPIRE servers; the one extension is
// the watch mode of SyncAuthorizedEntries (see WatchEntries), which a SPIRE
// server ignores.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// DefaultRPCTimeout bounds unary calls and single sync rounds when the
// caller's context has no earlier deadline.
const DefaultRPCTimeout = 30 * time.Second

// ErrNoSVID is returned by the TLS layer when the client is configured for
// mTLS but no agent SVID is available.
var ErrNoSVID = errors.New("no agent SVID available")

// Config configures Dial.
type Config struct {
	// Addr is the server's host:port (its host may be a DNS name
	// resolving to several addresses: gRPC tries them in turn). Servers
	// replaces it for several servers; set one of the two.
	Addr string
	// Servers lists several servers (see Servers): the connection goes to
	// the first that answers, in the agent's order.
	Servers *Servers
	// TrustDomain is the agent's (and server's) trust domain; the server must
	// present an SVID for spiffe://<TrustDomain>/spire/server.
	TrustDomain spiffeid.TrustDomain
	// Bundle returns the current X.509 authorities of TrustDomain, used to
	// verify the server. Required unless InsecureBootstrap.
	Bundle func() []*x509.Certificate
	// SVID returns the current agent SVID to present, or nil to connect
	// without a client certificate (node attestation). May be nil.
	SVID func() *x509svid.SVID
	// InsecureBootstrap skips server verification. Only for the very first
	// attestation and bundle download of an agent with no trust bundle.
	InsecureBootstrap bool
	// RPCTimeout bounds unary calls and single sync rounds; 0 means
	// DefaultRPCTimeout.
	RPCTimeout time.Duration
	// Log receives warnings about malformed server responses; nil discards.
	Log *slog.Logger
	// DialOptions are appended to the client's own (tests).
	DialOptions []grpc.DialOption
}

// Client talks to one server. It is safe for concurrent use.
type Client struct {
	cfg    Config
	log    *slog.Logger
	conn   *grpc.ClientConn
	agent  agentv1.AgentClient
	entry  entryv1.EntryClient
	svid   svidv1.SVIDClient
	bundle bundlev1.BundleClient
}

// Dial validates cfg and creates the connection. It does not wait for the
// server: the first RPC connects (and fails with codes.Unavailable when the
// server is unreachable).
func Dial(cfg Config) (*Client, error) {
	target := cfg.Addr
	switch {
	case cfg.Addr != "" && cfg.Servers != nil:
		return nil, errors.New("client: set a server address or a server list, not both")
	case cfg.Servers != nil:
		// The first entry names the connection (authority, TLS server
		// name); the resolver supplies every address.
		target = serversScheme + ":///" + cfg.Servers.addrs[0]
	case cfg.Addr == "":
		return nil, errors.New("client: server address is required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("client: trust domain is required")
	}
	if cfg.Bundle == nil && !cfg.InsecureBootstrap {
		return nil, errors.New("client: a trust bundle source is required unless bootstrapping insecurely")
	}
	if cfg.RPCTimeout <= 0 {
		cfg.RPCTimeout = DefaultRPCTimeout
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig(cfg))),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  200 * time.Millisecond,
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   30 * time.Second,
			},
			MinConnectTimeout: 10 * time.Second,
		}),
		// A partition that silently drops packets leaves a watch stream
		// hanging: keepalive pings detect it within Time+Timeout so the
		// manager reconnects instead of waiting on a dead stream.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 15 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		// No read buffer of gRPC's own (32 KiB held for the connection's
		// life): TLS already buffers whole records, as on the server's
		// agent port. (gRPC pools write buffers by default.)
		grpc.WithReadBufferSize(0),
	}
	if cfg.Servers != nil {
		opts = append(opts, grpc.WithResolvers(serversBuilder{cfg.Servers}))
	}
	opts = append(opts, cfg.DialOptions...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", clip(target), err)
	}
	return &Client{
		cfg:    cfg,
		log:    log,
		conn:   conn,
		agent:  agentv1.NewAgentClient(conn),
		entry:  entryv1.NewEntryClient(conn),
		svid:   svidv1.NewSVIDClient(conn),
		bundle: bundlev1.NewBundleClient(conn),
	}, nil
}

// Close closes the connection; in-flight calls fail.
func (c *Client) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("client: close: %w", err)
	}
	return nil
}

// ServerID returns the SPIFFE ID the server must present.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	id, err := spiffeid.FromSegments(td, "spire", "server")
	if err != nil {
		// Constant, valid path segments: cannot happen for a valid td.
		panic(err)
	}
	return id
}

func tlsConfig(cfg Config) *tls.Config {
	var conf *tls.Config
	if cfg.InsecureBootstrap {
		conf = &tls.Config{
			MinVersion: tls.VersionTLS12,
			// The server is not authenticated during an insecure bootstrap;
			// the caller checks the agent SVID against the downloaded bundle.
			InsecureSkipVerify: true, //nolint:gosec // explicit insecure_bootstrap
		}
	} else {
		bundle := bundleSource{td: cfg.TrustDomain, get: cfg.Bundle}
		conf = tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(ServerID(cfg.TrustDomain)))
	}
	if cfg.SVID != nil {
		conf.GetClientCertificate = tlsconfig.GetClientCertificate(svidSource(cfg.SVID))
	}
	return conf
}

type bundleSource struct {
	td  spiffeid.TrustDomain
	get func() []*x509.Certificate
}

func (b bundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != b.td {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	roots := b.get()
	if len(roots) == 0 {
		return nil, fmt.Errorf("empty trust bundle for %q", td)
	}
	return x509bundle.FromX509Authorities(td, roots), nil
}

type svidSource func() *x509svid.SVID

func (f svidSource) GetX509SVID() (*x509svid.SVID, error) {
	s := f()
	if s == nil {
		return nil, ErrNoSVID
	}
	return s, nil
}

func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.RPCTimeout)
}
