package endpoints_test

// Edges of the admin and agent APIs (issue 7, item 10), through real gRPC
// over the real sockets: federates_with needs a federated bundle, bad page
// tokens are the client's error, bundle sequence numbers and trust domain
// names are bounded, federated bundles need an X.509 authority, and no
// status message or log line repeats more than maxEcho bytes of
// what a client sent (1 MiB inputs below).

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"log/slog"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

const mib = 1 << 20

// maxEcho is the most bytes of one client value a message may repeat (the
// project's rule: ~128; clip.Quote keeps 64 of each).
const maxEcho = 128

// logBuffer collects what the server logs.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// loggedHarness is a harness whose components log at every level (debug
// included) into the returned buffer.
func loggedHarness(t *testing.T) (*harness, *logBuffer) {
	t.Helper()
	buf := &logBuffer{}
	log := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return newHarness(t, harnessOpts{log: log}), buf
}

// longestRun is the length of the longest run of c in s.
func longestRun(s string, c byte) int {
	longest, n := 0, 0
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			n++
			longest = max(longest, n)
		} else {
			n = 0
		}
	}
	return longest
}

// requireNoEcho fails when text repeats more than maxEcho bytes
// of an input made of the byte fill.
func requireNoEcho(t *testing.T, what, text string, fill byte) {
	t.Helper()
	if n := longestRun(text, fill); n > maxEcho {
		// Show the line that does.
		run := strings.Repeat(string(fill), maxEcho+1)
		for _, line := range strings.Split(text, "\n") {
			if strings.Contains(line, run) {
				text = line
				break
			}
		}
		t.Errorf("%s repeats %d bytes of the client's input (max %d): %.300s", what, n, maxEcho, text)
	}
}

// storeState is what the tests compare to prove a refused call changed
// nothing: every entry, bundle and node.
type storeState struct {
	entries []*datastore.Entry
	bundles []*datastore.Bundle
	nodes   []*datastore.AttestedNode
}

func (h *harness) state() storeState {
	h.t.Helper()
	ctx := context.Background()
	es, _, err := h.ds.ListEntries(ctx, datastore.EntryFilter{}, datastore.Page{})
	if err != nil {
		h.t.Fatal(err)
	}
	bs, _, err := h.ds.ListBundles(ctx, datastore.Page{})
	if err != nil {
		h.t.Fatal(err)
	}
	ns, _, err := h.ds.ListNodes(ctx, datastore.NodeFilter{}, datastore.Page{})
	if err != nil {
		h.t.Fatal(err)
	}
	return storeState{entries: es, bundles: bs, nodes: ns}
}

func (h *harness) requireUnchanged(before storeState, what string) {
	h.t.Helper()
	if after := h.state(); !reflect.DeepEqual(before, after) {
		h.t.Errorf("%s changed the store:\nbefore %+v\nafter  %+v", what, before, after)
	}
}

func apiID(path string) *types.SPIFFEID { return &types.SPIFFEID{TrustDomain: td.Name(), Path: path} }

func workloadEntry(path string, fed ...string) *types.Entry {
	return &types.Entry{
		SpiffeId: apiID(path), ParentId: apiID("/spire/agent/x"),
		Selectors: []*types.Selector{{Type: "unix", Value: "uid:1"}}, FederatesWith: fed,
	}
}

func x509Authority(t *testing.T) []*types.X509Certificate {
	t.Helper()
	return []*types.X509Certificate{{Asn1: newCert(t)}}
}

// newCert is a self-signed CA certificate (DER).
func newCert(t *testing.T) []byte {
	t.Helper()
	return testca.SelfSignedDER(t, testca.KeyUsage(x509.KeyUsageCertSign))
}

func TestFederatesWithNeedsAFederatedBundle(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	entries := entryv1.NewEntryClient(h.localConn())
	bundles := bundlev1.NewBundleClient(h.localConn())

	// Create: the entry naming a trust domain without a bundle is refused,
	// the other entry of the batch is created.
	before := h.state()
	resp, err := entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{
		workloadEntry("/fed", "spiffe://nobundle.org"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	st := resp.Results[0].Status
	if codes.Code(st.Code) != codes.InvalidArgument || st.Message != `failed to create entry: unable to find federated bundle "nobundle.org"` {
		t.Fatalf("create federating with a trust domain without bundle: %v %q, want InvalidArgument", codes.Code(st.Code), st.Message)
	}
	h.requireUnchanged(before, "refused BatchCreateEntry")

	resp, err = entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{
		workloadEntry("/plain"), workloadEntry("/fed2", "nobundle.org"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if c0, c1 := codes.Code(resp.Results[0].Status.Code), codes.Code(resp.Results[1].Status.Code); c0 != codes.OK || c1 != codes.InvalidArgument {
		t.Fatalf("mixed batch: %v, %v; want OK, InvalidArgument", c0, c1)
	}
	plain := resp.Results[0].Entry

	// Update: adding such a trust domain is refused and changes nothing.
	before = h.state()
	plain.FederatesWith = []string{"nobundle.org"}
	up, err := entries.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{Entries: []*types.Entry{plain}, InputMask: &types.EntryMask{FederatesWith: true}})
	if err != nil {
		t.Fatal(err)
	}
	if st := up.Results[0].Status; codes.Code(st.Code) != codes.InvalidArgument || !strings.Contains(st.Message, `unable to find federated bundle "nobundle.org"`) {
		t.Fatalf("update: %v %q, want InvalidArgument", codes.Code(st.Code), st.Message)
	}
	h.requireUnchanged(before, "refused BatchUpdateEntry")

	// Once the bundle exists, both work.
	set, err := bundles.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: []*types.Bundle{{TrustDomain: "nobundle.org", X509Authorities: x509Authority(t)}}})
	if err != nil || set.Results[0].Status.Code != 0 {
		t.Fatalf("set bundle: %v %v", err, set)
	}
	up, err = entries.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{Entries: []*types.Entry{plain}, InputMask: &types.EntryMask{FederatesWith: true}})
	if err != nil || up.Results[0].Status.Code != 0 {
		t.Fatalf("update with the bundle present: %v %v", err, up)
	}
	resp, err = entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{workloadEntry("/fed", "nobundle.org")}})
	if err != nil || resp.Results[0].Status.Code != 0 {
		t.Fatalf("create with the bundle present: %v %v", err, resp)
	}
}

func TestBadPageTokenIsInvalidArgument(t *testing.T) {
	h, logs := loggedHarness(t)
	ctx := context.Background()
	conn := h.localConn()
	// '~' is outside base64url: no store can have issued this token.
	token := strings.Repeat("~", mib)
	for name, call := range map[string]func() error{
		"ListAgents": func() error {
			_, err := agentv1.NewAgentClient(conn).ListAgents(ctx, &agentv1.ListAgentsRequest{PageSize: 1, PageToken: token})
			return err
		},
		"ListEntries": func() error {
			_, err := entryv1.NewEntryClient(conn).ListEntries(ctx, &entryv1.ListEntriesRequest{PageSize: 1, PageToken: token})
			return err
		},
		"ListFederatedBundles": func() error {
			_, err := bundlev1.NewBundleClient(conn).ListFederatedBundles(ctx, &bundlev1.ListFederatedBundlesRequest{PageSize: 1, PageToken: token})
			return err
		},
		// Valid base64url, but longer than any key the store pages by.
		"ListAgents, long base64 token": func() error {
			_, err := agentv1.NewAgentClient(conn).ListAgents(ctx, &agentv1.ListAgentsRequest{PageSize: 1, PageToken: strings.Repeat("QUFB", mib/4)})
			return err
		},
	} {
		err := call()
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument || st.Message() != "could not parse page token" {
			t.Errorf("%s with a bad page token: %v %.200q, want InvalidArgument \"could not parse page token\"", name, st.Code(), st.Message())
		}
	}
	out := logs.String()
	requireNoEcho(t, "log", out, '~')
	requireNoEcho(t, "log", out, 'Q')
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "level=WARN") {
			t.Errorf("a client's bad page token was logged above INFO: %.300s", line)
		}
	}
}

func TestFederatedBundleSequenceNumberRange(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	c := bundlev1.NewBundleClient(h.localConn())
	bundle := func(seq uint64) []*types.Bundle {
		return []*types.Bundle{{TrustDomain: "fed.org", X509Authorities: x509Authority(t), SequenceNumber: seq}}
	}
	code := func(st *types.Status) codes.Code { return codes.Code(st.Code) }

	before := h.state()
	cr, err := c.BatchCreateFederatedBundle(ctx, &bundlev1.BatchCreateFederatedBundleRequest{Bundle: bundle(1 << 63)})
	if err != nil || code(cr.Results[0].Status) != codes.InvalidArgument {
		t.Fatalf("create with sequence number 2^63: %v %v, want InvalidArgument", err, cr)
	}
	sr, err := c.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: bundle(^uint64(0))})
	if err != nil || code(sr.Results[0].Status) != codes.InvalidArgument {
		t.Fatalf("set with sequence number 2^64-1: %v %v, want InvalidArgument", err, sr)
	}
	h.requireUnchanged(before, "refused create/set")

	// The largest number the store holds is accepted; a write that would
	// have to go past it (stored+1) is the client's error too.
	sr, err = c.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: bundle(1<<63 - 1)})
	if err != nil || code(sr.Results[0].Status) != codes.OK || sr.Results[0].Bundle.SequenceNumber != 1<<63-1 {
		t.Fatalf("set with sequence number 2^63-1: %v %v", err, sr)
	}
	before = h.state()
	ur, err := c.BatchUpdateFederatedBundle(ctx, &bundlev1.BatchUpdateFederatedBundleRequest{Bundle: bundle(5)})
	if err != nil || code(ur.Results[0].Status) != codes.InvalidArgument {
		t.Fatalf("update past 2^63-1: %v %v, want InvalidArgument", err, ur)
	}
	ur, err = c.BatchUpdateFederatedBundle(ctx, &bundlev1.BatchUpdateFederatedBundleRequest{Bundle: bundle(1 << 63)})
	if err != nil || code(ur.Results[0].Status) != codes.InvalidArgument {
		t.Fatalf("update with sequence number 2^63: %v %v, want InvalidArgument", err, ur)
	}
	h.requireUnchanged(before, "refused update")
}

func TestFederatedBundleNeedsAnX509Authority(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	c := bundlev1.NewBundleClient(h.localConn())
	key := newKey(t)
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	jwtOnly := []*types.Bundle{{TrustDomain: "fed.org", JwtAuthorities: []*types.JWTKey{{KeyId: "k", PublicKey: pub}}}}
	refused := func(what string, st *types.Status, err error) {
		t.Helper()
		if err != nil || codes.Code(st.Code) != codes.InvalidArgument || !strings.Contains(st.Message, "at least one X.509 authority") {
			t.Errorf("%s: %v %v, want InvalidArgument", what, err, st)
		}
	}

	before := h.state()
	cr, err := c.BatchCreateFederatedBundle(ctx, &bundlev1.BatchCreateFederatedBundleRequest{Bundle: jwtOnly})
	refused("create without X.509 authorities", cr.GetResults()[0].GetStatus(), err)
	sr, err := c.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: jwtOnly})
	refused("set without X.509 authorities", sr.GetResults()[0].GetStatus(), err)
	h.requireUnchanged(before, "refused create/set")

	sr, err = c.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: []*types.Bundle{{TrustDomain: "fed.org", X509Authorities: x509Authority(t)}}})
	if err != nil || sr.Results[0].Status.Code != 0 {
		t.Fatalf("set: %v %v", err, sr)
	}
	before = h.state()
	ur, err := c.BatchUpdateFederatedBundle(ctx, &bundlev1.BatchUpdateFederatedBundleRequest{Bundle: jwtOnly, InputMask: &types.BundleMask{X509Authorities: true}})
	refused("update removing every X.509 authority", ur.GetResults()[0].GetStatus(), err)
	h.requireUnchanged(before, "refused update")
	// An update that keeps the stored authorities is fine.
	ur, err = c.BatchUpdateFederatedBundle(ctx, &bundlev1.BatchUpdateFederatedBundleRequest{Bundle: jwtOnly, InputMask: &types.BundleMask{JwtAuthorities: true}})
	if err != nil || ur.Results[0].Status.Code != 0 {
		t.Fatalf("update of the JWT authorities only: %v %v", err, ur)
	}
}

func TestTrustDomainNameOver255BytesIsRefused(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	conn := h.localConn()
	entries, bundles := entryv1.NewEntryClient(conn), bundlev1.NewBundleClient(conn)
	long := strings.Repeat("a", 252) + ".org" // 256 bytes, valid characters
	ok := strings.Repeat("a", 251) + ".org"   // 255 bytes
	const why = "the maximum is 255"

	// The 255-byte name is a valid trust domain: bundle and entry are accepted.
	set, err := bundles.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: []*types.Bundle{{TrustDomain: ok, X509Authorities: x509Authority(t)}}})
	if err != nil || set.Results[0].Status.Code != 0 {
		t.Fatalf("set bundle of a 255-byte trust domain: %v %v", err, set)
	}
	cr, err := entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{workloadEntry("/ok", ok)}})
	if err != nil || cr.Results[0].Status.Code != 0 {
		t.Fatalf("entry federating with a 255-byte trust domain: %v %v", err, cr)
	}

	before := h.state()
	item := func(what string, st *types.Status, err error) {
		t.Helper()
		if err != nil || codes.Code(st.GetCode()) != codes.InvalidArgument || !strings.Contains(st.GetMessage(), why) {
			t.Errorf("%s: %v %v, want InvalidArgument (%s)", what, err, st, why)
		}
	}
	call := func(what string, err error) {
		t.Helper()
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), why) {
			t.Errorf("%s: %v, want InvalidArgument (%s)", what, err, why)
		}
	}
	for _, name := range []string{long, "spiffe://" + long} {
		b := []*types.Bundle{{TrustDomain: name, X509Authorities: x509Authority(t)}}
		sr, err := bundles.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: b})
		item("BatchSetFederatedBundle "+name[:12], sr.GetResults()[0].GetStatus(), err)
		cr, err := bundles.BatchCreateFederatedBundle(ctx, &bundlev1.BatchCreateFederatedBundleRequest{Bundle: b})
		item("BatchCreateFederatedBundle", cr.GetResults()[0].GetStatus(), err)
		ur, err := bundles.BatchUpdateFederatedBundle(ctx, &bundlev1.BatchUpdateFederatedBundleRequest{Bundle: b})
		item("BatchUpdateFederatedBundle", ur.GetResults()[0].GetStatus(), err)
		dr, err := bundles.BatchDeleteFederatedBundle(ctx, &bundlev1.BatchDeleteFederatedBundleRequest{TrustDomains: []string{name}})
		item("BatchDeleteFederatedBundle", dr.GetResults()[0].GetStatus(), err)
		_, err = bundles.GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: name})
		call("GetFederatedBundle", err)
		er, err := entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{workloadEntry("/long", name)}})
		item("BatchCreateEntry federates_with", er.GetResults()[0].GetStatus(), err)
		_, err = entries.ListEntries(ctx, &entryv1.ListEntriesRequest{Filter: &entryv1.ListEntriesRequest_Filter{
			ByFederatesWith: &types.FederatesWithMatch{TrustDomains: []string{name}}}})
		call("ListEntries by_federates_with", err)
	}
	// SPIFFE IDs: the entry's own ID, the parent, and any ID given to find
	// or mint something.
	longID := &types.SPIFFEID{TrustDomain: long, Path: "/w"}
	e := workloadEntry("/x")
	e.SpiffeId = longID
	er, err := entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{e}})
	item("BatchCreateEntry spiffe_id", er.GetResults()[0].GetStatus(), err)
	e = workloadEntry("/x")
	e.ParentId = longID
	er, err = entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{e}})
	item("BatchCreateEntry parent_id", er.GetResults()[0].GetStatus(), err)
	_, err = agentv1.NewAgentClient(conn).GetAgent(ctx, &agentv1.GetAgentRequest{Id: &types.SPIFFEID{TrustDomain: long, Path: "/spire/agent/x"}})
	call("GetAgent", err)
	_, err = svidv1.NewSVIDClient(conn).MintJWTSVID(ctx, &svidv1.MintJWTSVIDRequest{Id: longID, Audience: []string{"a"}})
	call("MintJWTSVID", err)
	h.requireUnchanged(before, "refused calls")
}

// TestNoEchoOfClientInput sends 1 MiB values in every string field of every
// admin and agent API method that reads one, and checks that neither the
// status messages nor anything logged (at any level) repeats more than
// maxEcho bytes of them, and that nothing was written.
func TestNoEchoOfClientInput(t *testing.T) {
	h, logs := loggedHarness(t)
	ctx := context.Background()
	conn := h.localConn()
	entries, bundles := entryv1.NewEntryClient(conn), bundlev1.NewBundleClient(conn)
	agents, svids := agentv1.NewAgentClient(conn), svidv1.NewSVIDClient(conn)

	// An existing entry and bundle, for updates.
	cr, err := entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{workloadEntry("/existing")}})
	if err != nil || cr.Results[0].Status.Code != 0 {
		t.Fatalf("create: %v %v", err, cr)
	}
	existing := cr.Results[0].Entry
	if sr, err := bundles.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: []*types.Bundle{{TrustDomain: "fed.org", X509Authorities: x509Authority(t)}}}); err != nil || sr.Results[0].Status.Code != 0 {
		t.Fatalf("set: %v %v", err, sr)
	}
	before := h.state()

	// '~' is valid in none of the fields: each input fails validation, where
	// an error is most likely to quote it. 'a' is valid almost everywhere
	// (a trust domain name, a path, a selector...), so those inputs go
	// further before something refuses them.
	for _, fill := range []byte{'~', 'a'} {
		in := strings.Repeat(string(fill), mib)
		withEntry := func(f func(e *types.Entry)) []*types.Entry {
			e := workloadEntry("/new")
			f(e)
			return []*types.Entry{e}
		}
		updated := func(f func(e *types.Entry)) []*types.Entry {
			e := &types.Entry{Id: existing.Id, SpiffeId: existing.SpiffeId, ParentId: existing.ParentId, Selectors: existing.Selectors}
			f(e)
			return []*types.Entry{e}
		}
		entryFields := map[string]func(e *types.Entry){
			"id":             func(e *types.Entry) { e.Id = in },
			"spiffe_id path": func(e *types.Entry) { e.SpiffeId = apiID("/" + in) },
			"spiffe_id td":   func(e *types.Entry) { e.SpiffeId = &types.SPIFFEID{TrustDomain: in, Path: "/w"} },
			"parent path":    func(e *types.Entry) { e.ParentId = apiID("/" + in) },
			"parent td":      func(e *types.Entry) { e.ParentId = &types.SPIFFEID{TrustDomain: in, Path: "/p"} },
			"selector type":  func(e *types.Entry) { e.Selectors = []*types.Selector{{Type: in, Value: "v"}} },
			"selector value": func(e *types.Entry) { e.Selectors = []*types.Selector{{Type: "unix", Value: in}} },
			"selector ctl":   func(e *types.Entry) { e.Selectors = []*types.Selector{{Type: in[:500] + "\x01", Value: "v"}} },
			"dns name":       func(e *types.Entry) { e.DnsNames = []string{in} },
			"dns label":      func(e *types.Entry) { e.DnsNames = []string{in[:200] + "." + in[:60] + "~"} },
			"federates_with": func(e *types.Entry) { e.FederatesWith = []string{in} },
			"federates id":   func(e *types.Entry) { e.FederatesWith = []string{"spiffe://" + in} },
			"federates path": func(e *types.Entry) { e.FederatesWith = []string{"spiffe://x.org/" + in} },
			"hint":           func(e *types.Entry) { e.Hint = in },
		}
		var texts []string // every status message of this round
		statusText := func(name string, err error, sts ...*types.Status) {
			if err != nil {
				texts = append(texts, name+": "+status.Convert(err).Message())
			}
			for _, st := range sts {
				texts = append(texts, name+": "+st.GetMessage())
			}
		}
		for field, f := range entryFields {
			r, err := entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: withEntry(f)})
			statusText("BatchCreateEntry "+field, err, r.GetResults()[0].GetStatus())
			if code := codes.Code(r.GetResults()[0].GetStatus().GetCode()); err == nil && code == codes.OK {
				t.Errorf("BatchCreateEntry with a 1 MiB %s was accepted", field)
			}
			u, err := entries.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{Entries: updated(f)})
			statusText("BatchUpdateEntry "+field, err, u.GetResults()[0].GetStatus())
		}
		_, err := entries.GetEntry(ctx, &entryv1.GetEntryRequest{Id: in})
		statusText("GetEntry", err)
		d, err := entries.BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: []string{in}})
		statusText("BatchDeleteEntry", err, d.GetResults()[0].GetStatus())
		for name, f := range map[string]*entryv1.ListEntriesRequest_Filter{
			"by_spiffe_id":      {BySpiffeId: apiID("/" + in)},
			"by_spiffe_id td":   {BySpiffeId: &types.SPIFFEID{TrustDomain: in, Path: "/w"}},
			"by_parent_id":      {ByParentId: apiID("/" + in)},
			"by_selectors":      {BySelectors: &types.SelectorMatch{Selectors: []*types.Selector{{Type: in, Value: "v"}}}},
			"by_federates_with": {ByFederatesWith: &types.FederatesWithMatch{TrustDomains: []string{in}}},
			"by_hint":           {ByHint: wrapperspb.String(in)},
		} {
			_, err := entries.ListEntries(ctx, &entryv1.ListEntriesRequest{Filter: f})
			statusText("ListEntries "+name, err)
			_, err = entries.CountEntries(ctx, &entryv1.CountEntriesRequest{Filter: &entryv1.CountEntriesRequest_Filter{
				BySpiffeId: f.BySpiffeId, ByParentId: f.ByParentId, BySelectors: f.BySelectors, ByFederatesWith: f.ByFederatesWith, ByHint: f.ByHint}})
			statusText("CountEntries "+name, err)
		}

		// Bundles.
		jwt := func(kid string, pub []byte) []*types.JWTKey { return []*types.JWTKey{{KeyId: kid, PublicKey: pub}} }
		for name, b := range map[string]*types.Bundle{
			"trust_domain":     {TrustDomain: in, X509Authorities: x509Authority(t)},
			"trust_domain id":  {TrustDomain: "spiffe://" + in, X509Authorities: x509Authority(t)},
			"x509 authority":   {TrustDomain: "fed.org", X509Authorities: []*types.X509Certificate{{Asn1: []byte(in)}}},
			"jwt key id":       {TrustDomain: "fed.org", X509Authorities: x509Authority(t), JwtAuthorities: jwt(in, []byte("x"))},
			"jwt key id empty": {TrustDomain: "fed.org", X509Authorities: x509Authority(t), JwtAuthorities: jwt(in, nil)},
			"jwt public key":   {TrustDomain: "fed.org", X509Authorities: x509Authority(t), JwtAuthorities: jwt("k", []byte(in))},
		} {
			c, err := bundles.BatchCreateFederatedBundle(ctx, &bundlev1.BatchCreateFederatedBundleRequest{Bundle: []*types.Bundle{b}})
			statusText("BatchCreateFederatedBundle "+name, err, c.GetResults()[0].GetStatus())
			s, err := bundles.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: []*types.Bundle{b}})
			statusText("BatchSetFederatedBundle "+name, err, s.GetResults()[0].GetStatus())
			u, err := bundles.BatchUpdateFederatedBundle(ctx, &bundlev1.BatchUpdateFederatedBundleRequest{Bundle: []*types.Bundle{b}})
			statusText("BatchUpdateFederatedBundle "+name, err, u.GetResults()[0].GetStatus())
			if b.TrustDomain == "fed.org" { // an invalid authority: nothing appended
				_, err = bundles.AppendBundle(ctx, &bundlev1.AppendBundleRequest{X509Authorities: b.X509Authorities, JwtAuthorities: b.JwtAuthorities})
				statusText("AppendBundle "+name, err)
			}
			if len(b.JwtAuthorities) > 0 {
				_, err = bundles.PublishJWTAuthority(ctx, &bundlev1.PublishJWTAuthorityRequest{JwtAuthority: b.JwtAuthorities[0]})
				statusText("PublishJWTAuthority "+name, err)
			}
		}
		for _, name := range []string{in, "spiffe://" + in, "spiffe://x.org/" + in} {
			_, err := bundles.GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: name})
			statusText("GetFederatedBundle", err)
			d, err := bundles.BatchDeleteFederatedBundle(ctx, &bundlev1.BatchDeleteFederatedBundleRequest{TrustDomains: []string{name}})
			statusText("BatchDeleteFederatedBundle", err, d.GetResults()[0].GetStatus())
		}

		// Agents.
		for name, id := range map[string]*types.SPIFFEID{
			"path": apiID("/spire/agent/" + in), "td": {TrustDomain: in, Path: "/spire/agent/x"}, "not agent": apiID("/" + in),
		} {
			_, err := agents.GetAgent(ctx, &agentv1.GetAgentRequest{Id: id})
			statusText("GetAgent "+name, err)
			_, err = agents.BanAgent(ctx, &agentv1.BanAgentRequest{Id: id})
			statusText("BanAgent "+name, err)
			_, err = agents.DeleteAgent(ctx, &agentv1.DeleteAgentRequest{Id: id})
			statusText("DeleteAgent "+name, err)
			_, err = agents.CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{AgentId: id, Ttl: 60})
			statusText("CreateJoinToken agent_id "+name, err)
		}
		_, err = agents.CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{Token: in, Ttl: 60})
		statusText("CreateJoinToken token", err)
		for name, f := range map[string]*agentv1.ListAgentsRequest_Filter{
			"by_expires_before":   {ByExpiresBefore: in},
			"by_selector_match":   {BySelectorMatch: &types.SelectorMatch{Selectors: []*types.Selector{{Type: in, Value: "v"}}}},
			"by_attestation_type": {ByAttestationType: in},
		} {
			_, err := agents.ListAgents(ctx, &agentv1.ListAgentsRequest{Filter: f})
			statusText("ListAgents "+name, err)
			_, err = agents.CountAgents(ctx, &agentv1.CountAgentsRequest{Filter: &agentv1.CountAgentsRequest_Filter{
				ByExpiresBefore: f.ByExpiresBefore, BySelectorMatch: f.BySelectorMatch, ByAttestationType: f.ByAttestationType}})
			statusText("CountAgents "+name, err)
		}
		// AttestAgent over TCP: an unknown attestation type.
		key := newKey(t)
		_, err = attestWith(h.anonConn(), in, []byte("x"), csrFor(t, key), key)
		statusText("AttestAgent type", err)

		// SVIDs.
		for name, id := range map[string]*types.SPIFFEID{"path": apiID("/" + in), "td": {TrustDomain: in, Path: "/w"}} {
			_, err := svids.MintJWTSVID(ctx, &svidv1.MintJWTSVIDRequest{Id: id, Audience: []string{"a"}})
			statusText("MintJWTSVID "+name, err)
		}
		for name, tmpl := range map[string]*x509.CertificateRequest{
			"uri":      {URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/" + in}}},
			"dns":      {URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/w"}}, DNSNames: []string{in}},
			"uri host": {URIs: []*url.URL{{Scheme: "spiffe", Host: in, Path: "/w"}}},
		} {
			csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
			if err != nil {
				t.Fatal(err)
			}
			_, err = svids.MintX509SVID(ctx, &svidv1.MintX509SVIDRequest{Csr: csr})
			statusText("MintX509SVID "+name, err)
		}

		for _, text := range texts {
			requireNoEcho(t, "status message", text, fill)
		}
	}
	requireNoEcho(t, "log", logs.String(), '~')
	requireNoEcho(t, "log", logs.String(), 'a')
	h.requireUnchanged(before, "1 MiB inputs")
}
