package client

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MaxX509SVIDBatch is the number of CSRs sent per BatchNewX509SVID call
// (SPIRE's agent uses the same limit).
const MaxX509SVIDBatch = 500

// X509SVIDRequest asks for the SVID of one entry.
type X509SVIDRequest struct {
	EntryID string
	CSR     []byte // DER
}

// X509SVIDResult is the outcome for one request, in request order.
type X509SVIDResult struct {
	EntryID string
	// Chain is the SVID chain, leaf first; nil when Err is set.
	Chain []*x509.Certificate
	// Err is the per-entry failure (a gRPC status error, e.g. NotFound for
	// an entry the agent is no longer authorized for).
	Err error
}

// BatchNewX509SVID signs the CSRs, MaxX509SVIDBatch per call. A failed call
// fails the whole request (results of earlier batches are returned along
// with the error); per-entry failures are reported in the results.
func (c *Client) BatchNewX509SVID(ctx context.Context, reqs []X509SVIDRequest) ([]X509SVIDResult, error) {
	results := make([]X509SVIDResult, 0, len(reqs))
	for start := 0; start < len(reqs); start += MaxX509SVIDBatch {
		batch := reqs[start:min(start+MaxX509SVIDBatch, len(reqs))]
		res, err := c.batchOrHalves(ctx, batch)
		results = append(results, res...)
		if err != nil {
			return results, err
		}
	}
	return results, nil
}

// batchOrHalves sends batch in one call, or, when the answer is larger
// than the client accepts (gRPC's 4 MiB receive limit: SVIDs with many
// DNS names, a long chain from a nested server), again in two halves,
// each split the same way. A batch of one that is still too large fails.
func (c *Client) batchOrHalves(ctx context.Context, batch []X509SVIDRequest) ([]X509SVIDResult, error) {
	res, err := c.batchNewX509SVID(ctx, batch)
	if err == nil || len(batch) == 1 || !answerTooLarge(err) {
		return res, err
	}
	c.log.Debug("X509-SVID batch answer too large; sending it in halves", "csrs", len(batch))
	half := len(batch) / 2
	first, err := c.batchOrHalves(ctx, batch[:half])
	if err != nil {
		return first, err
	}
	second, err := c.batchOrHalves(ctx, batch[half:])
	return append(first, second...), err
}

// answerTooLarge reports whether err is gRPC refusing a received message
// over its size limit.
func answerTooLarge(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.ResourceExhausted && strings.Contains(st.Message(), "larger than max")
}

func (c *Client) batchNewX509SVID(ctx context.Context, batch []X509SVIDRequest) ([]X509SVIDResult, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	params := make([]*svidv1.NewX509SVIDParams, len(batch))
	for i, r := range batch {
		params[i] = &svidv1.NewX509SVIDParams{EntryId: r.EntryID, Csr: r.CSR}
	}
	resp, err := c.svid.BatchNewX509SVID(ctx, &svidv1.BatchNewX509SVIDRequest{Params: params})
	if err != nil {
		return nil, fmt.Errorf("batch new X509-SVID: %w", err)
	}
	if len(resp.Results) != len(batch) {
		return nil, fmt.Errorf("batch new X509-SVID: server returned %d results for %d requests", len(resp.Results), len(batch))
	}
	out := make([]X509SVIDResult, len(batch))
	for i, r := range resp.Results {
		out[i].EntryID = batch[i].EntryID
		if code := codes.Code(r.GetStatus().GetCode()); code != codes.OK {
			out[i].Err = status.Error(code, r.GetStatus().GetMessage())
			continue
		}
		chain, err := parseSVIDChain(r.GetSvid())
		if err != nil {
			out[i].Err = fmt.Errorf("entry %s: %w", batch[i].EntryID, err)
			continue
		}
		out[i].Chain = chain
	}
	return out, nil
}

// JWTSVID is a JWT-SVID minted by the server.
type JWTSVID struct {
	Token     string
	ID        spiffeid.ID
	IssuedAt  time.Time
	ExpiresAt time.Time
	Hint      string
}

// NewJWTSVID mints a JWT-SVID for an entry the agent is authorized for.
func (c *Client) NewJWTSVID(ctx context.Context, entryID string, audience []string) (*JWTSVID, error) {
	if len(audience) == 0 {
		return nil, errors.New("new JWT-SVID: at least one audience is required")
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.svid.NewJWTSVID(ctx, &svidv1.NewJWTSVIDRequest{EntryId: entryID, Audience: audience})
	if err != nil {
		return nil, fmt.Errorf("new JWT-SVID for entry %s: %w", entryID, err)
	}
	s := resp.GetSvid()
	switch {
	case s == nil || s.Token == "":
		return nil, fmt.Errorf("new JWT-SVID for entry %s: response carries no token", entryID)
	case s.IssuedAt == 0 || s.ExpiresAt == 0 || s.ExpiresAt < s.IssuedAt:
		return nil, fmt.Errorf("new JWT-SVID for entry %s: invalid validity period", entryID)
	}
	id, err := idFromProto(s.GetId())
	if err != nil {
		return nil, fmt.Errorf("new JWT-SVID for entry %s: SPIFFE ID: %w", entryID, err)
	}
	return &JWTSVID{
		Token:     s.Token,
		ID:        id,
		IssuedAt:  time.Unix(s.IssuedAt, 0),
		ExpiresAt: time.Unix(s.ExpiresAt, 0),
		Hint:      s.Hint,
	}, nil
}

// idFromProto validates a SPIFFEID message.
func idFromProto(p *types.SPIFFEID) (spiffeid.ID, error) {
	if p == nil {
		return spiffeid.ID{}, errors.New("missing SPIFFE ID")
	}
	td, err := spiffeid.TrustDomainFromString(p.TrustDomain)
	if err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromPath(td, p.Path)
}
