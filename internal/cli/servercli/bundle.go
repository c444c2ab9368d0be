package servercli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
)

const (
	formatPEM    = "pem"
	formatSPIFFE = "spiffe"
)

func checkFormat(f string) error {
	if f != formatPEM && f != formatSPIFFE {
		return fmt.Errorf("unknown -format %q: use pem or spiffe", f)
	}
	return nil
}

// writeBundle prints b in the requested format: the X.509 authorities as PEM
// blocks, or the SPIFFE bundle (JWKS) document.
func writeBundle(w io.Writer, b *types.Bundle, format string) error {
	switch format {
	case formatPEM:
		for i, a := range b.GetX509Authorities() {
			if _, err := x509.ParseCertificate(a.GetAsn1()); err != nil {
				return fmt.Errorf("X.509 authority #%d of %s is not a valid certificate: %w", i+1, b.GetTrustDomain(), err)
			}
			if err := pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: a.GetAsn1()}); err != nil {
				return err
			}
		}
		return nil
	case formatSPIFFE:
		sb, err := toSPIFFEBundle(b)
		if err != nil {
			return err
		}
		doc, err := sb.Marshal()
		if err != nil {
			return fmt.Errorf("encoding SPIFFE bundle for %s: %w", b.GetTrustDomain(), err)
		}
		var out bytes.Buffer
		if err := json.Indent(&out, doc, "", "    "); err != nil {
			return fmt.Errorf("formatting SPIFFE bundle: %w", err)
		}
		out.WriteByte('\n')
		_, err = w.Write(out.Bytes())
		return err
	}
	return checkFormat(format)
}

func toSPIFFEBundle(b *types.Bundle) (*spiffebundle.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(b.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("server returned a bundle with an invalid trust domain %q: %w", b.GetTrustDomain(), err)
	}
	sb := spiffebundle.New(td)
	for i, a := range b.GetX509Authorities() {
		cert, err := x509.ParseCertificate(a.GetAsn1())
		if err != nil {
			return nil, fmt.Errorf("X.509 authority #%d of %s is not a valid certificate: %w", i+1, td, err)
		}
		sb.AddX509Authority(cert)
	}
	for _, k := range b.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("JWT authority %q of %s has an invalid public key: %w", k.GetKeyId(), td, err)
		}
		if err := sb.AddJWTAuthority(k.GetKeyId(), pub); err != nil {
			return nil, fmt.Errorf("JWT authority %q of %s: %w", k.GetKeyId(), td, err)
		}
	}
	if b.GetRefreshHint() > 0 {
		sb.SetRefreshHint(time.Duration(b.GetRefreshHint()) * time.Second)
	}
	// As SPIRE's CLI, a bundle without a sequence number (0, e.g. a
	// federated bundle set from PEM on spire-server) prints none.
	if b.GetSequenceNumber() > 0 {
		sb.SetSequenceNumber(b.GetSequenceNumber())
	}
	return sb, nil
}

// fromSPIFFEBundle converts a parsed bundle into its API form.
func fromSPIFFEBundle(sb *spiffebundle.Bundle) (*types.Bundle, error) {
	b := &types.Bundle{TrustDomain: sb.TrustDomain().Name()}
	for _, c := range sb.X509Authorities() {
		b.X509Authorities = append(b.X509Authorities, &types.X509Certificate{Asn1: c.Raw})
	}
	for kid, pub := range sb.JWTAuthorities() {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, fmt.Errorf("JWT authority %q: %w", kid, err)
		}
		b.JwtAuthorities = append(b.JwtAuthorities, &types.JWTKey{KeyId: kid, PublicKey: der})
	}
	if hint, ok := sb.RefreshHint(); ok {
		b.RefreshHint = int64(hint / time.Second)
	}
	if seq, ok := sb.SequenceNumber(); ok {
		b.SequenceNumber = seq
	}
	return b, nil
}

// parseBundleData reads a bundle for td in the given format.
func parseBundleData(td spiffeid.TrustDomain, data []byte, format string) (*types.Bundle, error) {
	switch format {
	case formatPEM:
		b := &types.Bundle{TrustDomain: td.Name()}
		rest := data
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("unexpected PEM block %q: the pem format holds only CERTIFICATE blocks", block.Type)
			}
			if _, err := x509.ParseCertificate(block.Bytes); err != nil {
				return nil, fmt.Errorf("invalid certificate in bundle: %w", err)
			}
			b.X509Authorities = append(b.X509Authorities, &types.X509Certificate{Asn1: block.Bytes})
		}
		if len(b.X509Authorities) == 0 {
			return nil, errors.New("no PEM certificates found in the bundle data (use -format spiffe for a SPIFFE bundle document)")
		}
		return b, nil
	case formatSPIFFE:
		sb, err := spiffebundle.Parse(td, data)
		if err != nil {
			return nil, fmt.Errorf("parsing SPIFFE bundle: %w", err)
		}
		return fromSPIFFEBundle(sb)
	}
	return nil, checkFormat(format)
}

// ---- bundle show ----

type bundleShowCmd struct{ format string }

func (c *bundleShowCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.format, "format", formatPEM, "The format to show the bundle (only pretty output format supports this flag). Either \"pem\" or \"spiffe\"")
}

func (c *bundleShowCmd) run(ctx context.Context, s *session) error {
	if err := checkFormat(c.format); err != nil {
		return err
	}
	client, err := s.bundleClient()
	if err != nil {
		return err
	}
	b, err := client.GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return fmt.Errorf("getting the server bundle: %w", err)
	}
	if s.json() {
		return s.printJSON(b)
	}
	return writeBundle(s.stdout, b, c.format)
}

// ---- bundle list ----

type bundleListCmd struct {
	id     string
	format string
}

func (c *bundleListCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.id, "id", "", "SPIFFE ID of the trust domain (optional; all federated bundles if absent)")
	fs.StringVar(&c.format, "format", formatPEM, "The format to list federated bundles (only pretty output format supports this flag). Either \"pem\" or \"spiffe\"")
}

func (c *bundleListCmd) run(ctx context.Context, s *session) error {
	if err := checkFormat(c.format); err != nil {
		return err
	}
	var td spiffeid.TrustDomain
	if c.id != "" {
		var err error
		if td, err = parseTrustDomain("-id", c.id); err != nil {
			return err
		}
	}
	client, err := s.bundleClient()
	if err != nil {
		return err
	}
	if c.id != "" {
		b, err := client.GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: td.Name()})
		if err != nil {
			return fmt.Errorf("getting the federated bundle of %s: %w", td, err)
		}
		if s.json() {
			return s.printJSON(b)
		}
		return writeBundle(s.stdout, b, c.format)
	}
	resp := &bundlev1.ListFederatedBundlesResponse{}
	req := &bundlev1.ListFederatedBundlesRequest{PageSize: listPageSize}
	for {
		page, err := client.ListFederatedBundles(ctx, req)
		if err != nil {
			return fmt.Errorf("listing federated bundles: %w", err)
		}
		resp.Bundles = append(resp.Bundles, page.GetBundles()...)
		if page.GetNextPageToken() == "" || page.GetNextPageToken() == req.PageToken {
			break
		}
		req.PageToken = page.GetNextPageToken()
	}
	if s.json() {
		return s.printJSON(resp)
	}
	return printBundleList(s.stdout, resp.Bundles, c.format)
}

// printBundleList prints each bundle under a banner naming its trust domain.
func printBundleList(w io.Writer, bundles []*types.Bundle, format string) error {
	for i, b := range bundles {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "****************************************\n* %s\n****************************************\n", "spiffe://"+b.GetTrustDomain())
		if err := writeBundle(w, b, format); err != nil {
			return err
		}
	}
	return nil
}

// ---- bundle set ----

type bundleSetCmd struct {
	id     string
	path   string
	format string
}

func (c *bundleSetCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.id, "id", "", "SPIFFE ID of the trust domain")
	fs.StringVar(&c.path, "path", "", "Path to the bundle data (stdin if absent)")
	fs.StringVar(&c.format, "format", formatPEM, "The format of the bundle data. Either \"pem\" or \"spiffe\"")
}

func (c *bundleSetCmd) run(ctx context.Context, s *session) error {
	if c.id == "" {
		return errors.New("id is required: use -id spiffe://<trust domain> for the federated trust domain")
	}
	td, err := parseTrustDomain("-id", c.id)
	if err != nil {
		return err
	}
	if err := checkFormat(c.format); err != nil {
		return err
	}
	var data []byte
	if c.path == "" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(c.path)
	}
	if err != nil {
		return fmt.Errorf("reading bundle data: %w", err)
	}
	b, err := parseBundleData(td, data, c.format)
	if err != nil {
		return err
	}
	client, err := s.bundleClient()
	if err != nil {
		return err
	}
	resp, err := client.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: []*types.Bundle{b}})
	if err != nil {
		return fmt.Errorf("setting the federated bundle of %s: %w", td, err)
	}
	if len(resp.GetResults()) != 1 {
		return fmt.Errorf("server returned %d results for one bundle", len(resp.GetResults()))
	}
	if st := resp.GetResults()[0].GetStatus(); codes.Code(st.GetCode()) != codes.OK {
		return fmt.Errorf("failed to set federated bundle (code: %s, msg: %q)", codes.Code(st.GetCode()), st.GetMessage())
	}
	if s.json() {
		return s.printJSON(resp)
	}
	s.printf("bundle set.\n")
	return nil
}

// ---- bundle delete ----

type bundleDeleteCmd struct {
	id   string
	mode string
}

func (c *bundleDeleteCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.id, "id", "", "SPIFFE ID of the trust domain")
	fs.StringVar(&c.mode, "mode", "restrict", "Deletion mode: one of restrict, delete, or dissociate")
}

func (c *bundleDeleteCmd) run(ctx context.Context, s *session) error {
	if c.id == "" {
		return errors.New("id is required: use -id spiffe://<trust domain> for the federated trust domain")
	}
	td, err := parseTrustDomain("-id", c.id)
	if err != nil {
		return err
	}
	var mode bundlev1.BatchDeleteFederatedBundleRequest_Mode
	switch c.mode {
	case "restrict":
		mode = bundlev1.BatchDeleteFederatedBundleRequest_RESTRICT
	case "delete":
		mode = bundlev1.BatchDeleteFederatedBundleRequest_DELETE
	case "dissociate":
		mode = bundlev1.BatchDeleteFederatedBundleRequest_DISSOCIATE
	default:
		return fmt.Errorf("unsupported -mode %q: use restrict, delete or dissociate", c.mode)
	}
	client, err := s.bundleClient()
	if err != nil {
		return err
	}
	// The trust domain goes as given (both forms are valid, and servers
	// echo it in the result), as SPIRE's CLI sends it.
	resp, err := client.BatchDeleteFederatedBundle(ctx, &bundlev1.BatchDeleteFederatedBundleRequest{
		TrustDomains: []string{c.id},
		Mode:         mode,
	})
	if err != nil {
		return fmt.Errorf("deleting the federated bundle of %s: %w", td, err)
	}
	if len(resp.GetResults()) != 1 {
		return fmt.Errorf("server returned %d results for one bundle", len(resp.GetResults()))
	}
	if st := resp.GetResults()[0].GetStatus(); codes.Code(st.GetCode()) != codes.OK {
		return fmt.Errorf("failed to delete federated bundle %q (code: %s, msg: %q)", td.Name(), codes.Code(st.GetCode()), st.GetMessage())
	}
	if s.json() {
		return s.printJSON(resp)
	}
	s.printf("bundle deleted.\n")
	return nil
}

// ---- bundle count ----

// bundleCountCmd counts the bundles the server holds, its own included,
// as spire-server's "bundle count".
type bundleCountCmd struct{}

func (*bundleCountCmd) flags(*flag.FlagSet) {}

func (*bundleCountCmd) run(ctx context.Context, s *session) error {
	client, err := s.bundleClient()
	if err != nil {
		return err
	}
	resp, err := client.CountBundles(ctx, &bundlev1.CountBundlesRequest{})
	if err != nil {
		return fmt.Errorf("counting bundles: %w", err)
	}
	if s.json() {
		return s.printJSON(resp)
	}
	n := int(resp.GetCount())
	s.printf("%d %s\n", n, plural(n, "bundle", "bundles"))
	return nil
}
