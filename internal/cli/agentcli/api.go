package agentcli

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sigil-spiffe/sigil/internal/cli/cliutil"
)

// ---- api fetch x509 ----

type fetchX509Cmd struct {
	write  string
	silent bool
}

func (c *fetchX509Cmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.write, "write", "", "Write SVID data to the specified path (optional; only available for pretty output format)")
	fs.BoolVar(&c.silent, "silent", false, "Suppress stdout")
}

func (c *fetchX509Cmd) run(ctx context.Context, s *session) error {
	if c.write != "" && s.json() {
		return errors.New("-write is only available with -output pretty")
	}
	client, err := s.workload(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	start := time.Now()
	x509ctx, err := client.FetchX509Context(ctx)
	elapsed := time.Since(start)
	if err != nil {
		return fmt.Errorf("fetching X509-SVIDs: %w", err)
	}
	view, err := newX509View(x509ctx)
	if err != nil {
		return err
	}
	if s.json() {
		resp, err := view.response()
		if err != nil {
			return err
		}
		return s.printJSON(resp)
	}
	if !c.silent {
		printX509View(s.stdout, view, elapsed)
	}
	if c.write != "" {
		return writeX509View(s.stdout, c.write, view)
	}
	return nil
}

// x509SVIDView is one SVID with the bundles that go with it, as the SPIRE
// CLI shows them: the bundle of its own trust domain and the federated ones.
type x509SVIDView struct {
	svid      *x509svid.SVID
	bundle    []*x509.Certificate
	federated map[string][]*x509.Certificate // by "spiffe://td"
}

type x509View []x509SVIDView

// newX509View splits the X.509 context into per-SVID views and verifies each
// SVID against its trust domain's bundle, so that a broken response is
// reported instead of written to disk.
func newX509View(c *workloadapi.X509Context) (x509View, error) {
	if c == nil || len(c.SVIDs) == 0 {
		return nil, errors.New("workload response contains no svids")
	}
	var view x509View
	for _, svid := range c.SVIDs {
		td := svid.ID.TrustDomain()
		own, err := c.Bundles.GetX509BundleForTrustDomain(td)
		if err != nil {
			return nil, fmt.Errorf("no trust bundle for %q in the Workload API response: %w", td, err)
		}
		if _, _, err := x509svid.Verify(svid.Certificates, x509bundle.NewSet(own)); err != nil {
			return nil, fmt.Errorf("%q SVID failed verification against bundle: %w", svid.ID, err)
		}
		v := x509SVIDView{svid: svid, bundle: own.X509Authorities(), federated: map[string][]*x509.Certificate{}}
		for _, b := range c.Bundles.Bundles() {
			if b.TrustDomain() != td {
				v.federated[b.TrustDomain().IDString()] = b.X509Authorities()
			}
		}
		view = append(view, v)
	}
	return view, nil
}

// response rebuilds the Workload API message for -output json.
func (v x509View) response() (*workload.X509SVIDResponse, error) {
	resp := &workload.X509SVIDResponse{FederatedBundles: map[string][]byte{}}
	for _, sv := range v {
		certs, key, err := sv.svid.MarshalRaw()
		if err != nil {
			return nil, fmt.Errorf("encoding SVID %s: %w", sv.svid.ID, err)
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    sv.svid.ID.String(),
			X509Svid:    certs,
			X509SvidKey: key,
			Bundle:      concatDER(sv.bundle),
			Hint:        sv.svid.Hint,
		})
		for td, certs := range sv.federated {
			resp.FederatedBundles[td] = concatDER(certs)
		}
	}
	return resp, nil
}

func concatDER(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// printX509View prints SVIDs in the layout of "spire-agent api fetch".
func printX509View(w io.Writer, v x509View, elapsed time.Duration) {
	n := len(v)
	word := "svids"
	if n == 1 {
		word = "svid"
	}
	fmt.Fprintf(w, "Received %d %s after %s\n", n, word, elapsed)
	for _, sv := range v {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "SPIFFE ID:\t\t%s\n", sv.svid.ID)
		if sv.svid.Hint != "" {
			fmt.Fprintf(w, "Hint:\t\t\t%s\n", sv.svid.Hint)
		}
		leaf := sv.svid.Certificates[0]
		fmt.Fprintf(w, "SVID Valid After:\t%v\n", leaf.NotBefore)
		fmt.Fprintf(w, "SVID Valid Until:\t%v\n", leaf.NotAfter)
		for i, c := range sv.svid.Certificates[1:] {
			fmt.Fprintf(w, "Intermediate #%d Valid After:\t%v\n", i+1, c.NotBefore)
			fmt.Fprintf(w, "Intermediate #%d Valid Until:\t%v\n", i+1, c.NotAfter)
		}
		for i, c := range sv.bundle {
			fmt.Fprintf(w, "CA #%d Valid After:\t%v\n", i+1, c.NotBefore)
			fmt.Fprintf(w, "CA #%d Valid Until:\t%v\n", i+1, c.NotAfter)
		}
		for _, td := range sortedKeys(sv.federated) {
			for i, c := range sv.federated[td] {
				fmt.Fprintf(w, "[%s] CA #%d Valid After:\t%v\n", td, i+1, c.NotBefore)
				fmt.Fprintf(w, "[%s] CA #%d Valid Until:\t%v\n", td, i+1, c.NotAfter)
			}
		}
	}
	fmt.Fprintln(w)
}

// writeX509View writes svid.N.pem, svid.N.key (0600), bundle.N.pem and
// federated_bundle.N.M.pem (trust domains in sorted order) into dir.
func writeX509View(w io.Writer, dir string, v x509View) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating -write directory: %w", err)
	}
	for i, sv := range v {
		certPEM, keyPEM, err := sv.svid.Marshal()
		if err != nil {
			return fmt.Errorf("encoding SVID %s: %w", sv.svid.ID, err)
		}
		svidPath := filepath.Join(dir, fmt.Sprintf("svid.%d.pem", i))
		keyPath := filepath.Join(dir, fmt.Sprintf("svid.%d.key", i))
		bundlePath := filepath.Join(dir, fmt.Sprintf("bundle.%d.pem", i))

		fmt.Fprintf(w, "Writing SVID #%d to file %s.\n", i, svidPath)
		if err := cliutil.WriteFile(svidPath, certPEM, 0o644); err != nil {
			return fmt.Errorf("writing SVID: %w", err)
		}
		fmt.Fprintf(w, "Writing key #%d to file %s.\n", i, keyPath)
		if err := cliutil.WriteFile(keyPath, keyPEM, 0o600); err != nil {
			return fmt.Errorf("writing key: %w", err)
		}
		fmt.Fprintf(w, "Writing bundle #%d to file %s.\n", i, bundlePath)
		if err := cliutil.WriteFile(bundlePath, encodeCerts(sv.bundle), 0o644); err != nil {
			return fmt.Errorf("writing bundle: %w", err)
		}
		for j, td := range sortedKeys(sv.federated) {
			p := filepath.Join(dir, fmt.Sprintf("federated_bundle.%d.%d.pem", i, j))
			fmt.Fprintf(w, "Writing federated bundle #%d for trust domain %s to file %s.\n", j, td, p)
			if err := cliutil.WriteFile(p, encodeCerts(sv.federated[td]), 0o644); err != nil {
				return fmt.Errorf("writing federated bundle: %w", err)
			}
		}
	}
	return nil
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ---- api fetch jwt ----

type fetchJWTCmd struct {
	audience commaFlag
	spiffeID string
}

func (c *fetchJWTCmd) flags(fs *flag.FlagSet) {
	fs.Var(&c.audience, "audience", "comma separated list of audience values (can be repeated)")
	fs.StringVar(&c.spiffeID, "spiffeID", "", "SPIFFE ID subject (optional)")
}

func (c *fetchJWTCmd) run(ctx context.Context, s *session) error {
	if len(c.audience) == 0 {
		return errors.New("audience must be specified: use -audience")
	}
	params := jwtsvid.Params{Audience: c.audience[0], ExtraAudiences: c.audience[1:]}
	if c.spiffeID != "" {
		id, err := spiffeid.FromString(c.spiffeID)
		if err != nil {
			return fmt.Errorf("invalid -spiffeID %q: %w", c.spiffeID, err)
		}
		params.Subject = id
	}
	client, err := s.workload(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return fmt.Errorf("fetching JWT bundles: %w", err)
	}
	svids, err := client.FetchJWTSVIDs(ctx, params)
	if err != nil {
		return fmt.Errorf("fetching JWT-SVIDs: %w", err)
	}
	if s.json() {
		svidResp, bundlesResp, err := jwtResponses(svids, bundles)
		if err != nil {
			return err
		}
		// Like SPIRE: the two Workload API responses, as a JSON array.
		a, err := cliutil.MarshalJSON(svidResp)
		if err != nil {
			return err
		}
		b, err := cliutil.MarshalJSON(bundlesResp)
		if err != nil {
			return err
		}
		s.printf("[%s,%s]\n", a, b)
		return nil
	}
	return printJWT(s.stdout, svids, bundles)
}

func jwtResponses(svids []*jwtsvid.SVID, bundles *jwtbundle.Set) (*workload.JWTSVIDResponse, *workload.JWTBundlesResponse, error) {
	sr := &workload.JWTSVIDResponse{}
	for _, sv := range svids {
		sr.Svids = append(sr.Svids, &workload.JWTSVID{SpiffeId: sv.ID.String(), Svid: sv.Marshal(), Hint: sv.Hint})
	}
	br := &workload.JWTBundlesResponse{Bundles: map[string][]byte{}}
	for _, b := range bundles.Bundles() {
		doc, err := b.Marshal()
		if err != nil {
			return nil, nil, fmt.Errorf("encoding JWT bundle of %s: %w", b.TrustDomain(), err)
		}
		br.Bundles[b.TrustDomain().IDString()] = doc
	}
	return sr, br, nil
}

// printJWT prints tokens, then JWKS bundles by trust domain, like SPIRE.
func printJWT(w io.Writer, svids []*jwtsvid.SVID, bundles *jwtbundle.Set) error {
	for _, sv := range svids {
		fmt.Fprintf(w, "token(%s):\n\t%s\n", sv.ID, sv.Marshal())
	}
	all := bundles.Bundles()
	sort.Slice(all, func(i, j int) bool { return all[i].TrustDomain().Name() < all[j].TrustDomain().Name() })
	for _, b := range all {
		doc, err := b.Marshal()
		if err != nil {
			return fmt.Errorf("encoding JWT bundle of %s: %w", b.TrustDomain(), err)
		}
		fmt.Fprintf(w, "bundle(%s):\n\t%s\n", b.TrustDomain().IDString(), doc)
	}
	return nil
}

// ---- api validate jwt ----

type validateJWTCmd struct {
	audience string
	svid     string
}

func (c *validateJWTCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.audience, "audience", "", "expected audience value")
	fs.StringVar(&c.svid, "svid", "", "JWT SVID")
}

func (c *validateJWTCmd) run(ctx context.Context, s *session) error {
	if c.audience == "" {
		return errors.New("audience must be specified: use -audience")
	}
	if c.svid == "" {
		return errors.New("svid must be specified: use -svid <token>")
	}
	client, err := s.workload(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	sv, err := client.ValidateJWTSVID(ctx, c.svid, c.audience)
	if err != nil {
		return fmt.Errorf("SVID is not valid: %w", err)
	}
	claims, err := json.Marshal(sv.Claims)
	if err != nil {
		return fmt.Errorf("encoding claims: %w", err)
	}
	if s.json() {
		st, err := structpb.NewStruct(sv.Claims)
		if err != nil {
			return fmt.Errorf("encoding claims: %w", err)
		}
		return s.printJSON(&workload.ValidateJWTSVIDResponse{SpiffeId: sv.ID.String(), Claims: st})
	}
	s.printf("SVID is valid.\n")
	s.printf("SPIFFE ID : %s\n", sv.ID)
	s.printf("Claims    : %s\n", claims)
	return nil
}

// ---- api watch ----

type watchCmd struct{}

func (c *watchCmd) flags(*flag.FlagSet) {}

type watcher struct {
	ctx  context.Context // the watch's: once it ends, errors are the stop itself
	s    *session
	last time.Time
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	view, err := newX509View(c)
	if err != nil {
		w.s.errorf("%v\n", err)
	} else {
		printX509View(w.s.stdout, view, time.Since(w.last))
	}
	w.last = time.Now()
}

func (w *watcher) OnX509ContextWatchError(err error) {
	// Ctrl-C (or SIGTERM) cancels the stream: a normal stop, said nothing
	// about (the error is then a gRPC Canceled status, not context.Canceled).
	if w.ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return
	}
	w.s.errorf("Workload API error: %s\n", w.s.describe(err))
}

// run prints every X.509 update until interrupted (SIGINT/SIGTERM) or ctx
// ends; both are a normal exit.
func (c *watchCmd) run(ctx context.Context, s *session) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	client, err := s.workload(ctx)
	if err != nil {
		return err
	}
	err = client.WatchX509Context(ctx, &watcher{ctx: ctx, s: s, last: time.Now()})
	if ctx.Err() == nil {
		return fmt.Errorf("watching the Workload API: %w", err)
	}
	return nil
}
