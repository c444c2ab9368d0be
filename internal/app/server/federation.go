package server

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
	"github.com/sigil-spiffe/sigil/internal/server/federation"
)

// checkFederation is preflight's part for the federation section: the
// bundle endpoint's address resolves and its https_web certificate files
// load; a bundle endpoint without a profile is warned about (as SPIRE).
func checkFederation(cfg *config.Server, log *slog.Logger, warn bool) (*net.TCPAddr, error) {
	if cfg.Federation == nil || cfg.Federation.BundleEndpoint == nil {
		return nil, nil
	}
	be := cfg.Federation.BundleEndpoint
	addr, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(be.Address, strconv.Itoa(be.Port)))
	if err != nil {
		return nil, fmt.Errorf("federation.bundle_endpoint address: %w", err)
	}
	if be.Profile == config.ProfileHTTPSWeb && be.ServingCertFile != nil {
		if err := federation.CheckServingCert(be.ServingCertFile.CertFilePath, be.ServingCertFile.KeyFilePath); err != nil {
			return nil, err
		}
	}
	if warn {
		warnFederation(cfg, log)
	}
	return addr, nil
}

// warnFederation logs what SPIRE warns about in a federation section (run
// logs it at start, validate prints it).
func warnFederation(cfg *config.Server, log *slog.Logger) {
	if cfg.Federation == nil || cfg.Federation.BundleEndpoint == nil {
		return
	}
	be := cfg.Federation.BundleEndpoint
	if be.ProfileDefaulted {
		log.Warn("Bundle endpoint is configured but has no profile set, using https_spiffe as default; please configure a profile explicitly")
	}
	if be.RefreshHint < federation.MinRefreshInterval {
		log.Warn("Bundle endpoint refresh hint set below what peers honor: federated servers will not refresh more often than the minimum",
			"refresh_hint", be.RefreshHint, "minimum", federation.MinRefreshInterval)
	}
	if be.RefreshHint >= 24*time.Hour {
		log.Warn("Bundle endpoint refresh hint set to a high value: to cover unscheduled trust bundle updates a smaller value such as 5m is recommended",
			"refresh_hint", be.RefreshHint)
	}
}

// staticRelationships are the configuration's federates_with blocks.
func staticRelationships(cfg *config.Server) []federation.Relationship {
	if cfg.Federation == nil {
		return nil
	}
	out := make([]federation.Relationship, 0, len(cfg.Federation.FederatesWith))
	for _, fw := range cfg.Federation.FederatesWith {
		r := federation.Relationship{TrustDomain: fw.TrustDomain, BundleEndpointURL: fw.BundleEndpointURL.String(), EndpointSPIFFEID: fw.EndpointSPIFFEID, FromConfig: true}
		switch fw.Profile {
		case config.ProfileHTTPSSPIFFE:
			r.Profile = datastore.ProfileHTTPSSPIFFE
		default:
			r.Profile = datastore.ProfileHTTPSWeb
		}
		out = append(out, r)
	}
	return out
}

// bundleEndpoint is the bundle endpoint and what it runs with.
type bundleEndpoint struct {
	ep          *federation.Endpoint
	servingCert *federation.ServingCert // https_web only
}

// newBundleEndpoint builds the bundle endpoint of the configuration (nil
// without one).
func newBundleEndpoint(cfg *config.Server, addr *net.TCPAddr, src *federation.OwnBundleSource, svid func() (*tls.Certificate, error), clk clock.Clock, log *slog.Logger) (*bundleEndpoint, error) {
	if addr == nil {
		return nil, nil
	}
	be := cfg.Federation.BundleEndpoint
	out := &bundleEndpoint{}
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return svid() }
	if be.Profile == config.ProfileHTTPSWeb {
		scf := be.ServingCertFile
		sc, err := federation.LoadServingCert(scf.CertFilePath, scf.KeyFilePath, scf.FileSyncInterval, clk, log)
		if err != nil {
			return nil, err
		}
		out.servingCert, getCert = sc, sc.GetCertificate
	}
	ep, err := federation.NewEndpoint(federation.EndpointConfig{
		Addr:           addr,
		TrustDomain:    cfg.TrustDomain,
		Source:         src,
		GetCertificate: getCert,
		Log:            log,
	})
	if err != nil {
		return nil, err
	}
	out.ep = ep
	return out, nil
}

// bundleWrites is the bundle API's Cache: the entry cache, and the
// federation refreshers waiting for a bootstrap bundle.
type bundleWrites struct {
	*entrycache.Cache
	fed *federation.Manager
}

// BundleChanged wakes both.
func (b bundleWrites) BundleChanged() {
	b.Cache.BundleChanged()
	b.fed.BundlesChanged()
}
