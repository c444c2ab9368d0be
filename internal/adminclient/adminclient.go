// Package adminclient drives a sigil-server's admin API (the spire-api-sdk
// agent, entry and bundle services on the server's unix socket) for the few
// admin steps programs other than the CLI take: `sigil-server dev` sets up
// its environment with it, and the test harnesses (internal/testutil.Admin,
// bench/internal/stack, test/nested) wrap it. It is one implementation of
// "create a join token, register an entry, fetch the bundle as PEM".
//
// Errors are those of the gRPC calls; a batch result that is not OK is
// returned as a gRPC status error with the result's code, so callers can
// test status.Code(err) (e.g. AlreadyExists) as for any call.
package adminclient

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// Client is a connection to a server's admin socket with its service
// clients. The fields are there for calls this package has no helper for.
type Client struct {
	Conn   *grpc.ClientConn
	Agent  agentv1.AgentClient
	Entry  entryv1.EntryClient
	Bundle bundlev1.BundleClient
	SVID   svidv1.SVIDClient
	// TD is the server's trust domain.
	TD spiffeid.TrustDomain
}

// Dial prepares a client of the admin socket at socketPath (gRPC connects
// lazily, and again after a server restart). Close releases it.
func Dial(socketPath string, td spiffeid.TrustDomain) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", socketPath, err)
	}
	return &Client{
		Conn:   conn,
		Agent:  agentv1.NewAgentClient(conn),
		Entry:  entryv1.NewEntryClient(conn),
		Bundle: bundlev1.NewBundleClient(conn),
		SVID:   svidv1.NewSVIDClient(conn),
		TD:     td,
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

// ProtoID is id in the API's form.
func ProtoID(id spiffeid.ID) *types.SPIFFEID {
	return &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()}
}

// IDString formats an API SPIFFE ID.
func IDString(id *types.SPIFFEID) string {
	return "spiffe://" + id.GetTrustDomain() + id.GetPath()
}

// JoinTokenAgentID is the agent ID a join token attests as when it was
// created without one (spiffe://<td>/spire/agent/join_token/<token>).
func (c *Client) JoinTokenAgentID(token string) spiffeid.ID {
	return spiffeid.RequireFromSegments(c.TD, "spire", "agent", "join_token", token)
}

// CreateJoinToken creates a join token valid for ttl whose agent gets
// agentID; a zero agentID leaves the server's default
// (JoinTokenAgentID).
func (c *Client) CreateJoinToken(ctx context.Context, agentID spiffeid.ID, ttl time.Duration) (string, error) {
	req := &agentv1.CreateJoinTokenRequest{Ttl: int32(ttl / time.Second)}
	if !agentID.IsZero() {
		req.AgentId = ProtoID(agentID)
	}
	resp, err := c.Agent.CreateJoinToken(ctx, req)
	if err != nil {
		return "", fmt.Errorf("create join token: %w", err)
	}
	return resp.GetValue(), nil
}

// Selectors parses selectors written "type:value" (e.g. "unix:uid:0").
func Selectors(sels ...string) ([]*types.Selector, error) {
	out := make([]*types.Selector, 0, len(sels))
	for _, s := range sels {
		typ, val, ok := strings.Cut(s, ":")
		if !ok || typ == "" || val == "" {
			return nil, fmt.Errorf("selector %q: want type:value", s)
		}
		out = append(out, &types.Selector{Type: typ, Value: val})
	}
	return out, nil
}

// NewEntry is the entry registering id under parent with selectors
// written "type:value".
func NewEntry(id, parent spiffeid.ID, selectors ...string) (*types.Entry, error) {
	sels, err := Selectors(selectors...)
	if err != nil {
		return nil, err
	}
	return &types.Entry{SpiffeId: ProtoID(id), ParentId: ProtoID(parent), Selectors: sels}, nil
}

// CreateEntries creates entries in one batch and returns their IDs. The
// first result that is not OK is returned as a status error with its code
// (the others may have been created).
func (c *Client) CreateEntries(ctx context.Context, entries ...*types.Entry) ([]string, error) {
	resp, err := c.Entry.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: entries})
	if err != nil {
		return nil, fmt.Errorf("create entries: %w", err)
	}
	if len(resp.GetResults()) != len(entries) {
		return nil, fmt.Errorf("create entries: %d results for %d entries", len(resp.GetResults()), len(entries))
	}
	ids := make([]string, len(entries))
	for i, r := range resp.GetResults() {
		if err := resultErr(r.GetStatus()); err != nil {
			return nil, fmt.Errorf("create entry %s: %w", IDString(entries[i].GetSpiffeId()), err)
		}
		ids[i] = r.GetEntry().GetId()
	}
	return ids, nil
}

// CreateEntry creates one entry and returns its ID.
func (c *Client) CreateEntry(ctx context.Context, e *types.Entry) (string, error) {
	ids, err := c.CreateEntries(ctx, e)
	if err != nil {
		return "", err
	}
	return ids[0], nil
}

// DeleteEntries deletes entries by ID in one batch.
func (c *Client) DeleteEntries(ctx context.Context, ids ...string) error {
	resp, err := c.Entry.BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: ids})
	if err != nil {
		return fmt.Errorf("delete entries: %w", err)
	}
	for _, r := range resp.GetResults() {
		if err := resultErr(r.GetStatus()); err != nil {
			return fmt.Errorf("delete entry %s: %w", r.GetId(), err)
		}
	}
	return nil
}

// resultErr is a batch result's status as an error (nil for OK).
func resultErr(st *types.Status) error {
	if c := codes.Code(st.GetCode()); c != codes.OK {
		return status.Error(c, st.GetMessage())
	}
	return nil
}

// pageSize is the page size of the List helpers.
const pageSize = 500

// ListEntries lists every registration entry, page by page.
func (c *Client) ListEntries(ctx context.Context) ([]*types.Entry, error) {
	var all []*types.Entry
	token := ""
	for {
		resp, err := c.Entry.ListEntries(ctx, &entryv1.ListEntriesRequest{PageSize: pageSize, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("list entries: %w", err)
		}
		all = append(all, resp.GetEntries()...)
		if token = resp.GetNextPageToken(); token == "" {
			return all, nil
		}
	}
}

// ListAgents lists every attested agent, page by page.
func (c *Client) ListAgents(ctx context.Context) ([]*types.Agent, error) {
	var all []*types.Agent
	token := ""
	for {
		resp, err := c.Agent.ListAgents(ctx, &agentv1.ListAgentsRequest{PageSize: pageSize, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("list agents: %w", err)
		}
		all = append(all, resp.GetAgents()...)
		if token = resp.GetNextPageToken(); token == "" {
			return all, nil
		}
	}
}

// BanAgent bans an agent (agent ban).
func (c *Client) BanAgent(ctx context.Context, id spiffeid.ID) error {
	if _, err := c.Agent.BanAgent(ctx, &agentv1.BanAgentRequest{Id: ProtoID(id)}); err != nil {
		return fmt.Errorf("ban agent %s: %w", id, err)
	}
	return nil
}

// DeleteAgent deletes an agent's record (agent evict).
func (c *Client) DeleteAgent(ctx context.Context, id spiffeid.ID) error {
	if _, err := c.Agent.DeleteAgent(ctx, &agentv1.DeleteAgentRequest{Id: ProtoID(id)}); err != nil {
		return fmt.Errorf("delete agent %s: %w", id, err)
	}
	return nil
}

// SPIFFEBundle returns the server's own trust bundle: X.509 and JWT
// authorities.
func (c *Client) SPIFFEBundle(ctx context.Context) (*spiffebundle.Bundle, error) {
	b, err := c.Bundle.GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return nil, fmt.Errorf("get bundle: %w", err)
	}
	out := spiffebundle.New(c.TD)
	for _, a := range b.GetX509Authorities() {
		cert, err := x509.ParseCertificate(a.GetAsn1())
		if err != nil {
			return nil, fmt.Errorf("get bundle: X.509 authority: %w", err)
		}
		out.AddX509Authority(cert)
	}
	for _, k := range b.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("get bundle: JWT authority %s: %w", clip.Quote(k.GetKeyId()), err)
		}
		if err := out.AddJWTAuthority(k.GetKeyId(), pub); err != nil {
			return nil, fmt.Errorf("get bundle: %w", err)
		}
	}
	return out, nil
}

// BundleCerts returns the server's X.509 authorities; a bundle without
// any is an error.
func (c *Client) BundleCerts(ctx context.Context) ([]*x509.Certificate, error) {
	b, err := c.SPIFFEBundle(ctx)
	if err != nil {
		return nil, err
	}
	if len(b.X509Authorities()) == 0 {
		return nil, errors.New("get bundle: the server's bundle has no X.509 authorities")
	}
	return b.X509Authorities(), nil
}

// BundlePEM returns the server's X.509 authorities as PEM, as an agent's
// trust_bundle_path wants them.
func (c *Client) BundlePEM(ctx context.Context) ([]byte, error) {
	certs, err := c.BundleCerts(ctx)
	if err != nil {
		return nil, err
	}
	var out []byte
	for _, cert := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	return out, nil
}
