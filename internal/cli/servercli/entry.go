package servercli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sigil-spiffe/sigil/internal/catalog"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// listPageSize is the page size used when listing entries and agents.
const listPageSize = 500

// entryFlags are the flags shared by "entry create" and "entry update".
type entryFlags struct {
	dataPath      string
	entryID       string
	spiffeID      string
	parentID      string
	selectors     stringsFlag
	x509SVIDTTL   ttlFlag
	jwtSVIDTTL    ttlFlag
	dnsNames      stringsFlag
	federatesWith stringsFlag
	admin         bool
	downstream    bool
	storeSVID     bool
	hint          string
	entryExpiry   int64
}

func (c *entryFlags) register(fs *flag.FlagSet, verb string) {
	fs.StringVar(&c.dataPath, "data", "", "Path to a file containing registration JSON (optional). If set to '-', read the JSON from stdin; the other entry flags are then ignored")
	if verb == "create" {
		fs.StringVar(&c.entryID, "entryID", "", "A custom ID for this registration entry (optional). If not set, a new entry ID will be generated")
	} else {
		fs.StringVar(&c.entryID, "entryID", "", "The Registration Entry ID of the record to update")
	}
	fs.StringVar(&c.spiffeID, "spiffeID", "", "The SPIFFE ID that this record represents")
	fs.StringVar(&c.parentID, "parentID", "", "The SPIFFE ID of this record's parent")
	fs.Var(&c.selectors, "selector", "A colon-delimited type:value selector. Can be used more than once")
	fs.Var(&c.x509SVIDTTL, "x509SVIDTTL", "The lifetime, in seconds (or a duration such as 1h), for x509-SVIDs issued based on this registration entry; 0 is the server's default")
	fs.Var(&c.jwtSVIDTTL, "jwtSVIDTTL", "The lifetime, in seconds (or a duration such as 5m), for JWT-SVIDs issued based on this registration entry; 0 is the server's default")
	fs.Var(&c.dnsNames, "dns", "A DNS name that will be included in SVIDs issued based on this entry, where appropriate. Can be used more than once")
	fs.Var(&c.federatesWith, "federatesWith", "SPIFFE ID of a trust domain to federate with. Can be used more than once")
	fs.BoolVar(&c.admin, "admin", false, "If set, the SPIFFE ID in this entry will be granted access to the server's admin APIs")
	fs.BoolVar(&c.downstream, "downstream", false, "A boolean value that, when set, indicates that the entry describes a downstream server")
	fs.BoolVar(&c.storeSVID, "storeSVID", false, "A boolean value that, when set, indicates that the resulting issued SVID from this entry must be stored through an SVIDStore plugin")
	fs.StringVar(&c.hint, "hint", "", "The entry hint, used to disambiguate entries with the same SPIFFE ID")
	fs.Int64Var(&c.entryExpiry, "entryExpiry", 0, "An expiry, from epoch in seconds, for the resulting registration entry to be pruned")
}

// validateCommon checks what create and update have in common.
func (c *entryFlags) validateCommon() error {
	if c.spiffeID == "" {
		return errors.New("a SPIFFE ID is required: use -spiffeID spiffe://<trust domain>/<path>")
	}
	if len(c.selectors) == 0 {
		return errors.New("at least one selector is required: use -selector type:value (e.g. unix:uid:1000)")
	}
	return nil
}

// build turns the flags into an entry; parent is the already-resolved parent.
func (c *entryFlags) build(parent *types.SPIFFEID) (*types.Entry, error) {
	spiffeID, err := parseID("-spiffeID", c.spiffeID)
	if err != nil {
		return nil, err
	}
	selectors, err := parseSelectors(c.selectors)
	if err != nil {
		return nil, err
	}
	federatesWith := make([]string, 0, len(c.federatesWith))
	for _, f := range c.federatesWith {
		td, err := parseTrustDomain("-federatesWith", f)
		if err != nil {
			return nil, err
		}
		federatesWith = append(federatesWith, td.Name())
	}
	return &types.Entry{
		Id:            c.entryID,
		SpiffeId:      spiffeID,
		ParentId:      parent,
		Selectors:     selectors,
		X509SvidTtl:   c.x509SVIDTTL.seconds(),
		JwtSvidTtl:    c.jwtSVIDTTL.seconds(),
		FederatesWith: federatesWith,
		Admin:         c.admin,
		Downstream:    c.downstream,
		ExpiresAt:     c.entryExpiry,
		DnsNames:      []string(c.dnsNames),
		StoreSvid:     c.storeSVID,
		Hint:          c.hint,
	}, nil
}

// selectorKinds knows the selector types Sigil's attestors produce (and
// SPIRE's others), to refuse selectors that can never match.
var selectorKinds = catalog.Selectors()

// maxExpiry is the first second of the year 10000.
const maxExpiry = 253402300800

// checkEntries refuses, before anything is sent, entries that could never
// be used: an expiry in the past (or beyond the year 9999, likely
// milliseconds), or a selector of a known type that its attestor never
// produces. A selector of a type Sigil does not know is kept, with a
// warning on stderr listing the known types: the server accepts any type.
// dataPath names the -data file the entries came from ("" for flags).
func checkEntries(entries []*types.Entry, dataPath string, s *session) error {
	t := time.Now()
	for i, e := range entries {
		expiryName, selName, ttlNames := "-entryExpiry", "-selector", "-x509SVIDTTL and -jwtSVIDTTL"
		if dataPath != "" {
			where := fmt.Sprintf("entry #%d in %s: ", i+1, dataPath)
			expiryName, selName, ttlNames = where+"expires_at", where+"selector", where+"x509_svid_ttl and jwt_svid_ttl"
		}
		if e.GetX509SvidTtl() < 0 || e.GetJwtSvidTtl() < 0 {
			return fmt.Errorf("%s must not be negative (got %d and %d)", ttlNames, e.GetX509SvidTtl(), e.GetJwtSvidTtl())
		}
		switch exp := e.GetExpiresAt(); {
		case exp < 0:
			return fmt.Errorf("%s %d must not be negative (seconds since the Unix epoch)", expiryName, exp)
		case exp >= maxExpiry:
			return fmt.Errorf("%s %d is after the year 9999: give seconds since the Unix epoch, not milliseconds", expiryName, exp)
		case exp != 0 && exp <= t.Unix():
			return fmt.Errorf("%s %d (%s) is in the past: the entry would be pruned at once", expiryName, exp, time.Unix(exp, 0).UTC().Format(time.RFC3339))
		}
		for _, ps := range e.GetSelectors() {
			sel := selector.Selector{Type: ps.GetType(), Value: ps.GetValue()}
			err := selectorKinds.Check(sel)
			switch {
			case errors.Is(err, selector.ErrUnknownType):
				s.errorf("Warning: %s %q: %v; the entry is stored, but matches only if an attestor outside Sigil produces this type\n", selName, sel.String(), err)
			case err != nil:
				return fmt.Errorf("%s can never match: %w", selName, err)
			}
		}
	}
	return nil
}

// ---- entry create ----

type entryCreateCmd struct {
	entryFlags
	node bool
}

func (c *entryCreateCmd) flags(fs *flag.FlagSet) {
	c.register(fs, "create")
	fs.BoolVar(&c.node, "node", false, "If set, this entry will be applied to matching nodes rather than workloads (its parent is the server)")
}

func (c *entryCreateCmd) entries() ([]*types.Entry, error) {
	if c.dataPath != "" {
		return readEntryData(c.dataPath)
	}
	if err := c.validateCommon(); err != nil {
		return nil, err
	}
	if c.node && len(c.federatesWith) > 0 {
		return nil, errors.New("node entries can not federate: remove -federatesWith or -node")
	}
	if c.parentID == "" && !c.node {
		return nil, errors.New("a parent ID is required if the node flag is not set: use -parentID spiffe://<trust domain>/<path> or -node")
	}
	var parent *types.SPIFFEID
	if c.node {
		id, err := parseID("-spiffeID", c.spiffeID)
		if err != nil {
			return nil, err
		}
		parent = &types.SPIFFEID{TrustDomain: id.TrustDomain, Path: "/spire/server"}
	} else {
		p, err := parseID("-parentID", c.parentID)
		if err != nil {
			return nil, err
		}
		parent = p
	}
	e, err := c.build(parent)
	if err != nil {
		return nil, err
	}
	return []*types.Entry{e}, nil
}

func (c *entryCreateCmd) run(ctx context.Context, s *session) error {
	entries, err := c.entries()
	if err != nil {
		return err
	}
	if err := checkEntries(entries, c.dataPath, s); err != nil {
		return err
	}
	client, err := s.entryClient()
	if err != nil {
		return err
	}
	resp, err := client.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: entries})
	if err != nil {
		return fmt.Errorf("creating entries: %w", err)
	}
	return reportEntryBatch(s, "create", entries, resp, resp.GetResults(),
		func(r *entryv1.BatchCreateEntryResponse_Result, e *types.Entry) { r.Entry = e })
}

// entryResult is what BatchCreateEntry and BatchUpdateEntry results share.
type entryResult interface {
	GetStatus() *types.Status
	GetEntry() *types.Entry
}

// reportEntryBatch reports the results of a batch create or update (verb)
// of entries: it puts the requested entry into each failed result with
// setEntry (the user must see which entry failed; servers return nothing
// or, for AlreadyExists, the existing entry, so the output would depend on
// the server), as SPIRE's CLI does, sorts selectors, prints resp (json)
// or the results, and fails naming the number of failures.
func reportEntryBatch[R entryResult](s *session, verb string, entries []*types.Entry, resp proto.Message, results []R, setEntry func(R, *types.Entry)) error {
	failed := 0
	for i, r := range results {
		if codes.Code(r.GetStatus().GetCode()) != codes.OK {
			failed++
			if i < len(entries) {
				setEntry(r, entries[i])
			}
		}
		sortSelectors(r.GetEntry())
	}
	if s.json() {
		if err := s.printJSON(resp); err != nil {
			return err
		}
	} else {
		printBatchResults(s.stdout, s.stderr, verb, results)
	}
	if failed > 0 {
		return fmt.Errorf("failed to %s %d of %d %s", verb, failed, len(entries), plural(len(entries), "entry", "entries"))
	}
	return nil
}

// printBatchResults prints the entries that succeeded on stdout, then each
// failure on stderr with its status, like SPIRE.
func printBatchResults[R entryResult](stdout, stderr io.Writer, verb string, results []R) {
	for _, r := range results {
		if codes.Code(r.GetStatus().GetCode()) == codes.OK {
			printEntry(stdout, r.GetEntry())
		}
	}
	for _, r := range results {
		code := codes.Code(r.GetStatus().GetCode())
		if code == codes.OK {
			continue
		}
		fmt.Fprintf(stderr, "Failed to %s the following entry (code: %s, msg: %q):\n", verb, code, r.GetStatus().GetMessage())
		printEntry(stderr, r.GetEntry())
	}
}

// ---- entry update ----

type entryUpdateCmd struct {
	entryFlags
}

func (c *entryUpdateCmd) flags(fs *flag.FlagSet) { c.register(fs, "update") }

func (c *entryUpdateCmd) entries() ([]*types.Entry, error) {
	if c.dataPath != "" {
		entries, err := readEntryData(c.dataPath)
		if err != nil {
			return nil, err
		}
		for i, e := range entries {
			if e.GetId() == "" {
				return nil, fmt.Errorf("entry #%d in %s has no entry_id: updates need the ID of the entry to replace", i+1, c.dataPath)
			}
		}
		return entries, nil
	}
	if c.entryID == "" {
		return nil, errors.New("an entry ID is required: use -entryID (see 'entry show')")
	}
	if err := c.validateCommon(); err != nil {
		return nil, err
	}
	if c.parentID == "" {
		return nil, errors.New("a parent ID is required: use -parentID spiffe://<trust domain>/<path>")
	}
	parent, err := parseID("-parentID", c.parentID)
	if err != nil {
		return nil, err
	}
	e, err := c.build(parent)
	if err != nil {
		return nil, err
	}
	return []*types.Entry{e}, nil
}

func (c *entryUpdateCmd) run(ctx context.Context, s *session) error {
	entries, err := c.entries()
	if err != nil {
		return err
	}
	if err := checkEntries(entries, c.dataPath, s); err != nil {
		return err
	}
	client, err := s.entryClient()
	if err != nil {
		return err
	}
	resp, err := client.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{Entries: entries})
	if err != nil {
		return fmt.Errorf("updating entries: %w", err)
	}
	return reportEntryBatch(s, "update", entries, resp, resp.GetResults(),
		func(r *entryv1.BatchUpdateEntryResponse_Result, e *types.Entry) { r.Entry = e })
}

// ---- entry delete ----

type entryDeleteCmd struct {
	entryIDs stringsFlag
}

func (c *entryDeleteCmd) flags(fs *flag.FlagSet) {
	fs.Var(&c.entryIDs, "entryID", "The Registration Entry ID of the record to delete. Can be used more than once")
}

func (c *entryDeleteCmd) run(ctx context.Context, s *session) error {
	if len(c.entryIDs) == 0 {
		return errors.New("an entry ID is required: use -entryID (see 'entry show')")
	}
	client, err := s.entryClient()
	if err != nil {
		return err
	}
	resp, err := client.BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: c.entryIDs})
	if err != nil {
		return fmt.Errorf("deleting entries: %w", err)
	}
	failed := 0
	if s.json() {
		if err := s.printJSON(resp); err != nil {
			return err
		}
	}
	for i, r := range resp.GetResults() {
		id := r.GetId()
		if id == "" && i < len(c.entryIDs) {
			id = c.entryIDs[i]
		}
		code := codes.Code(r.GetStatus().GetCode())
		if code == codes.OK {
			if !s.json() {
				s.printf("Deleted entry with ID: %s\n", id)
			}
			continue
		}
		failed++
		if !s.json() {
			s.errorf("Failed to delete entry with ID %s (code: %s, msg: %q)\n", id, code, r.GetStatus().GetMessage())
		}
	}
	if failed > 0 {
		return fmt.Errorf("failed to delete %d of %d %s", failed, len(c.entryIDs), plural(len(c.entryIDs), "entry", "entries"))
	}
	return nil
}

// ---- entry show / count filters ----

type entryFilterFlags struct {
	spiffeID             string
	parentID             string
	selectors            stringsFlag
	federatesWith        stringsFlag
	matchSelectorsOn     string
	matchFederatesWithOn string
	hint                 string
	downstream           bool
}

func (c *entryFilterFlags) register(fs *flag.FlagSet, verb string) {
	fs.StringVar(&c.spiffeID, "spiffeID", "", "The SPIFFE ID of the records to "+verb)
	fs.StringVar(&c.parentID, "parentID", "", "The Parent ID of the records to "+verb)
	fs.Var(&c.selectors, "selector", "A colon-delimited type:value selector. Can be used more than once")
	fs.Var(&c.federatesWith, "federatesWith", "SPIFFE ID of a trust domain an entry is federated with. Can be used more than once")
	fs.StringVar(&c.matchSelectorsOn, "matchSelectorsOn", "superset", "The match mode used when filtering by selectors. Options: exact, any, superset and subset")
	fs.StringVar(&c.matchFederatesWithOn, "matchFederatesWithOn", "superset", "The match mode used when filtering by federates with. Options: exact, any, superset and subset")
	fs.StringVar(&c.hint, "hint", "", "The Hint of the records to "+verb)
	fs.BoolVar(&c.downstream, "downstream", false, "If set, only entries that describe a downstream server are considered")
}

type entryFilter struct {
	spiffeID, parentID *types.SPIFFEID
	selectors          *types.SelectorMatch
	federatesWith      *types.FederatesWithMatch
	hint               *wrapperspb.StringValue
	downstream         *wrapperspb.BoolValue
}

func parseSelectorMatch(s string) (types.SelectorMatch_MatchBehavior, error) {
	switch s {
	case "exact":
		return types.SelectorMatch_MATCH_EXACT, nil
	case "subset":
		return types.SelectorMatch_MATCH_SUBSET, nil
	case "superset":
		return types.SelectorMatch_MATCH_SUPERSET, nil
	case "any":
		return types.SelectorMatch_MATCH_ANY, nil
	}
	return 0, fmt.Errorf("match behavior %q unknown: use exact, any, superset or subset", s)
}

func (c *entryFilterFlags) parse() (*entryFilter, error) {
	f := &entryFilter{}
	var err error
	if c.spiffeID != "" {
		if f.spiffeID, err = parseID("-spiffeID", c.spiffeID); err != nil {
			return nil, err
		}
	}
	if c.parentID != "" {
		if f.parentID, err = parseID("-parentID", c.parentID); err != nil {
			return nil, err
		}
	}
	selMatch, err := parseSelectorMatch(c.matchSelectorsOn)
	if err != nil {
		return nil, fmt.Errorf("-matchSelectorsOn: %w", err)
	}
	fedMatch, err := parseSelectorMatch(c.matchFederatesWithOn)
	if err != nil {
		return nil, fmt.Errorf("-matchFederatesWithOn: %w", err)
	}
	if len(c.selectors) > 0 {
		sels, err := parseSelectors(c.selectors)
		if err != nil {
			return nil, err
		}
		f.selectors = &types.SelectorMatch{Selectors: sels, Match: selMatch}
	}
	if len(c.federatesWith) > 0 {
		tds := make([]string, 0, len(c.federatesWith))
		for _, s := range c.federatesWith {
			td, err := parseTrustDomain("-federatesWith", s)
			if err != nil {
				return nil, err
			}
			tds = append(tds, td.Name())
		}
		// Both enums have the same numbering.
		f.federatesWith = &types.FederatesWithMatch{TrustDomains: tds, Match: types.FederatesWithMatch_MatchBehavior(fedMatch)}
	}
	if c.hint != "" {
		f.hint = wrapperspb.String(c.hint)
	}
	if c.downstream {
		f.downstream = wrapperspb.Bool(true)
	}
	return f, nil
}

// ---- entry show ----

type entryShowCmd struct {
	entryFilterFlags
	entryID string
}

func (c *entryShowCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.entryID, "entryID", "", "The Entry ID of the record to show")
	c.register(fs, "show")
}

func (c *entryShowCmd) run(ctx context.Context, s *session) error {
	if c.entryID != "" && (c.spiffeID != "" || c.parentID != "" || len(c.selectors) > 0 || len(c.federatesWith) > 0 || c.hint != "" || c.downstream) {
		return errors.New("the -entryID flag can't be combined with others")
	}
	filter, err := c.parse()
	if err != nil {
		return err
	}
	client, err := s.entryClient()
	if err != nil {
		return err
	}
	resp := &entryv1.ListEntriesResponse{}
	if c.entryID != "" {
		e, err := client.GetEntry(ctx, &entryv1.GetEntryRequest{Id: c.entryID})
		if err != nil {
			return fmt.Errorf("error fetching entry ID %s: %w", c.entryID, err)
		}
		resp.Entries = []*types.Entry{e}
	} else {
		req := &entryv1.ListEntriesRequest{
			PageSize: listPageSize,
			Filter: &entryv1.ListEntriesRequest_Filter{
				BySpiffeId:      filter.spiffeID,
				ByParentId:      filter.parentID,
				BySelectors:     filter.selectors,
				ByFederatesWith: filter.federatesWith,
				ByHint:          filter.hint,
				ByDownstream:    filter.downstream,
			},
		}
		for {
			page, err := client.ListEntries(ctx, req)
			if err != nil {
				return fmt.Errorf("error fetching entries: %w", err)
			}
			resp.Entries = append(resp.Entries, page.GetEntries()...)
			if page.GetNextPageToken() == "" || page.GetNextPageToken() == req.PageToken {
				break
			}
			req.PageToken = page.GetNextPageToken()
		}
	}
	sortEntries(resp.Entries)
	if s.json() {
		return s.printJSON(resp)
	}
	printEntries(s.stdout, resp.Entries)
	return nil
}

// ---- entry count ----

type entryCountCmd struct {
	entryFilterFlags
}

func (c *entryCountCmd) flags(fs *flag.FlagSet) { c.register(fs, "count") }

func (c *entryCountCmd) run(ctx context.Context, s *session) error {
	filter, err := c.parse()
	if err != nil {
		return err
	}
	client, err := s.entryClient()
	if err != nil {
		return err
	}
	resp, err := client.CountEntries(ctx, &entryv1.CountEntriesRequest{
		Filter: &entryv1.CountEntriesRequest_Filter{
			BySpiffeId:      filter.spiffeID,
			ByParentId:      filter.parentID,
			BySelectors:     filter.selectors,
			ByFederatesWith: filter.federatesWith,
			ByHint:          filter.hint,
			ByDownstream:    filter.downstream,
		},
	})
	if err != nil {
		return fmt.Errorf("counting entries: %w", err)
	}
	if s.json() {
		return s.printJSON(resp)
	}
	n := int(resp.GetCount())
	s.printf("%d registration %s\n", n, plural(n, "entry", "entries"))
	return nil
}

// ---- -data files ----

// dataEntry is one entry of a -data file. The format is SPIRE's: SPIFFE IDs
// as strings, selectors as {type, value} objects.
type dataEntry struct {
	EntryID       string         `json:"entry_id"`
	SpiffeID      string         `json:"spiffe_id"`
	ParentID      string         `json:"parent_id"`
	Selectors     []dataSelector `json:"selectors"`
	X509SVIDTTL   int32          `json:"x509_svid_ttl"`
	JWTSVIDTTL    int32          `json:"jwt_svid_ttl"`
	FederatesWith []string       `json:"federates_with"`
	Admin         bool           `json:"admin"`
	Downstream    bool           `json:"downstream"`
	EntryExpiry   int64          `json:"entryExpiry"`
	ExpiresAt     int64          `json:"expires_at"`
	DNSNames      []string       `json:"dns_names"`
	StoreSVID     bool           `json:"store_svid"`
	Hint          string         `json:"hint"`
}

type dataSelector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

type dataFile struct {
	Entries []dataEntry `json:"entries"`
}

// readEntryData reads a -data file ("-" is stdin).
func readEntryData(path string) ([]*types.Entry, error) {
	var r io.Reader
	if path == "-" {
		r = stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("reading -data file: %w", err)
		}
		defer f.Close()
		r = f
	}
	return parseEntryData(r, path)
}

func parseEntryData(r io.Reader, name string) ([]*types.Entry, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var df dataFile
	if err := dec.Decode(&df); err != nil {
		return nil, fmt.Errorf("parsing %s: %w (expected {\"entries\": [{\"spiffe_id\": ..., \"parent_id\": ..., \"selectors\": [{\"type\": ..., \"value\": ...}]}]})", name, err)
	}
	if len(df.Entries) == 0 {
		return nil, fmt.Errorf("%s contains no entries", name)
	}
	out := make([]*types.Entry, 0, len(df.Entries))
	for i, d := range df.Entries {
		where := fmt.Sprintf("entry #%d in %s", i+1, name)
		spiffeID, err := parseID("spiffe_id", d.SpiffeID)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		parentID, err := parseID("parent_id", d.ParentID)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if len(d.Selectors) == 0 {
			return nil, fmt.Errorf("%s: at least one selector is required", where)
		}
		sels := make([]*types.Selector, 0, len(d.Selectors))
		for _, s := range d.Selectors {
			if s.Type == "" || s.Value == "" {
				return nil, fmt.Errorf("%s: selectors need a type and a value", where)
			}
			sels = append(sels, &types.Selector{Type: s.Type, Value: s.Value})
		}
		expires := d.ExpiresAt
		if expires == 0 {
			expires = d.EntryExpiry
		}
		out = append(out, &types.Entry{
			Id:            d.EntryID,
			SpiffeId:      spiffeID,
			ParentId:      parentID,
			Selectors:     sels,
			X509SvidTtl:   d.X509SVIDTTL,
			JwtSvidTtl:    d.JWTSVIDTTL,
			FederatesWith: d.FederatesWith,
			Admin:         d.Admin,
			Downstream:    d.Downstream,
			ExpiresAt:     expires,
			DnsNames:      d.DNSNames,
			StoreSvid:     d.StoreSVID,
			Hint:          d.Hint,
		})
	}
	return out, nil
}
