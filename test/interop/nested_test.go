package interop

import (
	"context"
	"crypto/x509"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// agentKind starts one of the two agent implementations.
type agentKind func(testing.TB, testutil.AgentConfig) *testutil.Agent

var (
	startSigilAgentProc agentKind = func(t testing.TB, c testutil.AgentConfig) *testutil.Agent { return testutil.StartAgent(t, c) }
	startSPIREAgentProc agentKind = testutil.StartSPIREAgent
)

// TestNested: a site server of one implementation takes its CA from a root
// server of the other (UpstreamAuthority "spire" through an agent of the
// root's kind on the site's host: svid/v1 NewDownstreamX509CA and
// bundle/v1 PublishJWTAuthority across implementations). A device agent of
// the site's kind then serves its workload an X509-SVID that verifies
// against the root's bundle, and a JWT-SVID that validates against the
// root's JWT keys.
func TestNested(t *testing.T) {
	testutil.SPIREBinaries(t)
	sigil, spire := serverKinds[0], serverKinds[1]
	for _, c := range []struct {
		name                 string
		root, site           serverKind
		rootAgent, siteAgent agentKind
	}{
		{"sigil-root/spire-site", sigil, spire, startSigilAgentProc, startSPIREAgentProc},
		{"spire-root/sigil-site", spire, sigil, startSPIREAgentProc, startSigilAgentProc},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := c.root.start(t, testutil.ServerConfig{})
			hostCfg := testutil.AgentFor(t, root, "/site-host", "")
			host := c.rootAgent(t, hostCfg)
			siteID := root.ID("/site")
			createDownstreamEntry(t, root.Admin(t), siteID, root.ID("/site-host"))
			testutil.RequireSVID(t, host.SocketAddr(), siteID, deadline)

			site := c.site.start(t, testutil.ServerConfig{Plugins: []testutil.Plugin{{
				Type: "UpstreamAuthority", Name: "spire",
				Data: map[string]any{
					"server_address":      root.Config.BindAddress,
					"server_port":         strconv.Itoa(root.Config.BindPort),
					"workload_api_socket": host.Config.SocketPath,
				},
			}}})
			device := c.siteAgent(t, testutil.AgentFor(t, site, "/device", ""))
			webID := site.ID("/web")
			site.Admin(t).CreateEntry(t, webID, site.ID("/device"), uidSelector)

			svid := testutil.RequireSVID(t, device.SocketAddr(), webID, deadline)
			rootBundle, err := x509bundle.Parse(root.TrustDomain(), root.Admin(t).BundlePEM(t))
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := x509svid.Verify(svid.Certificates, rootBundle); err != nil {
				t.Fatalf("the site's workload SVID does not verify against the root's bundle: %v", err)
			}

			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			jwt, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "interop"}, workloadapi.WithAddr(device.SocketAddr()))
			if err != nil {
				t.Fatalf("JWT-SVID from the site's agent: %v", err)
			}
			// The site published its JWT key to the root.
			var lastErr error
			err = testutil.Poll(deadline, 200*time.Millisecond, func() (bool, error) {
				_, lastErr = jwtsvid.ParseAndValidate(jwt.Marshal(), rootJWTBundle(t, root), []string{"interop"})
				return lastErr == nil, nil
			})
			if err != nil {
				t.Fatalf("the site's JWT-SVID never validated against the root's JWT keys: %v", lastErr)
			}
		})
	}
}

// createDownstreamEntry registers id under parent for this process's uid,
// as a downstream (site server) entry.
func createDownstreamEntry(t *testing.T, adm *testutil.Admin, id, parent spiffeid.ID) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.AdminTimeout)
	defer cancel()
	sel := &types.Selector{Type: "unix", Value: uidSelector[len("unix:"):]}
	resp, err := adm.Entry.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{{
		SpiffeId:   &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()},
		ParentId:   &types.SPIFFEID{TrustDomain: parent.TrustDomain().Name(), Path: parent.Path()},
		Selectors:  []*types.Selector{sel},
		Downstream: true,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if st := resp.GetResults()[0].GetStatus(); st.GetCode() != int32(codes.OK) {
		t.Fatalf("downstream entry: %s", st.GetMessage())
	}
}

// rootJWTBundle is the root server's JWT keys.
func rootJWTBundle(t *testing.T, root *testutil.Server) *jwtbundle.Bundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.AdminTimeout)
	defer cancel()
	b, err := root.Admin(t).Bundle.GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	jb := jwtbundle.New(root.TrustDomain())
	for _, k := range b.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			t.Fatal(err)
		}
		if err := jb.AddJWTAuthority(k.GetKeyId(), pub); err != nil {
			t.Fatal(err)
		}
	}
	return jb
}
