package testutil

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/sigil-spiffe/sigil/internal/fedstatus"
)

// BundleEndpoint is the federation.bundle_endpoint of a ServerConfig.
type BundleEndpoint struct {
	// Address is where it listens (and URL's host); "" is 127.0.0.1.
	Address     string
	Port        int           // required
	RefreshHint time.Duration // refresh_hint; 0 leaves the server's default
	// CertFile and KeyFile, when set, make it profile "https_web" with this
	// serving certificate; else "https_spiffe".
	CertFile, KeyFile string
}

// URL is the endpoint's https URL.
func (e BundleEndpoint) URL() string {
	return "https://" + net.JoinHostPort(e.address(), strconv.Itoa(e.Port))
}

func (e BundleEndpoint) address() string {
	if e.Address == "" {
		return "127.0.0.1"
	}
	return e.Address
}

// FederatesWith is a federates_with block of a ServerConfig.
type FederatesWith struct {
	TrustDomain string
	URL         string
	// EndpointSPIFFEID makes it profile "https_spiffe"; "" is "https_web".
	EndpointSPIFFEID string
}

// federationHCL renders server.federation (SPIRE's syntax), "" when c has
// no federation settings.
func (c ServerConfig) federationHCL() string {
	if c.BundleEndpoint == nil && len(c.FederatesWith) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("    federation {\n")
	if e := c.BundleEndpoint; e != nil {
		fmt.Fprintf(&b, "        bundle_endpoint {\n            address = %q\n            port = %d\n", e.address(), e.Port)
		if e.RefreshHint > 0 {
			fmt.Fprintf(&b, "            refresh_hint = %q\n", e.RefreshHint.String())
		}
		if e.CertFile != "" {
			// file_sync_interval: spire-server 1.15.3 refuses to start
			// without it ("time: invalid duration"), though SPIRE documents
			// a default; Sigil's default is the same 1h.
			fmt.Fprintf(&b, "            profile \"https_web\" {\n                serving_cert_file {\n                    cert_file_path = %q\n                    key_file_path = %q\n                    file_sync_interval = \"1h\"\n                }\n            }\n", e.CertFile, e.KeyFile)
		} else {
			b.WriteString("            profile \"https_spiffe\" {}\n")
		}
		b.WriteString("        }\n")
	}
	for _, fw := range c.FederatesWith {
		fmt.Fprintf(&b, "        federates_with %q {\n            bundle_endpoint_url = %q\n", fw.TrustDomain, fw.URL)
		if fw.EndpointSPIFFEID != "" {
			fmt.Fprintf(&b, "            bundle_endpoint_profile \"https_spiffe\" {\n                endpoint_spiffe_id = %q\n            }\n", fw.EndpointSPIFFEID)
		} else {
			b.WriteString("            bundle_endpoint_profile \"https_web\" {}\n")
		}
		b.WriteString("        }\n")
	}
	b.WriteString("    }\n")
	return b.String()
}

// FederatesWithServer is a federates_with block for s's https_spiffe bundle
// endpoint (its SVID spiffe://<td>/spire/server).
func FederatesWithServer(s *Server) FederatesWith {
	if s.Config.BundleEndpoint == nil {
		panic("testutil: FederatesWithServer of a server without a bundle endpoint")
	}
	return FederatesWith{TrustDomain: s.Config.TrustDomain, URL: s.Config.BundleEndpoint.URL(), EndpointSPIFFEID: s.ID("/spire/server").String()}
}

// TrustDomainClient is a trustdomain/v1 client on the admin socket.
func (a *Admin) TrustDomainClient() trustdomainv1.TrustDomainClient {
	return trustdomainv1.NewTrustDomainClient(a.Conn)
}

// CreateFederationRelationship creates fr through the trustdomain API; a
// result that is not OK fails the test.
func (a *Admin) CreateFederationRelationship(t testing.TB, fr *types.FederationRelationship) {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	resp, err := a.TrustDomainClient().BatchCreateFederationRelationship(ctx, &trustdomainv1.BatchCreateFederationRelationshipRequest{
		FederationRelationships: []*types.FederationRelationship{fr}})
	if err != nil {
		t.Fatalf("create federation relationship: %v", err)
	}
	if st := resp.GetResults()[0].GetStatus(); codes.Code(st.GetCode()) != codes.OK {
		t.Fatalf("create federation relationship with %s: %s", fr.GetTrustDomain(), st.GetMessage())
	}
}

// FederationStatus is the refresh status a sigil-server reports for its
// relationship with td (ok false: none, or not a sigil-server).
func (a *Admin) FederationStatus(t testing.TB, td string) (fedstatus.Status, bool) {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	var trailer metadata.MD
	_, _ = a.TrustDomainClient().GetFederationRelationship(ctx, &trustdomainv1.GetFederationRelationshipRequest{TrustDomain: td}, grpc.Trailer(&trailer))
	for _, st := range fedstatus.FromMD(trailer) {
		if st.TrustDomain == td {
			return st, true
		}
	}
	return fedstatus.Status{}, false
}

// WaitFederationRefreshed waits until the server reports a successful
// fetch of td's bundle after since (and no failure since that fetch), and
// returns the status.
func (a *Admin) WaitFederationRefreshed(t testing.TB, td string, since time.Time, timeout time.Duration) fedstatus.Status {
	t.Helper()
	var st fedstatus.Status
	err := Poll(timeout, 50*time.Millisecond, func() (bool, error) {
		var ok bool
		st, ok = a.FederationStatus(t, td)
		return ok && st.LastSuccess.After(since) && st.ConsecutiveFailures == 0, nil
	})
	if err != nil {
		t.Fatalf("no refresh of %s's bundle since %s: %v (last status %+v)", td, since.Format(time.RFC3339Nano), err, st)
	}
	return st
}
