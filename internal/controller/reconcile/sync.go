package reconcile

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/sigil-spiffe/sigil/internal/controller/render"
)

// EntryAPI is the part of the server's entry service (entry/v1) the
// reconciler calls; entryv1.EntryClient is one.
type EntryAPI interface {
	ListEntries(ctx context.Context, in *entryv1.ListEntriesRequest, opts ...grpc.CallOption) (*entryv1.ListEntriesResponse, error)
	BatchCreateEntry(ctx context.Context, in *entryv1.BatchCreateEntryRequest, opts ...grpc.CallOption) (*entryv1.BatchCreateEntryResponse, error)
	BatchUpdateEntry(ctx context.Context, in *entryv1.BatchUpdateEntryRequest, opts ...grpc.CallOption) (*entryv1.BatchUpdateEntryResponse, error)
	BatchDeleteEntry(ctx context.Context, in *entryv1.BatchDeleteEntryRequest, opts ...grpc.CallOption) (*entryv1.BatchDeleteEntryResponse, error)
}

// Sizes of list pages and write batches.
const (
	listPageSize = 1000
	batchSize    = 200
)

// Result is what one sync did.
type Result struct {
	Created, Updated, Deleted int
	// Failed counts entries the server refused (each is also in its
	// owner's Failures; deletions have no owner and are in DeleteErrs).
	Failed     int
	DeleteErrs []string
}

// Plan is the writes that bring current to declared.
type Plan struct {
	Create []Declared
	Update []Declared // Entry.ID set to the current entry's
	Delete []render.Entry
}

// ListCurrent lists the server's entries that are the controller's (those
// with the ID prefix, or all).
func ListCurrent(ctx context.Context, api EntryAPI, idPrefix string) ([]render.Entry, error) {
	var out []render.Entry
	token := ""
	for {
		resp, err := api.ListEntries(ctx, &entryv1.ListEntriesRequest{PageSize: listPageSize, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("list entries: %w", err)
		}
		for _, pe := range resp.GetEntries() {
			if !strings.HasPrefix(pe.GetId(), idPrefix) {
				continue
			}
			e, err := fromProto(pe)
			if err != nil {
				return nil, fmt.Errorf("entry %s: %w", clip(pe.GetId()), err)
			}
			out = append(out, e)
		}
		if token = resp.GetNextPageToken(); token == "" {
			return out, nil
		}
	}
}

// MakePlan compares current entries with the declared ones, and records
// in the owners which of their entries are set and which are masked.
func MakePlan(current []render.Entry, declared map[Key][]Declared, idPrefix string) Plan {
	var p Plan
	byKey := map[Key][]render.Entry{}
	for _, e := range current {
		k := KeyOf(&e)
		byKey[k] = append(byKey[k], e)
	}
	keys := make([]Key, 0, len(declared))
	for k := range declared {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		group := declared[k]
		want := group[0]
		want.By.Stats.EntriesToSet++
		for _, other := range group[1:] {
			other.By.Stats.EntriesMasked++
			other.By.Masked = true
		}
		cur := byKey[k]
		delete(byKey, k)
		if len(cur) == 0 {
			if idPrefix != "" {
				want.Entry.ID = idPrefix + uuid.NewString()
			}
			p.Create = append(p.Create, want)
			continue
		}
		slices.SortFunc(cur, func(a, b render.Entry) int { return strings.Compare(a.ID, b.ID) })
		want.Entry.ID = cur[0].ID
		if !Same(&want.Entry, &cur[0]) {
			p.Update = append(p.Update, want)
		} else {
			want.By.Set = true
		}
		p.Delete = append(p.Delete, cur[1:]...)
	}
	for _, rest := range byKey {
		p.Delete = append(p.Delete, rest...)
	}
	p.Delete = slices.DeleteFunc(p.Delete, isJoinTokenEntry)
	slices.SortFunc(p.Delete, func(a, b render.Entry) int { return strings.Compare(a.ID, b.ID) })
	return p
}

// isJoinTokenEntry: the entry a join token's attestation made (parent
// under /spire/agent/join_token/, a spiffe_id selector), never the
// controller's to delete.
func isJoinTokenEntry(e render.Entry) bool {
	if !strings.HasPrefix(e.ParentID.Path(), "/spire/agent/join_token/") {
		return false
	}
	return slices.ContainsFunc(e.Selectors, func(s render.Selector) bool { return s.Type == "spiffe_id" })
}

// Same reports whether two entries of one key agree on every other field.
func Same(a, b *render.Entry) bool {
	tds := func(in []spiffeid.TrustDomain) []string {
		out := make([]string, len(in))
		for i, td := range in {
			out[i] = td.Name()
		}
		slices.Sort(out)
		return out
	}
	sorted := func(in []string) []string {
		out := slices.Clone(in)
		slices.Sort(out)
		return out
	}
	return a.X509SVIDTTL == b.X509SVIDTTL && a.JWTSVIDTTL == b.JWTSVIDTTL &&
		a.Admin == b.Admin && a.Downstream == b.Downstream && a.StoreSVID == b.StoreSVID &&
		a.Hint == b.Hint &&
		slices.Equal(tds(a.FederatesWith), tds(b.FederatesWith)) &&
		slices.Equal(sorted(a.DNSNames), sorted(b.DNSNames))
}

// Apply carries out the plan: deletions, then creations, then updates, in
// batches. Refusals are counted in the owners (EntryFailures, Failures);
// only a failed call (the server unreachable) is returned as an error.
func Apply(ctx context.Context, api EntryAPI, p Plan) (Result, error) {
	var r Result
	for chunk := range slices.Chunk(p.Delete, batchSize) {
		ids := make([]string, len(chunk))
		for i, e := range chunk {
			ids[i] = e.ID
		}
		resp, err := api.BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: ids})
		if err != nil {
			return r, fmt.Errorf("delete entries: %w", err)
		}
		for i, res := range resp.GetResults() {
			switch c := codes.Code(res.GetStatus().GetCode()); c {
			case codes.OK, codes.NotFound:
				r.Deleted++
			default:
				r.Failed++
				r.DeleteErrs = append(r.DeleteErrs, fmt.Sprintf("delete entry %s (%s): %s: %s", chunk[i].ID, chunk[i].SPIFFEID, c, clip(res.GetStatus().GetMessage())))
			}
		}
	}
	for chunk := range slices.Chunk(p.Create, batchSize) {
		req := &entryv1.BatchCreateEntryRequest{Entries: make([]*types.Entry, len(chunk))}
		for i, d := range chunk {
			req.Entries[i] = toProto(&d.Entry)
		}
		resp, err := api.BatchCreateEntry(ctx, req, grpc.WaitForReady(true))
		if err != nil {
			return r, fmt.Errorf("create entries: %w", err)
		}
		res := resp.GetResults()
		for i, d := range chunk {
			st := statusAt(len(res), i, func(i int) *types.Status { return res[i].GetStatus() })
			if codes.Code(st.GetCode()) == codes.OK {
				r.Created++
				d.By.Set = true
				continue
			}
			r.Failed++
			d.By.Stats.EntryFailures++
			d.By.fail("create entry %s: %s: %s", d.Entry.SPIFFEID, codes.Code(st.GetCode()), clip(st.GetMessage()))
		}
	}
	for chunk := range slices.Chunk(p.Update, batchSize) {
		req := &entryv1.BatchUpdateEntryRequest{Entries: make([]*types.Entry, len(chunk))}
		for i, d := range chunk {
			req.Entries[i] = toProto(&d.Entry)
		}
		resp, err := api.BatchUpdateEntry(ctx, req)
		if err != nil {
			return r, fmt.Errorf("update entries: %w", err)
		}
		res := resp.GetResults()
		for i, d := range chunk {
			st := statusAt(len(res), i, func(i int) *types.Status { return res[i].GetStatus() })
			if codes.Code(st.GetCode()) == codes.OK {
				r.Updated++
				d.By.Set = true
				continue
			}
			r.Failed++
			d.By.Stats.EntryFailures++
			d.By.fail("update entry %s: %s: %s", d.Entry.SPIFFEID, codes.Code(st.GetCode()), clip(st.GetMessage()))
		}
	}
	return r, nil
}

func statusAt(n, i int, get func(int) *types.Status) *types.Status {
	if i >= n {
		return &types.Status{Code: int32(codes.Internal), Message: "no result from the server"}
	}
	return get(i)
}

func clip(s string) string {
	if len(s) > 256 {
		return s[:256] + "..."
	}
	return s
}

func toProto(e *render.Entry) *types.Entry {
	pe := &types.Entry{
		Id:          e.ID,
		SpiffeId:    &types.SPIFFEID{TrustDomain: e.SPIFFEID.TrustDomain().Name(), Path: e.SPIFFEID.Path()},
		ParentId:    &types.SPIFFEID{TrustDomain: e.ParentID.TrustDomain().Name(), Path: e.ParentID.Path()},
		X509SvidTtl: int32(min(e.X509SVIDTTL/time.Second, 1<<31-1)),
		JwtSvidTtl:  int32(min(e.JWTSVIDTTL/time.Second, 1<<31-1)),
		DnsNames:    e.DNSNames,
		Admin:       e.Admin,
		Downstream:  e.Downstream,
		StoreSvid:   e.StoreSVID,
		Hint:        e.Hint,
	}
	for _, s := range e.Selectors {
		pe.Selectors = append(pe.Selectors, &types.Selector{Type: s.Type, Value: s.Value})
	}
	for _, td := range e.FederatesWith {
		pe.FederatesWith = append(pe.FederatesWith, td.Name())
	}
	return pe
}

func fromProto(pe *types.Entry) (render.Entry, error) {
	sid, err := protoID(pe.GetSpiffeId())
	if err != nil {
		return render.Entry{}, fmt.Errorf("SPIFFE ID: %w", err)
	}
	parent, err := protoID(pe.GetParentId())
	if err != nil {
		return render.Entry{}, fmt.Errorf("parent ID: %w", err)
	}
	e := render.Entry{
		ID:          pe.GetId(),
		SPIFFEID:    sid,
		ParentID:    parent,
		X509SVIDTTL: time.Duration(pe.GetX509SvidTtl()) * time.Second,
		JWTSVIDTTL:  time.Duration(pe.GetJwtSvidTtl()) * time.Second,
		DNSNames:    pe.GetDnsNames(),
		Admin:       pe.GetAdmin(),
		Downstream:  pe.GetDownstream(),
		StoreSVID:   pe.GetStoreSvid(),
		Hint:        pe.GetHint(),
	}
	for _, s := range pe.GetSelectors() {
		e.Selectors = append(e.Selectors, render.Selector{Type: s.GetType(), Value: s.GetValue()})
	}
	for _, name := range pe.GetFederatesWith() {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return render.Entry{}, fmt.Errorf("federates with: %w", err)
		}
		e.FederatesWith = append(e.FederatesWith, td)
	}
	return e, nil
}

func protoID(p *types.SPIFFEID) (spiffeid.ID, error) {
	td, err := spiffeid.TrustDomainFromString(p.GetTrustDomain())
	if err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromPath(td, p.GetPath())
}

// Sync renders the world, lists the server's entries and applies the
// difference. The owners carry each resource's outcome even when the
// returned error (the server unreachable) stopped the sync.
func Sync(ctx context.Context, cfg *Config, api EntryAPI, w *World) ([]*Owner, Result, error) {
	owners, declared := Declare(cfg, w)
	current, err := ListCurrent(ctx, api, cfg.EntryIDPrefix)
	if err != nil {
		return owners, Result{}, err
	}
	res, err := Apply(ctx, api, MakePlan(current, declared, cfg.EntryIDPrefix))
	return owners, res, err
}
