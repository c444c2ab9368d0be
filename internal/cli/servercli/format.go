package servercli

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
)

// parseID parses a SPIFFE ID given on the command line into its API form.
// what names the flag for the error message.
func parseID(what, s string) (*types.SPIFFEID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return nil, fmt.Errorf("invalid %s %q: %w (expected spiffe://<trust domain>/<path>)", what, s, err)
	}
	return &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()}, nil
}

// parseTrustDomain accepts "example.org" or "spiffe://example.org".
func parseTrustDomain(what, s string) (spiffeid.TrustDomain, error) {
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("invalid %s %q: %w (expected a trust domain such as example.org or spiffe://example.org)", what, s, err)
	}
	return td, nil
}

// idString renders an API SPIFFE ID; empty for nil.
func idString(id *types.SPIFFEID) string {
	if id == nil {
		return ""
	}
	if id.TrustDomain == "" && id.Path == "" {
		return ""
	}
	return "spiffe://" + id.TrustDomain + id.Path
}

// parseSelector parses "type:value"; everything after the first colon is the
// value (so "unix:uid:1000" is type "unix", value "uid:1000").
func parseSelector(s string) (*types.Selector, error) {
	typ, value, ok := strings.Cut(s, ":")
	if !ok || typ == "" || value == "" {
		return nil, fmt.Errorf("selector %q must be formatted as type:value (e.g. unix:uid:1000)", s)
	}
	return &types.Selector{Type: typ, Value: value}, nil
}

func parseSelectors(in []string) ([]*types.Selector, error) {
	out := make([]*types.Selector, 0, len(in))
	for _, s := range in {
		sel, err := parseSelector(s)
		if err != nil {
			return nil, err
		}
		out = append(out, sel)
	}
	return out, nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// unixTime renders seconds since the epoch in UTC, as SPIRE does.
func unixTime(sec int64) string {
	return time.Unix(sec, 0).UTC().String()
}

// printEntry writes one entry in the aligned "Label : value" layout of the
// SPIRE CLI, followed by a blank line. Optional attributes are shown only
// when set, to keep the common case short.
func printEntry(w io.Writer, e *types.Entry) {
	row := func(label, format string, args ...any) {
		fmt.Fprintf(w, "%-17s: %s\n", label, fmt.Sprintf(format, args...))
	}
	id := e.GetId()
	if id == "" {
		id = "(none)"
	}
	row("Entry ID", "%s", id)
	row("SPIFFE ID", "%s", idString(e.GetSpiffeId()))
	row("Parent ID", "%s", idString(e.GetParentId()))
	row("Revision", "%d", e.GetRevisionNumber())
	if e.GetDownstream() {
		row("Downstream", "%t", true)
	}
	if e.GetX509SvidTtl() == 0 {
		row("X509-SVID TTL", "default")
	} else {
		row("X509-SVID TTL", "%d", e.GetX509SvidTtl())
	}
	if e.GetJwtSvidTtl() == 0 {
		row("JWT-SVID TTL", "default")
	} else {
		row("JWT-SVID TTL", "%d", e.GetJwtSvidTtl())
	}
	if e.GetExpiresAt() != 0 {
		row("Expiration time", "%s", unixTime(e.GetExpiresAt()))
	}
	for _, s := range e.GetSelectors() {
		row("Selector", "%s:%s", s.GetType(), s.GetValue())
	}
	for _, td := range e.GetFederatesWith() {
		row("FederatesWith", "%s", td)
	}
	for _, d := range e.GetDnsNames() {
		row("DNS name", "%s", d)
	}
	if e.GetAdmin() {
		row("Admin", "%t", true)
	}
	if e.GetStoreSvid() {
		row("StoreSvid", "%t", true)
	}
	if e.GetHint() != "" {
		row("Hint", "%s", e.GetHint())
	}
	if e.GetCreatedAt() != 0 {
		row("Created At", "%s", unixTime(e.GetCreatedAt()))
	}
	fmt.Fprintln(w)
}

// printEntries writes "Found N entries" and then each entry.
func printEntries(w io.Writer, entries []*types.Entry) {
	fmt.Fprintf(w, "Found %d %s\n", len(entries), plural(len(entries), "entry", "entries"))
	for _, e := range entries {
		printEntry(w, e)
	}
}

// sortSelectors orders an entry's selectors by type, then value: servers
// return them in different orders (sigil-server sorted, spire-server as
// created), and SPIRE's CLI prints them sorted.
func sortSelectors(e *types.Entry) {
	if e == nil {
		return
	}
	slices.SortStableFunc(e.Selectors, func(a, b *types.Selector) int {
		return cmp.Or(cmp.Compare(a.GetType(), b.GetType()), cmp.Compare(a.GetValue(), b.GetValue()))
	})
}

// sortEntries orders entries by SPIFFE ID, parent ID, selectors and entry
// ID, and each entry's selectors, so that the output is stable across
// servers and runs.
func sortEntries(entries []*types.Entry) {
	for _, e := range entries {
		sortSelectors(e)
	}
	key := func(e *types.Entry) []string {
		sels := make([]string, 0, len(e.GetSelectors()))
		for _, s := range e.GetSelectors() {
			sels = append(sels, s.GetType()+":"+s.GetValue())
		}
		sort.Strings(sels)
		return []string{idString(e.GetSpiffeId()), idString(e.GetParentId()), strings.Join(sels, ","), e.GetId()}
	}
	sort.SliceStable(entries, func(i, j int) bool {
		a, b := key(entries[i]), key(entries[j])
		for k := range a {
			if a[k] != b[k] {
				return a[k] < b[k]
			}
		}
		return false
	})
}

// printAgent writes one attested agent in the SPIRE CLI layout.
func printAgent(w io.Writer, a *types.Agent) {
	row := func(label, format string, args ...any) {
		fmt.Fprintf(w, "%-18s: %s\n", label, fmt.Sprintf(format, args...))
	}
	row("SPIFFE ID", "%s", idString(a.GetId()))
	row("Attestation type", "%s", a.GetAttestationType())
	row("Expiration time", "%s", unixTime(a.GetX509SvidExpiresAt()))
	row("Serial number", "%s", a.GetX509SvidSerialNumber())
	row("Can re-attest", "%t", a.GetCanReattest())
	if a.GetBanned() {
		row("Banned", "%t", true)
	}
	if a.GetAgentVersion() != "" {
		row("Agent version", "%s", a.GetAgentVersion())
	}
}

func printAgentList(w io.Writer, agents []*types.Agent) {
	fmt.Fprintf(w, "Found %d attested %s:\n\n", len(agents), plural(len(agents), "agent", "agents"))
	for _, a := range agents {
		printAgent(w, a)
		fmt.Fprintln(w)
	}
}

func printAgentShow(w io.Writer, a *types.Agent) {
	fmt.Fprint(w, "Found an attested agent given its SPIFFE ID\n\n")
	printAgent(w, a)
	for _, s := range a.GetSelectors() {
		fmt.Fprintf(w, "%-18s: %s:%s\n", "Selectors", s.GetType(), s.GetValue())
	}
}
