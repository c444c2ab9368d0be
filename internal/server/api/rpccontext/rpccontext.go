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

// Stages paces the stages of an attestation call. The endpoints set it on
// calls whose source is subject to the attestation rate limits; handlers
// take a slot for each stage and release it before waiting on the client.
// Errors are gRPC status errors (ResourceExhausted, Canceled,
// DeadlineExceeded) to return as they are.
type Stages interface {
	// Check waits for one of the caller's source's slots for checking its
	// credential: cheap work (a hash, one indexed read), done for every
	// request in the order they arrive.
	Check(ctx context.Context) (release func(), err error)
	// Work waits for a slot of the server-wide expensive work (CSR
	// signature check, signing, recording the node), taken only by callers
	// whose credential checked out.
	Work(ctx context.Context) (release func(), err error)
	// Await is taken, holding no slot, while the handler waits for the
	// client's answer to a challenge. It never waits: it refuses
	// (ResourceExhausted) when too many calls of the caller's source are
	// waiting on their clients already.
	Await(ctx context.Context) (release func(), err error)
}

type stagesKey struct{}

// WithStages returns ctx carrying s.
func WithStages(ctx context.Context, s Stages) context.Context {
	return context.WithValue(ctx, stagesKey{}, s)
}

// StagesFrom returns the Stages stored in ctx, or one that never waits.
func StagesFrom(ctx context.Context) Stages {
	if s, ok := ctx.Value(stagesKey{}).(Stages); ok && s != nil {
		return s
	}
	return noStages{}
}

type noStages struct{}

func (noStages) Check(context.Context) (func(), error) { return func() {}, nil }
func (noStages) Work(context.Context) (func(), error)  { return func() {}, nil }
func (noStages) Await(context.Context) (func(), error) { return func() {}, nil }
