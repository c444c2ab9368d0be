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

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-spiffe/sigil/internal/fedstatus"
)

const (
	profileHTTPSWeb    = "https_web"
	profileHTTPSSPIFFE = "https_spiffe"
)

func (s *session) trustDomainClient() (trustdomainv1.TrustDomainClient, error) {
	c, err := s.dial()
	if err != nil {
		return nil, err
	}
	return trustdomainv1.NewTrustDomainClient(c), nil
}

// relationshipConfig is a relationship given by flags or in a -data file
// (SPIRE's JSON keys).
type relationshipConfig struct {
	TrustDomain             string          `json:"trustDomain,omitempty"`
	BundleEndpointURL       string          `json:"bundleEndpointURL,omitempty"`
	BundleEndpointProfile   string          `json:"bundleEndpointProfile,omitempty"`
	EndpointSPIFFEID        string          `json:"endpointSPIFFEID,omitempty"`
	TrustDomainBundle       json.RawMessage `json:"trustDomainBundle,omitempty"`
	TrustDomainBundleFormat string          `json:"trustDomainBundleFormat,omitempty"`
	// TrustDomainBundlePath is set by -trustDomainBundlePath only.
	TrustDomainBundlePath string `json:"-"`
}

type relationshipFlags struct {
	data string
	cfg  relationshipConfig
}

func (f *relationshipFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.data, "data", "", "Path to a file containing federation relationships in JSON format (optional). If set to '-', read the JSON from stdin.")
	fs.StringVar(&f.cfg.TrustDomain, "trustDomain", "", "Name of the trust domain to federate with (e.g., example.org)")
	fs.StringVar(&f.cfg.BundleEndpointURL, "bundleEndpointURL", "", "URL of the SPIFFE bundle endpoint that provides the trust bundle (must use the HTTPS protocol)")
	fs.StringVar(&f.cfg.BundleEndpointProfile, "bundleEndpointProfile", "", fmt.Sprintf("Endpoint profile type (either %q or %q)", profileHTTPSWeb, profileHTTPSSPIFFE))
	fs.StringVar(&f.cfg.EndpointSPIFFEID, "endpointSpiffeID", "", "SPIFFE ID of the SPIFFE bundle endpoint server. Only used for 'https_spiffe' profile.")
	fs.StringVar(&f.cfg.TrustDomainBundlePath, "trustDomainBundlePath", "", "Path to the trust domain bundle data (optional).")
	fs.StringVar(&f.cfg.TrustDomainBundleFormat, "trustDomainBundleFormat", formatPEM, fmt.Sprintf("The format of the bundle data (optional). Either %q or %q.", formatPEM, formatSPIFFE))
}

// relationships builds the relationships to send, from -data or the flags.
func (f *relationshipFlags) relationships(given map[string]bool) ([]*types.FederationRelationship, error) {
	if f.data == "" {
		rel, err := f.cfg.toProto()
		if err != nil {
			return nil, err
		}
		return []*types.FederationRelationship{rel}, nil
	}
	for _, name := range []string{"trustDomain", "bundleEndpointURL", "bundleEndpointProfile", "endpointSpiffeID", "trustDomainBundlePath", "trustDomainBundleFormat"} {
		if given[name] {
			return nil, fmt.Errorf("cannot use other flags to specify relationship fields when 'data' flag is set (-%s given)", name)
		}
	}
	var r io.Reader = stdin
	if f.data != "-" {
		file, err := os.Open(f.data)
		if err != nil {
			return nil, fmt.Errorf("reading -data: %w", err)
		}
		defer file.Close()
		r = file
	}
	raw, err := io.ReadAll(io.LimitReader(r, maxDataFile))
	if err != nil {
		return nil, fmt.Errorf("reading -data: %w", err)
	}
	var doc struct {
		FederationRelationships []*relationshipConfig `json:"federationRelationships"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("failed to parse JSON: %w", err)
	}
	out := make([]*types.FederationRelationship, 0, len(doc.FederationRelationships))
	for i, c := range doc.FederationRelationships {
		if c == nil {
			return nil, fmt.Errorf("could not parse item %d: empty", i)
		}
		if c.TrustDomainBundleFormat == "" {
			c.TrustDomainBundleFormat = formatPEM
		}
		rel, err := c.toProto()
		if err != nil {
			return nil, fmt.Errorf("could not parse item %d: %w", i, err)
		}
		out = append(out, rel)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no federationRelationships", f.data)
	}
	return out, nil
}

// maxDataFile bounds a -data file.
const maxDataFile = 16 << 20

func (c *relationshipConfig) toProto() (*types.FederationRelationship, error) {
	if c.TrustDomain == "" {
		return nil, errors.New("trust domain is required")
	}
	if c.BundleEndpointURL == "" {
		return nil, errors.New("bundle endpoint URL is required")
	}
	rel := &types.FederationRelationship{TrustDomain: c.TrustDomain, BundleEndpointUrl: c.BundleEndpointURL}
	bundleTD := c.TrustDomain
	switch c.BundleEndpointProfile {
	case profileHTTPSWeb:
		rel.BundleEndpointProfile = &types.FederationRelationship_HttpsWeb{HttpsWeb: &types.HTTPSWebProfile{}}
	case profileHTTPSSPIFFE:
		if c.EndpointSPIFFEID == "" {
			return nil, errors.New("endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set")
		}
		id, err := spiffeid.FromString(c.EndpointSPIFFEID)
		if err != nil {
			return nil, fmt.Errorf("cannot parse bundle endpoint SPIFFE ID: %w", err)
		}
		bundleTD = id.TrustDomain().Name()
		rel.BundleEndpointProfile = &types.FederationRelationship_HttpsSpiffe{HttpsSpiffe: &types.HTTPSSPIFFEProfile{EndpointSpiffeId: c.EndpointSPIFFEID}}
	default:
		return nil, fmt.Errorf("unknown bundle endpoint profile type: %q (use %s or %s)", c.BundleEndpointProfile, profileHTTPSWeb, profileHTTPSSPIFFE)
	}
	var data []byte
	switch {
	case c.TrustDomainBundlePath != "":
		b, err := os.ReadFile(c.TrustDomainBundlePath)
		if err != nil {
			return nil, fmt.Errorf("cannot read bundle file: %w", err)
		}
		data = b
	case c.TrustDomainBundle != nil:
		switch c.TrustDomainBundleFormat {
		case formatPEM:
			var s string
			if err := json.Unmarshal(c.TrustDomainBundle, &s); err != nil {
				return nil, fmt.Errorf("cannot parse bundle raw message: trustDomainBundle in pem format must be a JSON string: %w", err)
			}
			data = []byte(s)
		case formatSPIFFE:
			data = c.TrustDomainBundle
		default:
			return nil, fmt.Errorf("cannot parse bundle raw message: bundle format %q is unsupported", c.TrustDomainBundleFormat)
		}
	default:
		return rel, nil
	}
	if err := checkFormat(c.TrustDomainBundleFormat); err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(bundleTD)
	if err != nil {
		return nil, fmt.Errorf("invalid trust domain %q: %w", bundleTD, err)
	}
	b, err := parseBundleData(td, data, c.TrustDomainBundleFormat)
	if err != nil {
		return nil, fmt.Errorf("cannot parse bundle file: %w", err)
	}
	rel.TrustDomainBundle = b
	return rel, nil
}

// printRelationship writes a relationship as SPIRE's CLI does.
func printRelationship(w io.Writer, fr *types.FederationRelationship) {
	fmt.Fprintf(w, "Trust domain              : %s\n", fr.GetTrustDomain())
	fmt.Fprintf(w, "Bundle endpoint URL       : %s\n", fr.GetBundleEndpointUrl())
	switch p := fr.GetBundleEndpointProfile().(type) {
	case *types.FederationRelationship_HttpsWeb:
		fmt.Fprintf(w, "Bundle endpoint profile   : %s\n", profileHTTPSWeb)
	case *types.FederationRelationship_HttpsSpiffe:
		fmt.Fprintf(w, "Bundle endpoint profile   : %s\n", profileHTTPSSPIFFE)
		fmt.Fprintf(w, "Endpoint SPIFFE ID        : %s\n", p.HttpsSpiffe.GetEndpointSpiffeId())
	}
}

// printStatus writes what sigil-server reports of a relationship's
// refreshes (fedstatus; nothing for a server that reports nothing).
func printStatus(w io.Writer, st *fedstatus.Status) {
	if st == nil {
		return
	}
	when := func(t time.Time) string {
		return fmt.Sprintf("%s (%s ago)", t.UTC().Format(time.RFC3339), ago(st.Now.Sub(t)))
	}
	switch {
	case st.ConsecutiveFailures > 0:
		fmt.Fprintf(w, "Refresh status            : failing (%d %s since %s)\n", st.ConsecutiveFailures, plural(st.ConsecutiveFailures, "attempt", "attempts"), st.FailingSince.UTC().Format(time.RFC3339))
	case !st.LastSuccess.IsZero():
		fmt.Fprintf(w, "Refresh status            : ok\n")
	default:
		fmt.Fprintf(w, "Refresh status            : not fetched yet\n")
	}
	if st.BundleAgeSeconds != nil {
		fmt.Fprintf(w, "Bundle last refreshed     : %s\n", when(st.LastSuccess))
	} else {
		fmt.Fprintf(w, "Bundle last refreshed     : never\n")
	}
	if st.LastError != "" && st.ConsecutiveFailures > 0 {
		fmt.Fprintf(w, "Last error                : %s\n", st.LastError)
		fmt.Fprintf(w, "Last error at             : %s\n", when(st.LastErrorAt))
	}
	if st.RefreshIntervalSeconds > 0 {
		fmt.Fprintf(w, "Refresh interval          : %s\n", time.Duration(st.RefreshIntervalSeconds)*time.Second)
	}
	if !st.NextAttempt.IsZero() {
		d := st.NextAttempt.Sub(st.Now)
		if d < 0 {
			d = 0
		}
		fmt.Fprintf(w, "Next attempt              : %s (in %s)\n", st.NextAttempt.UTC().Format(time.RFC3339), ago(d))
	}
}

// ago renders a duration rounded to what matters.
func ago(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), int((d%(24*time.Hour)).Round(time.Hour)/time.Hour))
}

// configRelationship is the API form of a configuration relationship
// reported in a status.
func configRelationship(st fedstatus.Status) *types.FederationRelationship {
	fr := &types.FederationRelationship{TrustDomain: st.TrustDomain, BundleEndpointUrl: st.BundleEndpointURL}
	switch st.Profile {
	case profileHTTPSSPIFFE:
		fr.BundleEndpointProfile = &types.FederationRelationship_HttpsSpiffe{HttpsSpiffe: &types.HTTPSSPIFFEProfile{EndpointSpiffeId: st.EndpointSPIFFEID}}
	case profileHTTPSWeb:
		fr.BundleEndpointProfile = &types.FederationRelationship_HttpsWeb{HttpsWeb: &types.HTTPSWebProfile{}}
	}
	return fr
}

func statusFor(sts []fedstatus.Status, td string) *fedstatus.Status {
	for i := range sts {
		if sts[i].TrustDomain == td {
			return &sts[i]
		}
	}
	return nil
}

// printOverride notes a stored relationship the configuration overrides.
func printOverride(w io.Writer, st *fedstatus.Status) {
	if st != nil && st.Source == fedstatus.SourceConfig {
		fmt.Fprintf(w, "Note                      : the server configuration's federates_with %q overrides this relationship\n", st.TrustDomain)
	}
}

// ---- federation create / update ----

type federationCreateCmd struct{ relationshipFlags }

func (c *federationCreateCmd) flags(fs *flag.FlagSet) { c.register(fs) }

func (c *federationCreateCmd) run(ctx context.Context, s *session) error {
	rels, err := c.relationships(s.given)
	if err != nil {
		return err
	}
	client, err := s.trustDomainClient()
	if err != nil {
		return err
	}
	resp, err := client.BatchCreateFederationRelationship(ctx, &trustdomainv1.BatchCreateFederationRelationshipRequest{FederationRelationships: rels})
	if err != nil {
		return fmt.Errorf("request failed: %w", err)
	}
	return reportRelationshipBatch(s, "create", rels, resp, resp.GetResults(),
		func(r *trustdomainv1.BatchCreateFederationRelationshipResponse_Result, fr *types.FederationRelationship) {
			r.FederationRelationship = fr
		})
}

type federationUpdateCmd struct{ relationshipFlags }

func (c *federationUpdateCmd) flags(fs *flag.FlagSet) { c.register(fs) }

func (c *federationUpdateCmd) run(ctx context.Context, s *session) error {
	rels, err := c.relationships(s.given)
	if err != nil {
		return err
	}
	client, err := s.trustDomainClient()
	if err != nil {
		return err
	}
	resp, err := client.BatchUpdateFederationRelationship(ctx, &trustdomainv1.BatchUpdateFederationRelationshipRequest{FederationRelationships: rels})
	if err != nil {
		return fmt.Errorf("request failed: %w", err)
	}
	return reportRelationshipBatch(s, "update", rels, resp, resp.GetResults(),
		func(r *trustdomainv1.BatchUpdateFederationRelationshipResponse_Result, fr *types.FederationRelationship) {
			r.FederationRelationship = fr
		})
}

type relationshipResult interface {
	GetStatus() *types.Status
	GetFederationRelationship() *types.FederationRelationship
}

// reportRelationshipBatch prints a create/update batch's results as SPIRE's
// CLI: the relationships written on stdout, then each failure on stderr
// with the relationship the request gave.
func reportRelationshipBatch[R relationshipResult](s *session, verb string, rels []*types.FederationRelationship, resp proto.Message,
	results []R, set func(R, *types.FederationRelationship)) error {
	failed := 0
	for i, r := range results {
		if codes.Code(r.GetStatus().GetCode()) != codes.OK {
			failed++
			if i < len(rels) {
				set(r, rels[i])
			}
		}
	}
	if s.json() {
		if err := s.printJSON(resp); err != nil {
			return err
		}
	} else {
		for _, r := range results {
			if codes.Code(r.GetStatus().GetCode()) == codes.OK {
				fmt.Fprintln(s.stdout)
				printRelationship(s.stdout, r.GetFederationRelationship())
			}
		}
		for _, r := range results {
			code := codes.Code(r.GetStatus().GetCode())
			if code == codes.OK {
				continue
			}
			fmt.Fprintln(s.stderr)
			fmt.Fprintf(s.stderr, "Failed to %s the following federation relationship (code: %s, msg: %q):\n", verb, code, r.GetStatus().GetMessage())
			printRelationship(s.stderr, r.GetFederationRelationship())
		}
	}
	if failed > 0 {
		return fmt.Errorf("failed to %s one or more federation relationships", verb)
	}
	return nil
}

// ---- federation delete ----

type federationDeleteCmd struct{ id string }

func (c *federationDeleteCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.id, "id", "", "SPIFFE ID of the trust domain")
}

func (c *federationDeleteCmd) run(ctx context.Context, s *session) error {
	if c.id == "" {
		return errors.New("id is required")
	}
	client, err := s.trustDomainClient()
	if err != nil {
		return err
	}
	resp, err := client.BatchDeleteFederationRelationship(ctx, &trustdomainv1.BatchDeleteFederationRelationshipRequest{TrustDomains: []string{c.id}})
	if err != nil {
		return fmt.Errorf("failed to delete federation relationship: %w", err)
	}
	if len(resp.GetResults()) != 1 {
		return fmt.Errorf("server returned %d results for one relationship", len(resp.GetResults()))
	}
	if st := resp.GetResults()[0].GetStatus(); codes.Code(st.GetCode()) != codes.OK {
		return fmt.Errorf("failed to delete federation relationship %q: %s", resp.GetResults()[0].GetTrustDomain(), st.GetMessage())
	}
	if s.json() {
		return s.printJSON(resp)
	}
	s.printf("federation relationship deleted.\n")
	return nil
}

// ---- federation list ----

type federationListCmd struct{}

func (c *federationListCmd) flags(*flag.FlagSet) {}

func (c *federationListCmd) run(ctx context.Context, s *session) error {
	client, err := s.trustDomainClient()
	if err != nil {
		return err
	}
	resp := &trustdomainv1.ListFederationRelationshipsResponse{}
	req := &trustdomainv1.ListFederationRelationshipsRequest{PageSize: listPageSize}
	var sts []fedstatus.Status
	for {
		var trailer metadata.MD
		page, err := client.ListFederationRelationships(ctx, req, grpc.Trailer(&trailer))
		if err != nil {
			return fmt.Errorf("error listing federation relationship: %w", err)
		}
		sts = append(sts, fedstatus.FromMD(trailer)...)
		resp.FederationRelationships = append(resp.FederationRelationships, page.GetFederationRelationships()...)
		if page.GetNextPageToken() == "" || page.GetNextPageToken() == req.PageToken {
			break
		}
		req.PageToken = page.GetNextPageToken()
	}
	if s.json() {
		return s.printJSON(resp)
	}
	n := len(resp.FederationRelationships)
	s.printf("Found %d %s\n", n, plural(n, "federation relationship", "federation relationships"))
	stored := map[string]bool{}
	for _, fr := range resp.FederationRelationships {
		stored[fr.GetTrustDomain()] = true
		s.printf("\n")
		printRelationship(s.stdout, fr)
		st := statusFor(sts, fr.GetTrustDomain())
		printOverride(s.stdout, st)
		printStatus(s.stdout, st)
	}
	var fromConfig []fedstatus.Status
	for _, st := range sts {
		if st.Source == fedstatus.SourceConfig && !stored[st.TrustDomain] {
			fromConfig = append(fromConfig, st)
		}
	}
	if len(fromConfig) > 0 {
		s.printf("\nand %d from the server configuration (federates_with; not managed through this API):\n", len(fromConfig))
		for i := range fromConfig {
			s.printf("\n")
			printRelationship(s.stdout, configRelationship(fromConfig[i]))
			printStatus(s.stdout, &fromConfig[i])
		}
	}
	return nil
}

// ---- federation show ----

type federationShowCmd struct{ trustDomain string }

func (c *federationShowCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.trustDomain, "trustDomain", "", "The trust domain name of the federation relationship to show")
}

func (c *federationShowCmd) run(ctx context.Context, s *session) error {
	if c.trustDomain == "" {
		return errors.New("a trust domain name is required")
	}
	client, err := s.trustDomainClient()
	if err != nil {
		return err
	}
	var trailer metadata.MD
	fr, err := client.GetFederationRelationship(ctx, &trustdomainv1.GetFederationRelationshipRequest{TrustDomain: c.trustDomain}, grpc.Trailer(&trailer))
	sts := fedstatus.FromMD(trailer)
	if status.Code(err) == codes.NotFound && len(sts) == 1 && sts[0].Source == fedstatus.SourceConfig && !s.json() {
		// A relationship of the server configuration only (the API, as
		// SPIRE's, knows stored ones).
		s.printf("Found a federation relationship with trust domain %s in the server configuration (federates_with):\n\n", c.trustDomain)
		printRelationship(s.stdout, configRelationship(sts[0]))
		printStatus(s.stdout, &sts[0])
		return nil
	}
	if err != nil {
		return fmt.Errorf("error showing federation relationship: %w", err)
	}
	if s.json() {
		return s.printJSON(fr)
	}
	s.printf("Found a federation relationship with trust domain %s:\n\n", c.trustDomain)
	printRelationship(s.stdout, fr)
	var st *fedstatus.Status
	if len(sts) == 1 {
		st = &sts[0]
	}
	printOverride(s.stdout, st)
	printStatus(s.stdout, st)
	return nil
}

// ---- federation refresh ----

type federationRefreshCmd struct{ id string }

func (c *federationRefreshCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.id, "id", "", "SPIFFE ID of the trust domain")
}

func (c *federationRefreshCmd) run(ctx context.Context, s *session) error {
	if c.id == "" {
		return errors.New("id is required")
	}
	client, err := s.trustDomainClient()
	if err != nil {
		return err
	}
	_, err = client.RefreshBundle(ctx, &trustdomainv1.RefreshBundleRequest{TrustDomain: c.id})
	switch status.Code(err) {
	case codes.OK:
	case codes.NotFound:
		return fmt.Errorf("there is no federation relationship with trust domain %q", c.id)
	default:
		return fmt.Errorf("failed to refresh bundle: %w", err)
	}
	if s.json() {
		return s.printJSON(&types.Status{Code: int32(codes.OK), Message: "OK"})
	}
	s.printf("Bundle refreshed\n")
	return nil
}
