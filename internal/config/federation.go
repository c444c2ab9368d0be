package config

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// Bundle endpoint profiles (SPIFFE Federation), as SPIRE spells them in
// configuration, in the API and on the command line.
const (
	ProfileHTTPSSPIFFE = "https_spiffe"
	ProfileHTTPSWeb    = "https_web"
)

// SPIRE's bundle endpoint defaults.
const (
	DefaultBundleEndpointAddress     = "0.0.0.0"
	DefaultBundleEndpointRefreshHint = 5 * time.Minute
	DefaultServingCertFileSync       = time.Hour
)

// Federation is server.federation: the server's own SPIFFE bundle endpoint
// and the trust domains it fetches bundles from (SPIRE's "static"
// relationships, which take precedence over those created through the
// trustdomain API).
type Federation struct {
	// BundleEndpoint is nil when the server serves no bundle endpoint.
	BundleEndpoint *BundleEndpoint
	// FederatesWith are the federates_with blocks, in file order.
	FederatesWith []FederatesWith
}

// BundleEndpoint is federation.bundle_endpoint.
type BundleEndpoint struct {
	Address string // default DefaultBundleEndpointAddress
	// Port is required in a file; 0 (set in code) picks a free port.
	Port int
	// RefreshHint is the spiffe_refresh_hint served with the bundle
	// (default DefaultBundleEndpointRefreshHint).
	RefreshHint time.Duration
	// Profile is ProfileHTTPSSPIFFE (the server authenticates with its own
	// X509-SVID, spiffe://<trust domain>/spire/server) or ProfileHTTPSWeb
	// (ServingCertFile).
	Profile string
	// ProfileDefaulted is set when the block named no profile: SPIRE then
	// uses https_spiffe and warns, and so does Sigil.
	ProfileDefaulted bool
	// ServingCertFile is the https_web profile's certificate and key.
	ServingCertFile *ServingCertFile
}

// ServingCertFile is profile "https_web" { serving_cert_file { ... } }.
type ServingCertFile struct {
	CertFilePath string
	KeyFilePath  string
	// FileSyncInterval is how often the files are read again (default
	// DefaultServingCertFileSync).
	FileSyncInterval time.Duration
}

// FederatesWith is one federates_with "<trust domain>" block.
type FederatesWith struct {
	TrustDomain       spiffeid.TrustDomain
	BundleEndpointURL *url.URL
	// Profile is ProfileHTTPSSPIFFE or ProfileHTTPSWeb.
	Profile string
	// EndpointSPIFFEID is the SPIFFE ID the https_spiffe endpoint must
	// present (zero for https_web).
	EndpointSPIFFEID spiffeid.ID
	// Pos is where the block is, for messages.
	Pos Pos
}

// maxBundleEndpointURL bounds a bundle endpoint URL.
const maxBundleEndpointURL = 2048

// ParseBundleEndpointURL checks a bundle endpoint URL as SPIRE's API does:
// it parses, uses https, names a host and carries no user information.
func ParseBundleEndpointURL(s string) (*url.URL, error) {
	if len(s) > maxBundleEndpointURL {
		return nil, fmt.Errorf("bundle endpoint URL is longer than %d bytes", maxBundleEndpointURL)
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("failed to parse bundle endpoint URL %s: %w", clip.Quote(s), err)
	case u.Scheme != "https":
		return nil, errors.New("bundle endpoint URL must use the https scheme")
	case u.Host == "":
		return nil, errors.New("bundle endpoint URL must specify the host")
	case u.User != nil:
		return nil, errors.New("bundle endpoint URL must not contain user info")
	}
	return u, nil
}

// CheckEndpointSPIFFEID checks the endpoint SPIFFE ID of an https_spiffe
// relationship with td: it must be in td itself, so that td's own bundle
// (bootstrapped, then refreshed) authenticates its endpoint. SPIRE also
// accepts an ID of a third trust domain; Sigil refuses it.
func CheckEndpointSPIFFEID(td spiffeid.TrustDomain, id spiffeid.ID) error {
	if id.IsZero() {
		return errors.New("endpoint SPIFFE ID is required for the https_spiffe profile")
	}
	if !id.MemberOf(td) {
		return fmt.Errorf("endpoint SPIFFE ID %s is not in trust domain %s: the https_spiffe endpoint of a trust domain is authenticated by that trust domain's bundle", clip.Quote(id.String()), clip.Quote(td.Name()))
	}
	return nil
}

// federation decodes server.federation.
func (d *decoder) federation(parent *block, dst **Federation) {
	b := parent.sub("federation", "federation block")
	if b == nil {
		return
	}
	f := &Federation{}
	if eb := b.sub("bundle_endpoint", "bundle_endpoint block"); eb != nil {
		f.BundleEndpoint = d.bundleEndpoint(eb, b.kids["bundle_endpoint"])
	}
	if e := b.take("federates_with"); e != nil {
		if !e.obj {
			b.typeErr(e, `blocks federates_with "<trust domain>" { ... }`)
		} else {
			f.FederatesWith = d.federatesWith(e)
		}
	}
	b.done()
	*dst = f
}

func (d *decoder) bundleEndpoint(b *block, at *entry) *BundleEndpoint {
	be := &BundleEndpoint{Address: DefaultBundleEndpointAddress, RefreshHint: DefaultBundleEndpointRefreshHint}
	b.str("address", &be.Address)
	if !b.port("port", &be.Port) && b.kids["port"] == nil {
		d.errorf(at.pos, "federation.bundle_endpoint.port must be configured")
	}
	if b.duration("refresh_hint", &be.RefreshHint) && be.RefreshHint <= 0 {
		d.errorf(b.kids["refresh_hint"].pos, "invalid value for %q in %s: must be positive", "refresh_hint", b.desc)
	}
	if e := b.take("acme"); e != nil {
		d.errorf(e.pos, "federation.bundle_endpoint.acme: ACME is not supported by Sigil; use profile \"https_web\" { serving_cert_file { ... } }")
	}
	pe := b.take("profile")
	switch {
	case pe == nil:
		be.Profile, be.ProfileDefaulted = ProfileHTTPSSPIFFE, true
	case !pe.obj || len(pe.kids) != 1 || !pe.kids[0].obj:
		d.errorf(pe.pos, `federation.bundle_endpoint: exactly one profile "https_spiffe" {} or profile "https_web" { ... } is expected`)
	default:
		p := pe.kids[0]
		pb := d.newBlock(fmt.Sprintf("profile %q block", p.name), p.kids)
		switch p.name {
		case ProfileHTTPSSPIFFE:
			be.Profile = ProfileHTTPSSPIFFE
		case ProfileHTTPSWeb:
			be.Profile = ProfileHTTPSWeb
			if e := pb.take("acme"); e != nil {
				d.errorf(e.pos, "federation.bundle_endpoint: ACME is not supported by Sigil; use serving_cert_file")
			}
			if sb := pb.sub("serving_cert_file", "serving_cert_file block"); sb != nil {
				scf := &ServingCertFile{FileSyncInterval: DefaultServingCertFileSync}
				sb.str("cert_file_path", &scf.CertFilePath)
				sb.str("key_file_path", &scf.KeyFilePath)
				if sb.duration("file_sync_interval", &scf.FileSyncInterval) && scf.FileSyncInterval <= 0 {
					d.errorf(sb.kids["file_sync_interval"].pos, "invalid value for %q in %s: must be positive", "file_sync_interval", sb.desc)
				}
				if scf.CertFilePath == "" || scf.KeyFilePath == "" {
					d.errorf(pb.kids["serving_cert_file"].pos, "federation.bundle_endpoint: serving_cert_file needs cert_file_path and key_file_path")
				}
				sb.done()
				be.ServingCertFile = scf
			} else if pb.kids["acme"] == nil {
				d.errorf(p.pos, `federation.bundle_endpoint: profile "https_web" needs serving_cert_file { cert_file_path, key_file_path }`)
			}
		default:
			d.errorf(p.pos, `federation.bundle_endpoint: unknown profile %q; the profiles are "https_spiffe" and "https_web"`, p.name)
		}
		pb.done()
	}
	b.done()
	return be
}

// federatesWith decodes the federates_with blocks (e's children, one per
// trust domain).
func (d *decoder) federatesWith(e *entry) []FederatesWith {
	var out []FederatesWith
	seen := map[spiffeid.TrustDomain]int{}
	for _, te := range e.kids {
		desc := fmt.Sprintf("federates_with %q block", te.name)
		if !te.obj {
			d.errorf(te.pos, "invalid federates_with %q: expected a block", te.name)
			continue
		}
		td, err := parseTrustDomain(te.name)
		if err != nil {
			d.errorf(te.pos, "invalid trust domain in federates_with %q: %v", te.name, err)
			continue
		}
		if line, dup := seen[td]; dup {
			d.errorf(te.pos, "federates_with %q is declared twice (first on line %d)", te.name, line)
			continue
		}
		seen[td] = te.pos.Line
		fw := FederatesWith{TrustDomain: td, Pos: Pos{File: d.file, Line: te.pos.Line}}
		b := d.newBlock(desc, te.kids)
		var raw string
		if b.str("bundle_endpoint_url", &raw) {
			u, err := ParseBundleEndpointURL(raw)
			if err != nil {
				d.errorf(b.kids["bundle_endpoint_url"].pos, "federates_with %q: %v", te.name, err)
			}
			fw.BundleEndpointURL = u
		} else if b.kids["bundle_endpoint_url"] == nil {
			d.errorf(te.pos, "federates_with %q: bundle_endpoint_url must be configured", te.name)
		}
		pe := b.take("bundle_endpoint_profile")
		switch {
		case pe == nil:
			d.errorf(te.pos, "federates_with %q: missing bundle_endpoint_profile \"https_spiffe\" { endpoint_spiffe_id = ... } or \"https_web\" {}", te.name)
		case !pe.obj || len(pe.kids) != 1 || !pe.kids[0].obj:
			d.errorf(pe.pos, "federates_with %q: exactly one bundle endpoint profile is expected", te.name)
		default:
			p := pe.kids[0]
			pb := d.newBlock(fmt.Sprintf("bundle_endpoint_profile %q block", p.name), p.kids)
			switch p.name {
			case ProfileHTTPSSPIFFE:
				fw.Profile = ProfileHTTPSSPIFFE
				var id string
				if !pb.str("endpoint_spiffe_id", &id) {
					if pb.kids["endpoint_spiffe_id"] == nil {
						d.errorf(p.pos, "federates_with %q: profile https_spiffe needs endpoint_spiffe_id", te.name)
					}
					break
				}
				at := pb.kids["endpoint_spiffe_id"].pos
				sid, err := spiffeid.FromString(id)
				if err != nil {
					d.errorf(at, "federates_with %q: invalid endpoint_spiffe_id %q: %v", te.name, id, err)
					break
				}
				if err := CheckEndpointSPIFFEID(td, sid); err != nil {
					d.errorf(at, "federates_with %q: %v", te.name, err)
					break
				}
				fw.EndpointSPIFFEID = sid
			case ProfileHTTPSWeb:
				fw.Profile = ProfileHTTPSWeb
			default:
				d.errorf(p.pos, `federates_with %q: unknown bundle endpoint profile %q; the profiles are "https_spiffe" and "https_web"`, te.name, p.name)
			}
			pb.done()
		}
		b.done()
		out = append(out, fw)
	}
	return out
}

// validate checks what depends on the rest of the configuration (the
// server's own trust domain may come from -trustDomain).
func (f *Federation) validate(own spiffeid.TrustDomain) error {
	if f == nil {
		return nil
	}
	var errs []error
	if be := f.BundleEndpoint; be != nil {
		if be.Address == "" {
			errs = append(errs, errors.New("federation.bundle_endpoint.address must not be empty"))
		}
		if err := validatePort("federation.bundle_endpoint.port", be.Port, true); err != nil {
			errs = append(errs, err)
		}
		if be.RefreshHint <= 0 {
			errs = append(errs, fmt.Errorf("federation.bundle_endpoint.refresh_hint must be positive, got %s", be.RefreshHint))
		}
		switch be.Profile {
		case ProfileHTTPSSPIFFE:
		case ProfileHTTPSWeb:
			if be.ServingCertFile == nil {
				errs = append(errs, errors.New(`federation.bundle_endpoint: profile "https_web" needs serving_cert_file`))
			}
		default:
			errs = append(errs, fmt.Errorf("federation.bundle_endpoint: unknown profile %q", be.Profile))
		}
	}
	for _, fw := range f.FederatesWith {
		if !own.IsZero() && fw.TrustDomain == own {
			errs = append(errs, fmt.Errorf("%s: federates_with %q is the server's own trust domain", fw.Pos, fw.TrustDomain.Name()))
		}
	}
	return errors.Join(errs...)
}

// String describes a relationship for logs.
func (fw FederatesWith) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s via %s (%s", fw.TrustDomain.Name(), fw.BundleEndpointURL, fw.Profile)
	if !fw.EndpointSPIFFEID.IsZero() {
		fmt.Fprintf(&b, ", %s", fw.EndpointSPIFFEID)
	}
	b.WriteString(")")
	return b.String()
}
