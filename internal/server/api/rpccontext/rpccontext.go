// Package rpccontext carries the authenticated caller of a server API call
// from the authentication middleware to the handlers.
package rpccontext

import (
	"context"
	"crypto/x509"
	"net"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Caller describes who is calling. Exactly how it was established is the
// middleware's business; handlers only read it.
type Caller struct {
	// Local is true for calls over the admin unix socket (full admin rights).
	Local bool
	// Addr is the peer address (TCP) or socket path.
	Addr net.Addr
	// X509SVID is the verified client certificate on TCP, if any.
	X509SVID *x509.Certificate
	// ID is the SPIFFE ID of the verified client certificate, if any.
	ID spiffeid.ID
	// Agent is true when ID is an attested, non-banned agent whose
	// certificate serial matches the one on record.
	Agent bool
	// Admin is true for local callers and for SVIDs of entries with admin=true.
	Admin bool
	// Downstream is true for SVIDs of entries with downstream=true.
	Downstream bool
}

type callerKey struct{}

// WithCaller returns ctx carrying c.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the caller stored in ctx (zero Caller, false if none).
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}
