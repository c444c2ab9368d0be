package endpoints

import (
	"context"
	"fmt"
	"os"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/sigil-spiffe/sigil/internal/peercred"
	"github.com/sigil-spiffe/sigil/internal/server/audit"
)

// auditCall writes the audit lines of a finished call, when the audit log
// is enabled.
func (e *Endpoints) auditCall(ctx context.Context, t transport, method string, req, resp any, err error) {
	if e.audit == nil || !audit.Audited(method) {
		return
	}
	e.audit.Log(ctx, audit.Call{FullMethod: method, Caller: auditCaller(ctx, t), Request: req, Response: resp, Err: err})
}

// auditCaller identifies the caller from the connection: the peer
// credentials and executable of a local caller (the admin socket is served
// with peercred when the audit log is enabled), the address and the
// X509-SVID's SPIFFE ID of a TCP one. It reads the connection, not the
// authorization's result, so refused calls are identified too.
func auditCaller(ctx context.Context, t transport) audit.Caller {
	if t == localTransport {
		c := audit.Caller{Local: true}
		if cred, ok := peercred.FromContext(ctx); ok {
			c.HasCred, c.UID, c.GID = true, cred.UID, cred.GID
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", cred.PID)); err == nil {
				c.Path = exe
			}
		}
		return c
	}
	var c audit.Caller
	p, ok := peer.FromContext(ctx)
	if !ok {
		return c
	}
	if p.Addr != nil {
		c.Addr = p.Addr.String()
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
		if id, err := x509svid.IDFromCert(ti.State.PeerCertificates[0]); err == nil {
			c.ID = id.String()
		}
	}
	return c
}
