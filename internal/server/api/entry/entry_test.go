package entry_test

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/server/api/entry"
	"github.com/sigil-spiffe/sigil/internal/server/api/rpccontext"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

const (
	agent1 = "spiffe://example.org/spire/agent/a1"
	agent2 = "spiffe://example.org/spire/agent/a2"
	// testAgentHeader makes the test interceptor authenticate the call as
	// this agent; without it the caller is a local admin.
	testAgentHeader = "test-agent"
)

// callerFor is the test stand-in for the endpoints middleware.
func callerFor(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(testAgentHeader); len(v) == 1 {
		return rpccontext.WithCaller(ctx, rpccontext.Caller{ID: spiffeid.RequireFromString(v[0]), Agent: true})
	}
	return rpccontext.WithCaller(ctx, rpccontext.Caller{Local: true, Admin: true})
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w wrappedStream) Context() context.Context { return w.ctx }

type env struct {
	st     *sqlstore.Store
	cache  *entrycache.Cache
	client entryv1.EntryClient
}

func newEnv(t testing.TB, pageSize int) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := sqlstore.Open(ctx, sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(t.TempDir(), "ds.sqlite3")})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	cache := entrycache.New(entrycache.Config{Store: st, PollInterval: time.Hour})
	if err := cache.Load(ctx); err != nil {
		t.Fatal(err)
	}
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = cache.Run(ctx) }()

	svc := entry.New(entry.Config{Store: st, Cache: cache, TrustDomain: td, EntryPageSize: pageSize})
	srv := grpc.NewServer(
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			return h(callerFor(ctx), req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			return h(srv, wrappedStream{ss, callerFor(ss.Context())})
		}),
	)
	svc.Register(srv)
	sock := filepath.Join(testutil.ShortTempDir(t), "api.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		cancel()
		<-runDone
		st.Close()
	})
	return &env{st: st, cache: cache, client: entryv1.NewEntryClient(conn)}
}

func ctxFor(t testing.TB, agent string, kv ...string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // hang guard only
	t.Cleanup(cancel)
	if agent != "" {
		kv = append(kv, testAgentHeader, agent)
	}
	if len(kv) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, kv...)
	}
	return ctx
}

func pid(path string) *types.SPIFFEID { return &types.SPIFFEID{TrustDomain: "example.org", Path: path} }

func sel(t, v string) *types.Selector { return &types.Selector{Type: t, Value: v} }

func base() *types.Entry {
	return &types.Entry{SpiffeId: pid("/w"), ParentId: pid("/spire/agent/a1"), Selectors: []*types.Selector{sel("unix", "uid:1")}}
}

func (e *env) mustCreate(t testing.TB, entries ...*types.Entry) []*types.Entry {
	t.Helper()
	resp, err := e.client.BatchCreateEntry(ctxFor(t, ""), &entryv1.BatchCreateEntryRequest{Entries: entries})
	if err != nil {
		t.Fatalf("BatchCreateEntry: %v", err)
	}
	var out []*types.Entry
	for i, r := range resp.Results {
		if r.Status.Code != int32(codes.OK) {
			t.Fatalf("create %d: %v %s", i, codes.Code(r.Status.Code), r.Status.Message)
		}
		out = append(out, r.Entry)
	}
	return out
}

// addBundles stores a bundle for each trust domain, so entries may
// federate with them.
func (e *env) addBundles(t testing.TB, tds ...string) {
	t.Helper()
	for _, td := range tds {
		if _, err := e.st.SetBundle(context.Background(), &datastore.Bundle{TrustDomain: td}); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *env) count(t *testing.T) int32 {
	t.Helper()
	resp, err := e.client.CountEntries(ctxFor(t, ""), &entryv1.CountEntriesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

func TestBatchCreateEntry(t *testing.T) {
	e := newEnv(t, 0)
	e.addBundles(t, "fed.org", "other.org")
	ctx := ctxFor(t, "")
	e1 := base()
	e1.DnsNames = []string{"web.example.org", "*.web.example.org"}
	e1.FederatesWith = []string{"spiffe://fed.org", "other.org"}
	e1.Hint = "web"
	e1.X509SvidTtl, e1.JwtSvidTtl = 600, 60
	e1.Admin, e1.StoreSvid = true, true
	e2 := base()
	e2.Id = "my-id"
	e2.SpiffeId = pid("/w2")
	dup := base() // same SPIFFE ID, parent and selectors as e1
	resp, err := e.client.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{e1, e2, dup}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != 3 {
		t.Fatalf("got %d results, want 3", len(resp.Results))
	}
	r0, r1, r2 := resp.Results[0], resp.Results[1], resp.Results[2]
	if r0.Status.Code != 0 || r0.Status.Message != "OK" || r1.Status.Code != 0 {
		t.Fatalf("statuses: %v, %v", r0.Status, r1.Status)
	}
	if r0.Entry.Id == "" || r1.Entry.Id != "my-id" {
		t.Errorf("IDs: %q, %q", r0.Entry.Id, r1.Entry.Id)
	}
	if got := r0.Entry.FederatesWith; !slices.Equal(got, []string{"fed.org", "other.org"}) {
		t.Errorf("federates_with = %v, want names", got)
	}
	if got := r0.Entry; got.Hint != "web" || got.X509SvidTtl != 600 || got.JwtSvidTtl != 60 || !got.Admin || !got.StoreSvid ||
		!slices.Equal(got.DnsNames, e1.DnsNames) || got.CreatedAt == 0 || got.RevisionNumber != 0 ||
		got.SpiffeId.Path != "/w" || got.ParentId.Path != "/spire/agent/a1" {
		t.Errorf("created entry = %v", got)
	}
	if r2.Status.Code != int32(codes.AlreadyExists) || r2.Status.Message != "similar entry already exists" {
		t.Errorf("duplicate status = %v", r2.Status)
	}
	if r2.Entry == nil || r2.Entry.Id != r0.Entry.Id {
		t.Errorf("duplicate result carries %v, want the existing entry %q", r2.Entry, r0.Entry.Id)
	}

	// A later duplicate gets the existing entry too, masked.
	resp, err = e.client.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{
		Entries:    []*types.Entry{base()},
		OutputMask: &types.EntryMask{SpiffeId: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	if r := resp.Results[0]; r.Status.Code != int32(codes.AlreadyExists) || r.Entry.GetId() != r0.Entry.Id ||
		r.Entry.SpiffeId == nil || r.Entry.ParentId != nil || r.Entry.Selectors != nil || r.Entry.Hint != "" {
		t.Errorf("masked duplicate result = %v", r)
	}
	// A taken ID with different content: AlreadyExists without an entry.
	taken := base()
	taken.Id = "my-id"
	taken.SpiffeId = pid("/w3")
	resp, err = e.client.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{taken}})
	if err != nil {
		t.Fatal(err)
	}
	if r := resp.Results[0]; r.Status.Code != int32(codes.AlreadyExists) || r.Entry != nil || !strings.HasPrefix(r.Status.Message, "failed to create entry: ") {
		t.Errorf("taken ID result = %v", r)
	}
	if n := e.count(t); n != 2 {
		t.Errorf("count = %d, want 2", n)
	}
}

func TestBatchCreateEntryBadInput(t *testing.T) {
	e := newEnv(t, 0)
	ctx := ctxFor(t, "")
	long := "/" + strings.Repeat("x", 2100)
	cases := []struct {
		name   string
		mod    func(*types.Entry)
		substr string
	}{
		{"missing SPIFFE ID", func(e *types.Entry) { e.SpiffeId = nil }, "invalid spiffe ID: request must specify SPIFFE ID"},
		{"uppercase trust domain", func(e *types.Entry) { e.SpiffeId.TrustDomain = "Example.org" }, "invalid spiffe ID: trust domain \"Example.org\": trust domain characters are limited"},
		{"trust domain as URI", func(e *types.Entry) { e.SpiffeId.TrustDomain = "spiffe://example.org" }, "invalid spiffe ID: trust domain \"spiffe://example.org\" must be a name"},
		{"empty segment", func(e *types.Entry) { e.SpiffeId.Path = "/a//b" }, "path cannot contain empty segments"},
		{"dot segment", func(e *types.Entry) { e.SpiffeId.Path = "/a/./b" }, "path cannot contain dot segments"},
		{"dot-dot segment", func(e *types.Entry) { e.SpiffeId.Path = "/a/../b" }, "path cannot contain dot segments"},
		{"percent-encoding", func(e *types.Entry) { e.SpiffeId.Path = "/a%20b" }, "path segment characters are limited"},
		{"trailing slash", func(e *types.Entry) { e.SpiffeId.Path = "/a/" }, "path cannot have a trailing slash"},
		{"too long", func(e *types.Entry) { e.SpiffeId.Path = long }, "longer than 2048 bytes"},
		{"SPIFFE ID in another trust domain", func(e *types.Entry) { e.SpiffeId.TrustDomain = "other.org" }, "invalid spiffe ID: \"spiffe://other.org/w\" is not a member of trust domain \"example.org\""},
		{"SPIFFE ID reserved", func(e *types.Entry) { e.SpiffeId.Path = "/spire/agent/x" }, "path is in the reserved namespace"},
		{"SPIFFE ID root", func(e *types.Entry) { e.SpiffeId.Path = "" }, "invalid spiffe ID: \"spiffe://example.org\" is not a workload in trust domain \"example.org\"; path is empty"},
		{"missing parent", func(e *types.Entry) { e.ParentId = nil }, "invalid parent ID: request must specify SPIFFE ID"},
		{"parent in another trust domain", func(e *types.Entry) { e.ParentId.TrustDomain = "other.org" }, "invalid parent ID: \"spiffe://other.org/spire/agent/a1\" is not a member of trust domain \"example.org\""},
		{"parent root", func(e *types.Entry) { e.ParentId.Path = "" }, "invalid parent ID: \"spiffe://example.org\" is not a member of trust domain \"example.org\"; path is empty"},
		{"parent uppercase", func(e *types.Entry) { e.ParentId.TrustDomain = "EXAMPLE.org" }, "invalid parent ID: trust domain"},
		{"no selectors", func(e *types.Entry) { e.Selectors = nil }, "selector list is empty"},
		{"selector without type", func(e *types.Entry) { e.Selectors = []*types.Selector{sel("", "x")} }, "invalid selector \":x\": selector type is empty"},
		{"selector type with colon", func(e *types.Entry) { e.Selectors = []*types.Selector{sel("a:b", "x")} }, "must not contain ':'"},
		{"selector without value", func(e *types.Entry) { e.Selectors = []*types.Selector{sel("unix", "")} }, "empty value"},
		{"negative X509 TTL", func(e *types.Entry) { e.X509SvidTtl = -1 }, "invalid x509_svid_ttl -1: must not be negative"},
		{"negative JWT TTL", func(e *types.Entry) { e.JwtSvidTtl = -5 }, "invalid jwt_svid_ttl -5: must not be negative"},
		{"bad DNS name", func(e *types.Entry) { e.DnsNames = []string{"bad_name.org"} }, "invalid DNS name: \"bad_name.org\" contains"},
		{"DNS label with hyphen at start", func(e *types.Entry) { e.DnsNames = []string{"-a.org"} }, "invalid DNS name"},
		{"empty DNS name", func(e *types.Entry) { e.DnsNames = []string{""} }, "invalid DNS name: empty DNS name"},
		{"bad federated trust domain", func(e *types.Entry) { e.FederatesWith = []string{"Bad.Org"} }, "invalid federated trust domain"},
		{"federates with own trust domain", func(e *types.Entry) { e.FederatesWith = []string{"spiffe://example.org"} }, "is the server's own trust domain"},
		{"hint too long", func(e *types.Entry) { e.Hint = strings.Repeat("h", 1025) }, "hint is too long, max length is 1024 characters"},
		{"bad entry ID", func(e *types.Entry) { e.Id = "bad id/" }, "invalid entry ID"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := base()
			tc.mod(in)
			resp, err := e.client.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{in}})
			if err != nil {
				t.Fatal(err)
			}
			r := resp.Results[0]
			if r.Status.Code != int32(codes.InvalidArgument) {
				t.Fatalf("code = %v (%s), want InvalidArgument", codes.Code(r.Status.Code), r.Status.Message)
			}
			if !strings.HasPrefix(r.Status.Message, "failed to convert entry: ") || !strings.Contains(r.Status.Message, tc.substr) {
				t.Errorf("message = %q, want it to contain %q", r.Status.Message, tc.substr)
			}
			if r.Entry != nil {
				t.Errorf("failed result carries an entry")
			}
		})
	}
	if n := e.count(t); n != 0 {
		t.Fatalf("bad input wrote %d entries", n)
	}

	// In a mixed batch only the valid entries are written.
	good2 := base()
	good2.SpiffeId = pid("/w2")
	bad := base()
	bad.Selectors = nil
	resp, err := e.client.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{base(), bad, good2}})
	if err != nil {
		t.Fatal(err)
	}
	var got []codes.Code
	for _, r := range resp.Results {
		got = append(got, codes.Code(r.Status.Code))
	}
	if !slices.Equal(got, []codes.Code{codes.OK, codes.InvalidArgument, codes.OK}) {
		t.Errorf("mixed batch codes = %v", got)
	}
	if n := e.count(t); n != 2 {
		t.Errorf("count = %d, want 2", n)
	}
}

func TestBatchUpdateEntry(t *testing.T) {
	e := newEnv(t, 0)
	ctx := ctxFor(t, "")
	other := base()
	other.SpiffeId = pid("/other")
	created := e.mustCreate(t, base(), other)
	id := created[0].Id

	// Masked update: only the masked fields are read; the rest of the
	// request may be empty.
	resp, err := e.client.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{
		Entries:    []*types.Entry{{Id: id, X509SvidTtl: 90, Hint: "h", DnsNames: []string{"x.org"}}},
		InputMask:  &types.EntryMask{X509SvidTtl: true, Hint: true},
		OutputMask: &types.EntryMask{X509SvidTtl: true, Hint: true, RevisionNumber: true, Selectors: true, DnsNames: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.Results[0]
	if r.Status.Code != 0 || r.Status.Message != "OK" {
		t.Fatalf("status = %v", r.Status)
	}
	if r.Entry.X509SvidTtl != 90 || r.Entry.Hint != "h" || r.Entry.RevisionNumber != 1 || len(r.Entry.Selectors) != 1 || r.Entry.DnsNames != nil || r.Entry.SpiffeId != nil {
		t.Errorf("updated entry = %v", r.Entry)
	}

	badParent := base()
	badParent.Id = id
	badParent.ParentId = pid("")
	dupOfOther := &types.Entry{Id: id, SpiffeId: pid("/other")}
	cases := []struct {
		name  string
		in    *types.Entry
		mask  *types.EntryMask
		code  codes.Code
		start string
	}{
		{"not found", &types.Entry{Id: "nope", Hint: "x"}, &types.EntryMask{Hint: true}, codes.NotFound, "failed to update entry: "},
		{"missing ID", &types.Entry{Hint: "x"}, &types.EntryMask{Hint: true}, codes.InvalidArgument, "failed to update entry: missing entry ID"},
		{"invalid masked parent", badParent, &types.EntryMask{ParentId: true}, codes.InvalidArgument, "failed to convert entry: invalid parent ID"},
		{"full update without selectors", &types.Entry{Id: id, SpiffeId: pid("/w"), ParentId: pid("/spire/agent/a1")}, nil, codes.InvalidArgument, "failed to convert entry: selector list is empty"},
		{"would duplicate", dupOfOther, &types.EntryMask{SpiffeId: true}, codes.AlreadyExists, "failed to update entry: "},
	}
	for _, tc := range cases {
		resp, err := e.client.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{Entries: []*types.Entry{tc.in}, InputMask: tc.mask})
		if err != nil {
			t.Fatal(err)
		}
		r := resp.Results[0]
		if codes.Code(r.Status.Code) != tc.code || !strings.HasPrefix(r.Status.Message, tc.start) || r.Entry != nil {
			t.Errorf("%s: result = %v, want %v %q...", tc.name, r, tc.code, tc.start)
		}
	}
	got, err := e.client.GetEntry(ctx, &entryv1.GetEntryRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if got.RevisionNumber != 1 || got.SpiffeId.Path != "/w" || got.ParentId.Path != "/spire/agent/a1" {
		t.Errorf("failed updates changed the entry: %v", got)
	}

	// Full update (no input mask) replaces every field.
	full := base()
	full.Id = id
	full.Selectors = []*types.Selector{sel("unix", "uid:2"), sel("unix", "uid:2")}
	resp, err = e.client.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{Entries: []*types.Entry{full}})
	if err != nil {
		t.Fatal(err)
	}
	if r := resp.Results[0]; r.Status.Code != 0 || r.Entry.X509SvidTtl != 0 || r.Entry.Hint != "" || len(r.Entry.Selectors) != 1 || r.Entry.RevisionNumber != 2 {
		t.Errorf("full update = %v", r)
	}
}

func TestBatchDeleteEntry(t *testing.T) {
	e := newEnv(t, 0)
	two := base()
	two.SpiffeId = pid("/two")
	created := e.mustCreate(t, base(), two)
	resp, err := e.client.BatchDeleteEntry(ctxFor(t, ""), &entryv1.BatchDeleteEntryRequest{Ids: []string{created[0].Id, "", "nope", created[1].Id}})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		id   string
		code codes.Code
		msg  string
	}{{created[0].Id, codes.OK, "OK"}, {"", codes.InvalidArgument, "missing entry ID"}, {"nope", codes.NotFound, "entry not found"}, {created[1].Id, codes.OK, "OK"}}
	for i, w := range want {
		r := resp.Results[i]
		if r.Id != w.id || codes.Code(r.Status.Code) != w.code || r.Status.Message != w.msg {
			t.Errorf("result %d = %v, want %v", i, r, w)
		}
	}
	if n := e.count(t); n != 0 {
		t.Errorf("count = %d after delete", n)
	}
}

func TestGetEntry(t *testing.T) {
	e := newEnv(t, 0)
	ctx := ctxFor(t, "")
	id := e.mustCreate(t, base())[0].Id
	if _, err := e.client.GetEntry(ctx, &entryv1.GetEntryRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("missing ID: %v", err)
	}
	if _, err := e.client.GetEntry(ctx, &entryv1.GetEntryRequest{Id: "nope"}); status.Code(err) != codes.NotFound || status.Convert(err).Message() != "entry not found" {
		t.Errorf("not found: %v", err)
	}
	got, err := e.client.GetEntry(ctx, &entryv1.GetEntryRequest{Id: id, OutputMask: &types.EntryMask{ParentId: true}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Id != id || got.ParentId.GetPath() != "/spire/agent/a1" || got.SpiffeId != nil || got.Selectors != nil || got.CreatedAt != 0 {
		t.Errorf("masked entry = %v", got)
	}
}

func mk(path, parent string, fed []string, hint string, down bool, sels ...*types.Selector) *types.Entry {
	return &types.Entry{SpiffeId: pid(path), ParentId: pid(parent), Selectors: sels, FederatesWith: fed, Hint: hint, Downstream: down}
}

func TestListAndCountEntries(t *testing.T) {
	e := newEnv(t, 0)
	e.addBundles(t, "a.org", "b.org")
	ctx := ctxFor(t, "")
	uid1, gid1 := sel("unix", "uid:1"), sel("unix", "gid:1")
	byPath := map[string]string{}
	for _, c := range e.mustCreate(t,
		mk("/w/1", "/spire/agent/a1", []string{"a.org"}, "h1", false, uid1),
		mk("/w/2", "/spire/agent/a1", []string{"a.org", "b.org"}, "", true, uid1, gid1),
		mk("/w/3", "/spire/agent/a2", nil, "", false, sel("unix", "uid:2")),
		mk("/w/4", "/spire/agent/a2", nil, "h1", false, gid1),
		mk("/w/5", "/spire/agent/a2", nil, "", false, sel("k8s", "ns:x")),
	) {
		byPath[c.Id] = c.SpiffeId.Path
	}
	match := func(sels []*types.Selector, m types.SelectorMatch_MatchBehavior) *types.SelectorMatch {
		return &types.SelectorMatch{Selectors: sels, Match: m}
	}
	fmatch := func(tds []string, m types.FederatesWithMatch_MatchBehavior) *types.FederatesWithMatch {
		return &types.FederatesWithMatch{TrustDomains: tds, Match: m}
	}
	cases := []struct {
		name string
		f    *entryv1.ListEntriesRequest_Filter
		want []string
	}{
		{"none", nil, []string{"/w/1", "/w/2", "/w/3", "/w/4", "/w/5"}},
		{"by parent", &entryv1.ListEntriesRequest_Filter{ByParentId: pid("/spire/agent/a1")}, []string{"/w/1", "/w/2"}},
		{"by SPIFFE ID", &entryv1.ListEntriesRequest_Filter{BySpiffeId: pid("/w/3")}, []string{"/w/3"}},
		{"selectors exact", &entryv1.ListEntriesRequest_Filter{BySelectors: match([]*types.Selector{uid1}, types.SelectorMatch_MATCH_EXACT)}, []string{"/w/1"}},
		{"selectors subset", &entryv1.ListEntriesRequest_Filter{BySelectors: match([]*types.Selector{uid1, gid1}, types.SelectorMatch_MATCH_SUBSET)}, []string{"/w/1", "/w/2", "/w/4"}},
		{"selectors superset", &entryv1.ListEntriesRequest_Filter{BySelectors: match([]*types.Selector{uid1}, types.SelectorMatch_MATCH_SUPERSET)}, []string{"/w/1", "/w/2"}},
		{"selectors any", &entryv1.ListEntriesRequest_Filter{BySelectors: match([]*types.Selector{uid1, gid1}, types.SelectorMatch_MATCH_ANY)}, []string{"/w/1", "/w/2", "/w/4"}},
		{"federates any", &entryv1.ListEntriesRequest_Filter{ByFederatesWith: fmatch([]string{"a.org"}, types.FederatesWithMatch_MATCH_ANY)}, []string{"/w/1", "/w/2"}},
		{"federates exact", &entryv1.ListEntriesRequest_Filter{ByFederatesWith: fmatch([]string{"spiffe://a.org"}, types.FederatesWithMatch_MATCH_EXACT)}, []string{"/w/1"}},
		{"federates superset", &entryv1.ListEntriesRequest_Filter{ByFederatesWith: fmatch([]string{"b.org"}, types.FederatesWithMatch_MATCH_SUPERSET)}, []string{"/w/2"}},
		{"federates subset", &entryv1.ListEntriesRequest_Filter{ByFederatesWith: fmatch([]string{"a.org"}, types.FederatesWithMatch_MATCH_SUBSET)}, []string{"/w/1"}},
		{"hint", &entryv1.ListEntriesRequest_Filter{ByHint: wrapperspb.String("h1")}, []string{"/w/1", "/w/4"}},
		{"downstream", &entryv1.ListEntriesRequest_Filter{ByDownstream: wrapperspb.Bool(true)}, []string{"/w/2"}},
		// As in SPIRE, by_downstream false selects nothing out: spire-server's
		// "entry show" and "entry count" send it whenever -downstream is not
		// given.
		{"downstream false", &entryv1.ListEntriesRequest_Filter{ByDownstream: wrapperspb.Bool(false)}, []string{"/w/1", "/w/2", "/w/3", "/w/4", "/w/5"}},
		{"parent and downstream false", &entryv1.ListEntriesRequest_Filter{ByParentId: pid("/spire/agent/a1"), ByDownstream: wrapperspb.Bool(false)}, []string{"/w/1", "/w/2"}},
		{"parent and hint", &entryv1.ListEntriesRequest_Filter{ByParentId: pid("/spire/agent/a2"), ByHint: wrapperspb.String("h1")}, []string{"/w/4"}},
	}
	for _, tc := range cases {
		resp, err := e.client.ListEntries(ctx, &entryv1.ListEntriesRequest{Filter: tc.f})
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var got []string
		for _, en := range resp.Entries {
			got = append(got, en.SpiffeId.Path)
		}
		slices.Sort(got)
		if !slices.Equal(got, tc.want) || resp.NextPageToken != "" {
			t.Errorf("%s: got %v (token %q), want %v", tc.name, got, resp.NextPageToken, tc.want)
		}
		var cf *entryv1.CountEntriesRequest_Filter
		if f := tc.f; f != nil {
			cf = &entryv1.CountEntriesRequest_Filter{BySpiffeId: f.BySpiffeId, ByParentId: f.ByParentId, BySelectors: f.BySelectors,
				ByFederatesWith: f.ByFederatesWith, ByHint: f.ByHint, ByDownstream: f.ByDownstream}
		}
		cnt, err := e.client.CountEntries(ctx, &entryv1.CountEntriesRequest{Filter: cf})
		if err != nil || int(cnt.GetCount()) != len(tc.want) {
			t.Errorf("%s: count = %v, %v; want %d", tc.name, cnt.GetCount(), err, len(tc.want))
		}
	}

	bad := []struct {
		f   *entryv1.ListEntriesRequest_Filter
		msg string
	}{
		{&entryv1.ListEntriesRequest_Filter{ByParentId: &types.SPIFFEID{TrustDomain: "other.org", Path: "/x"}}, "malformed parent ID filter: "},
		{&entryv1.ListEntriesRequest_Filter{BySpiffeId: pid("/a//b")}, "malformed SPIFFE ID filter: "},
		{&entryv1.ListEntriesRequest_Filter{BySelectors: &types.SelectorMatch{}}, "malformed selectors filter: empty selector set"},
		{&entryv1.ListEntriesRequest_Filter{BySelectors: match([]*types.Selector{sel("", "x")}, 0)}, "malformed selectors filter: "},
		{&entryv1.ListEntriesRequest_Filter{ByFederatesWith: &types.FederatesWithMatch{}}, "malformed federates with filter: empty trust domain set"},
		{&entryv1.ListEntriesRequest_Filter{ByFederatesWith: fmatch([]string{"BAD"}, 0)}, "malformed federates with filter: "},
	}
	for _, b := range bad {
		_, err := e.client.ListEntries(ctx, &entryv1.ListEntriesRequest{Filter: b.f})
		if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), b.msg) {
			t.Errorf("filter %v: err = %v, want InvalidArgument %q", b.f, err, b.msg)
		}
	}

	// Pagination: pages of 2, every entry exactly once, then no token.
	var seen []string
	var sizes []int
	token := ""
	for range 10 {
		resp, err := e.client.ListEntries(ctx, &entryv1.ListEntriesRequest{PageSize: 2, PageToken: token, OutputMask: &types.EntryMask{}})
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(resp.Entries))
		for _, en := range resp.Entries {
			if en.SpiffeId != nil {
				t.Errorf("empty output mask returned a SPIFFE ID")
			}
			seen = append(seen, byPath[en.Id])
		}
		token = resp.NextPageToken
		if token == "" {
			break
		}
	}
	slices.Sort(seen)
	if !slices.Equal(seen, []string{"/w/1", "/w/2", "/w/3", "/w/4", "/w/5"}) || !slices.Equal(sizes, []int{2, 2, 1}) {
		t.Errorf("pages: sizes %v, entries %v", sizes, seen)
	}
	if _, err := e.client.ListEntries(ctx, &entryv1.ListEntriesRequest{PageSize: 2, PageToken: "garbage!"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad page token: %v", err)
	}
}

// authWorld creates nodes and entries: see the expectations in
// TestAuthorizedEntries.
func authWorld(t testing.TB, e *env) map[string]string {
	t.Helper()
	ctx := context.Background()
	for id, ss := range map[string][]string{agent1: {"cluster:c1", "node:n1"}, agent2: {"cluster:c1"}} {
		var sels []selector.Selector
		for _, s := range ss {
			sl, err := selector.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			sels = append(sels, sl)
		}
		if _, err := e.st.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: id, AttestationType: "join_token", CertSerial: "1", Selectors: sels}); err != nil {
			t.Fatal(err)
		}
	}
	u := func(v string) *types.Selector { return sel("unix", v) }
	expired := mk("/w/expired", "/spire/agent/a1", nil, "", false, u("uid:7"))
	expired.ExpiresAt = time.Now().Add(-time.Hour).Unix()
	created := e.mustCreate(t,
		mk("/w/direct", "/spire/agent/a1", nil, "", false, u("uid:1")),
		mk("/w/child", "/w/direct", nil, "", false, u("uid:2")),
		mk("/w/grandchild", "/w/child", nil, "", false, u("uid:3")),
		mk("/alias/n1", "/spire/server", nil, "", false, sel("cluster", "c1"), sel("node", "n1")),
		mk("/w/via-alias", "/alias/n1", nil, "", false, u("uid:4")),
		mk("/alias/c1", "/spire/server", nil, "", false, sel("cluster", "c1")),
		mk("/w/via-cluster", "/alias/c1", nil, "", false, u("uid:5")),
		mk("/w/agent2", "/spire/agent/a2", nil, "", false, u("uid:6")),
		expired,
	)
	names := map[string]string{}
	for _, c := range created {
		names[c.Id] = c.SpiffeId.Path
	}
	if err := e.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	return names
}

func paths(names map[string]string, es []*types.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, names[e.Id])
	}
	slices.Sort(out)
	return out
}

func TestGetAuthorizedEntries(t *testing.T) {
	e := newEnv(t, 0)
	names := authWorld(t, e)
	for _, tc := range []struct {
		agent string
		want  []string
	}{
		{agent1, []string{"/w/child", "/w/direct", "/w/grandchild", "/w/via-alias", "/w/via-cluster"}},
		{agent2, []string{"/w/agent2", "/w/via-cluster"}},
		{"spiffe://example.org/spire/agent/unknown", nil},
	} {
		resp, err := e.client.GetAuthorizedEntries(ctxFor(t, tc.agent), &entryv1.GetAuthorizedEntriesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if got := paths(names, resp.Entries); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.agent, got, tc.want)
		}
	}
	resp, err := e.client.GetAuthorizedEntries(ctxFor(t, agent2), &entryv1.GetAuthorizedEntriesRequest{OutputMask: &types.EntryMask{RevisionNumber: true}})
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range resp.Entries {
		if en.SpiffeId != nil || en.Selectors != nil {
			t.Errorf("mask not applied: %v", en)
		}
	}
	// A caller that is not an agent (here: the local admin) is refused.
	if _, err := e.client.GetAuthorizedEntries(ctxFor(t, ""), &entryv1.GetAuthorizedEntriesRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("non-agent: %v", err)
	}
	stream, err := e.client.SyncAuthorizedEntries(ctxFor(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&entryv1.SyncAuthorizedEntriesRequest{})
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("non-agent sync: %v", err)
	}
}

func TestSyncFull(t *testing.T) {
	e := newEnv(t, 0)
	names := authWorld(t, e)
	stream, err := e.client.SyncAuthorizedEntries(ctxFor(t, agent1))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.More || len(resp.EntryRevisions) != 0 || len(paths(names, resp.Entries)) != 5 {
		t.Errorf("full response = more %v, %d revisions, entries %v", resp.More, len(resp.EntryRevisions), paths(names, resp.Entries))
	}
	if md, _ := stream.Header(); len(md.Get(entry.SyncModeHeader)) != 0 {
		t.Errorf("SPIRE mode stream carries the watch header: %v", md)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("SPIRE mode: stream should end after the full list, got %v", err)
	}

	for _, bad := range []*entryv1.SyncAuthorizedEntriesRequest{
		{Ids: []string{"x"}},
		{OutputMask: &types.EntryMask{SpiffeId: true}},
	} {
		stream, err := e.client.SyncAuthorizedEntries(ctxFor(t, agent1))
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(bad)
		if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("first request %v: %v", bad, err)
		}
	}
}

func recvRevisions(t *testing.T, stream entryv1.Entry_SyncAuthorizedEntriesClient) (ids []string, sizes []int) {
	t.Helper()
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("recv revisions: %v", err)
		}
		if len(resp.Entries) != 0 {
			t.Fatalf("revisions page carries entries")
		}
		sizes = append(sizes, len(resp.EntryRevisions))
		for _, r := range resp.EntryRevisions {
			ids = append(ids, r.Id)
		}
		if !resp.More {
			return ids, sizes
		}
	}
}

func recvEntries(t *testing.T, stream entryv1.Entry_SyncAuthorizedEntriesClient) (ids []string, sizes []int) {
	t.Helper()
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("recv entries: %v", err)
		}
		if len(resp.EntryRevisions) != 0 {
			t.Fatalf("entries page carries revisions")
		}
		sizes = append(sizes, len(resp.Entries))
		for _, en := range resp.Entries {
			ids = append(ids, en.Id)
		}
		if !resp.More {
			return ids, sizes
		}
	}
}

func TestSyncRevisions(t *testing.T) {
	e := newEnv(t, 2)
	authWorld(t, e)
	stream, err := e.client.SyncAuthorizedEntries(ctxFor(t, agent1))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{OutputMask: &types.EntryMask{RevisionNumber: true, SpiffeId: true}}); err != nil {
		t.Fatal(err)
	}
	revs, sizes := recvRevisions(t, stream)
	if !slices.Equal(sizes, []int{2, 2, 1}) || len(revs) != 5 || !slices.IsSorted(revs) {
		t.Fatalf("revision pages %v, ids %v", sizes, revs)
	}
	// Ask for three (plus an unknown ID, skipped), in any order.
	want := []string{revs[4], revs[0], revs[2]}
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{Ids: append(slices.Clone(want), "unknown")}); err != nil {
		t.Fatal(err)
	}
	got, sizes := recvEntries(t, stream)
	slices.Sort(want)
	if !slices.Equal(got, want) || !slices.Equal(sizes, []int{2, 1}) {
		t.Errorf("requested entries %v in pages %v, want %v", got, sizes, want)
	}
	// A request for nothing gets one empty page.
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{}); err != nil {
		t.Fatal(err)
	}
	if got, sizes := recvEntries(t, stream); len(got) != 0 || !slices.Equal(sizes, []int{0}) {
		t.Errorf("empty request answered with %v %v", got, sizes)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("after CloseSend: %v", err)
	}
}

func watchCtx(t testing.TB, agent string) context.Context {
	return ctxFor(t, agent, entry.SyncModeHeader, entry.SyncModeWatch)
}

// fullRound reads one full round and returns the entry paths.
func fullRound(t testing.TB, stream entryv1.Entry_SyncAuthorizedEntriesClient, names map[string]string) []string {
	t.Helper()
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("recv round: %v", err)
	}
	if resp.More || len(resp.EntryRevisions) != 0 {
		t.Fatalf("expected a full round, got more=%v revisions=%d", resp.More, len(resp.EntryRevisions))
	}
	return paths(names, resp.Entries)
}

// openWatch opens a watch-mode sync stream as agent and sends its first
// request.
func openWatch(t *testing.T, e *env, agent string) entryv1.Entry_SyncAuthorizedEntriesClient {
	t.Helper()
	stream, err := e.client.SyncAuthorizedEntries(watchCtx(t, agent))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{}); err != nil {
		t.Fatal(err)
	}
	return stream
}

func TestSyncWatchFull(t *testing.T) {
	e := newEnv(t, 0)
	names := authWorld(t, e)
	stream := openWatch(t, e, agent2)
	if got, want := fullRound(t, stream, names), []string{"/w/agent2", "/w/via-cluster"}; !slices.Equal(got, want) {
		t.Fatalf("round 1 = %v, want %v", got, want)
	}
	if md, err := stream.Header(); err != nil || !slices.Equal(md.Get(entry.SyncModeHeader), []string{entry.SyncModeWatch}) {
		t.Errorf("watch mode not confirmed in the response header: %v, %v", md, err)
	}

	// An admin creates an entry for agent2: a new round carries it.
	created := e.mustCreate(t, mk("/w/new", "/spire/agent/a2", nil, "", false, sel("unix", "uid:9")))
	names[created[0].Id] = "/w/new"
	for {
		got := fullRound(t, stream, names)
		if slices.Contains(got, "/w/new") {
			break
		}
	}
	// A bundle change produces a round too, with the same entries.
	e.cache.BundleChanged()
	if got, want := fullRound(t, stream, names), []string{"/w/agent2", "/w/new", "/w/via-cluster"}; !slices.Equal(got, want) {
		t.Errorf("bundle round = %v, want %v", got, want)
	}
	// Deleting reaches the agent the same way.
	if _, err := e.client.BatchDeleteEntry(ctxFor(t, ""), &entryv1.BatchDeleteEntryRequest{Ids: []string{created[0].Id}}); err != nil {
		t.Fatal(err)
	}
	for {
		if got := fullRound(t, stream, names); !slices.Contains(got, "/w/new") {
			break
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("after CloseSend: %v", err)
	}
}

// Ids asked for between rounds (after a full round, which keeps no list
// on the stream) are answered from the agent's authorized entries as they
// are then: an entry created since the round is found, one never
// authorized is not.
func TestSyncWatchIdsBetweenRounds(t *testing.T) {
	e := newEnv(t, 0)
	names := authWorld(t, e)
	stream := openWatch(t, e, agent2)
	if got := fullRound(t, stream, names); len(got) != 2 {
		t.Fatalf("round 1 = %v", got)
	}
	created := e.mustCreate(t, mk("/w/new", "/spire/agent/a2", nil, "", false, sel("unix", "uid:9")))
	// The creation's own round, full (the page limit is off here).
	if got := fullRound(t, stream, names); len(got) != 3 {
		t.Fatalf("round 2 = %v", got)
	}
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{Ids: []string{created[0].Id, "unknown"}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := recvEntries(t, stream); !slices.Equal(got, []string{created[0].Id}) {
		t.Fatalf("ids between rounds: %v, want [%s]", got, created[0].Id)
	}
}

func TestSyncWatchRevisions(t *testing.T) {
	e := newEnv(t, 2)
	names := authWorld(t, e)
	stream := openWatch(t, e, agent2)
	// 2 entries fit in one page: a full round.
	if got := fullRound(t, stream, names); len(got) != 2 {
		t.Fatalf("round 1 = %v", got)
	}
	// A third entry makes the next round a revisions round.
	created := e.mustCreate(t, mk("/w/new", "/spire/agent/a2", nil, "", false, sel("unix", "uid:9")))
	newID := created[0].Id
	revs, sizes := recvRevisions(t, stream)
	if !slices.Contains(revs, newID) || !slices.Equal(sizes, []int{2, 1}) {
		t.Fatalf("revisions round: ids %v pages %v", revs, sizes)
	}
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{Ids: []string{newID}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := recvEntries(t, stream); !slices.Equal(got, []string{newID}) {
		t.Fatalf("requested %v", got)
	}
	// A change made before the round ends is delivered after it.
	created2 := e.mustCreate(t, mk("/w/new2", "/spire/agent/a2", nil, "", false, sel("unix", "uid:10")))
	if err := e.cache.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	// End the round: an empty request, answered by an empty page.
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{}); err != nil {
		t.Fatal(err)
	}
	if got, sizes := recvEntries(t, stream); len(got) != 0 || !slices.Equal(sizes, []int{0}) {
		t.Fatalf("end-of-round answer: %v %v", got, sizes)
	}
	revs, _ = recvRevisions(t, stream)
	if !slices.Contains(revs, created2[0].Id) || len(revs) != 4 {
		t.Fatalf("next round revisions %v", revs)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Errorf("after CloseSend: %v", err)
			}
			break
		}
	}
}

// BenchmarkCreateToWatchRound measures the push path: BatchCreateEntry
// over gRPC until a watch-mode stream delivers a round with the new entry
// (the server half of "a new entry reaches a workload in <= 100 ms").
func BenchmarkCreateToWatchRound(b *testing.B) {
	e := newEnv(b, 0)
	names := authWorld(b, e)
	stream, err := e.client.SyncAuthorizedEntries(watchCtx(b, agent2))
	if err != nil {
		b.Fatal(err)
	}
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{}); err != nil {
		b.Fatal(err)
	}
	fullRound(b, stream, names)
	i := 0
	for b.Loop() {
		i++
		path := "/w/bench/" + strconv.Itoa(i)
		created := e.mustCreate(b, mk(path, "/spire/agent/a2", nil, "", false, sel("unix", "uid:"+strconv.Itoa(i))))
		names[created[0].Id] = path
		for !slices.Contains(fullRound(b, stream, names), path) {
		}
	}
}

// TestEntryHintNotText: a hint with a NUL byte (valid UTF-8, so gRPC lets
// it through) is the entry's InvalidArgument, on create and update, and
// fails no other entry of the batch (PostgreSQL's text cannot hold it).
func TestEntryHintNotText(t *testing.T) {
	e := newEnv(t, 0)
	ctx := ctxFor(t, "")
	bad := base()
	bad.Hint = "a\x00b"
	good := base()
	good.SpiffeId.Path = "/other"
	resp, err := e.client.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{bad, good}})
	if err != nil {
		t.Fatal(err)
	}
	if c := codes.Code(resp.Results[0].Status.Code); c != codes.InvalidArgument {
		t.Fatalf("create with a NUL in the hint: %v (%s), want InvalidArgument", c, resp.Results[0].Status.Message)
	}
	if c := codes.Code(resp.Results[1].Status.Code); c != codes.OK {
		t.Fatalf("the valid entry of the batch: %v (%s)", c, resp.Results[1].Status.Message)
	}
	upd := resp.Results[1].Entry
	upd.Hint = "\x00"
	uresp, err := e.client.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{Entries: []*types.Entry{upd}, InputMask: &types.EntryMask{Hint: true}})
	if err != nil {
		t.Fatal(err)
	}
	if c := codes.Code(uresp.Results[0].Status.Code); c != codes.InvalidArgument {
		t.Fatalf("update to a NUL hint: %v (%s), want InvalidArgument", c, uresp.Results[0].Status.Message)
	}
}

// bigEntries creates n entries under agent whose DNS names make each about
// size bytes on the wire, and returns their IDs.
func bigEntries(t *testing.T, e *env, agent string, n, size int) []string {
	t.Helper()
	label := strings.Repeat("a", 60)
	var ids []string
	for start := 0; start < n; start += 100 {
		var batch []*types.Entry
		for i := start; i < min(start+100, n); i++ {
			en := &types.Entry{
				SpiffeId:  pid("/big/" + strconv.Itoa(i)),
				ParentId:  pid(strings.TrimPrefix(agent, "spiffe://example.org")),
				Selectors: []*types.Selector{sel("unix", "uid:"+strconv.Itoa(i))},
			}
			for j := 0; j*200 < size; j++ {
				en.DnsNames = append(en.DnsNames, label+"."+label+"."+label+"."+strconv.Itoa(j)+".example.org")
			}
			batch = append(batch, en)
		}
		for _, en := range e.mustCreate(t, batch...) {
			ids = append(ids, en.Id)
		}
	}
	slices.Sort(ids)
	return ids
}

// spireSync runs one sync round the way SPIRE's agent does (a complete list
// in one message, or revisions pages, then id requests of the first page's
// size answered in pages until more=false) and returns the entry IDs.
// Every response must decode within the client's default 4 MiB limit.
func spireSync(t *testing.T, stream entryv1.Entry_SyncAuthorizedEntriesClient) []string {
	t.Helper()
	if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("first response: %v", err)
	}
	var got []string
	if len(resp.EntryRevisions) == 0 {
		for _, en := range resp.Entries {
			got = append(got, en.Id)
		}
		return got
	}
	pageSize := len(resp.EntryRevisions)
	var need []string
	for {
		for _, r := range resp.EntryRevisions {
			need = append(need, r.Id)
		}
		if !resp.More {
			break
		}
		if resp, err = stream.Recv(); err != nil {
			t.Fatalf("revisions page: %v", err)
		}
	}
	for len(need) > 0 {
		n := min(len(need), pageSize)
		if err := stream.Send(&entryv1.SyncAuthorizedEntriesRequest{Ids: need[:n]}); err != nil {
			t.Fatal(err)
		}
		need = need[n:]
		ids, _ := recvEntries(t, stream)
		got = append(got, ids...)
	}
	return got
}

// An agent's entries may encode to far more than gRPC's 4 MiB message
// limit: sync pages them by bytes too, both as one complete list (300
// entries of 15 kB: 4.5 MB, under the 500-entry page) and as the answers to
// id requests (700 entries of 10 kB: 500 requested at once, 5 MB), in
// SPIRE's mode and in watch mode. Before the byte bound, the client failed
// with ResourceExhausted ("received message larger than max").
func TestSyncPagesLargeEntriesByBytes(t *testing.T) {
	e := newEnv(t, 0)
	want1 := bigEntries(t, e, agent1, 300, 15_000)
	want2 := bigEntries(t, e, agent2, 700, 10_000)
	for _, agent := range []struct {
		id   string
		want []string
	}{{agent1, want1}, {agent2, want2}} {
		t.Run(strings.TrimPrefix(agent.id, "spiffe://example.org/spire/agent/")+"/spire", func(t *testing.T) {
			stream, err := e.client.SyncAuthorizedEntries(ctxFor(t, agent.id))
			if err != nil {
				t.Fatal(err)
			}
			got := spireSync(t, stream)
			slices.Sort(got)
			if !slices.Equal(got, agent.want) {
				t.Fatalf("synced %d entries, want %d", len(got), len(agent.want))
			}
		})
		t.Run(strings.TrimPrefix(agent.id, "spiffe://example.org/spire/agent/")+"/watch", func(t *testing.T) {
			stream, err := e.client.SyncAuthorizedEntries(watchCtx(t, agent.id))
			if err != nil {
				t.Fatal(err)
			}
			got := spireSync(t, stream)
			slices.Sort(got)
			if !slices.Equal(got, agent.want) {
				t.Fatalf("synced %d entries, want %d", len(got), len(agent.want))
			}
		})
	}
}
