package interop

import (
	"context"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// sdsAgent is one agent implementation's SDS, for side-by-side answers.
type sdsAgent struct {
	name   string
	agent  *testutil.Agent
	client secretv3.SecretDiscoveryServiceClient
}

func (a sdsAgent) fetch(t *testing.T, node *corev3.Node, names ...string) ([]testutil.Secret, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	resp, err := a.client.FetchSecrets(ctx, testutil.SDSRequest(node, names...))
	if err != nil {
		return nil, err
	}
	if resp.VersionInfo != "" || resp.Nonce != "" {
		t.Errorf("%s: FetchSecrets answered version %q nonce %q", a.name, resp.VersionInfo, resp.Nonce)
	}
	return testutil.DecodeSecrets(t, resp), nil
}

// summary is what the two agents' answers must agree on: each secret's
// name, kind and trust domains (their keys and certificates differ).
func summary(ss []testutil.Secret) []string {
	var out []string
	for _, s := range ss {
		d := s.Name + " " + s.Kind
		if s.Kind == "spiffe_validator" {
			tds := slices.Clone(s.TrustDomainsOrder)
			slices.Sort(tds)
			d += " " + joinStrings(tds)
		}
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

func joinStrings(s []string) string {
	out := ""
	for i, v := range s {
		if i > 0 {
			out += ","
		}
		out += v
	}
	return out
}

// TestSDSAgainstSPIREAgent: a spire-agent and a sigil-agent, attested to
// the same sigil-server, answer the same Envoy SDS requests (through
// go-control-plane's client) alike: for a caller without entries, for one
// with an entry that federates with another trust domain, with SPIFFE
// validation on, disabled by node metadata and for an old Envoy, and for
// unknown names; a stream's first response is version "1" with a nonce.
// Where Sigil answers differently on purpose (README, Envoy SDS), the
// test pins both answers: an empty names list (spire-agent serves every
// secret, sigil-agent refuses it), the all-bundles name for an Envoy that
// cannot take it (Internal vs FailedPrecondition), several names of our
// bundle in one request (spire-agent serves one and refuses the others as
// unknown, sigil-agent serves them all), and a node whose build
// version has no version, which makes spire-agent 1.15.3 exit while
// sigil-agent answers InvalidArgument and keeps serving.
func TestSDSAgainstSPIREAgent(t *testing.T) {
	testutil.SPIREBinaries(t)
	srv := testutil.StartServer(t, testutil.ServerConfig{})
	adm := srv.Admin(t)
	td := srv.TrustDomain()

	var agents []sdsAgent
	for _, k := range []struct {
		name  string
		start func(testing.TB, testutil.AgentConfig) *testutil.Agent
	}{{"spire-agent", testutil.StartSPIREAgent}, {"sigil-agent", func(t testing.TB, c testutil.AgentConfig) *testutil.Agent { return testutil.StartAgent(t, c) }}} {
		a := k.start(t, testutil.AgentFor(t, srv, "/node/"+k.name, ""))
		agents = append(agents, sdsAgent{name: k.name, agent: a, client: testutil.DialSDS(t, a.SocketAddr())})
	}
	modern := testutil.EnvoyNode(1, 34)

	// compare runs one fetch on both agents and requires the same code and
	// the same secrets.
	compare := func(t *testing.T, what string, node *corev3.Node, names ...string) {
		t.Helper()
		var got [2][]string
		var codesGot [2]codes.Code
		for i, a := range agents {
			var (
				ss    []testutil.Secret
				fetch error
			)
			// A sigil-agent serves its socket before it has attested.
			if err := testutil.Poll(deadline, 50*time.Millisecond, func() (bool, error) {
				ss, fetch = a.fetch(t, node, names...)
				return status.Code(fetch) != codes.Unavailable, nil
			}); err != nil {
				t.Fatalf("%s: %s: still Unavailable", a.name, what)
			}
			codesGot[i], got[i] = status.Code(fetch), summary(ss)
		}
		if codesGot[0] != codesGot[1] || !slices.Equal(got[0], got[1]) {
			t.Errorf("%s: spire-agent %s %q, sigil-agent %s %q", what, codesGot[0], got[0], codesGot[1], got[1])
		}
	}

	for _, name := range []string{"ROOTCA", td.IDString(), "ALL", "default"} {
		compare(t, "no entries: "+name, modern, name)
	}

	edge := spiffeBundleFor(t, "edge.test")
	adm.SetFederatedBundle(t, edge)
	webID := srv.ID("/web")
	for _, a := range agents {
		e := newEntry(t, webID, srv.ID("/node/"+a.name), uidSelector)
		e.FederatesWith = []string{"edge.test"}
		adm.CreateEntries(t, e)
	}
	for _, a := range agents {
		testutil.RequireSVID(t, a.agent.SocketAddr(), webID, deadline)
		// and edge.test's bundle, which an agent may get after the SVID.
		if err := testutil.Poll(deadline, 50*time.Millisecond, func() (bool, error) {
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(a.agent.SocketAddr()))
			return err == nil && xc.Bundles.Has(edge.TrustDomain()), nil
		}); err != nil {
			t.Fatalf("%s does not serve edge.test's bundle: %v", a.name, err)
		}
	}

	all := []string{webID.String(), "default", "ROOTCA", "ALL", td.IDString(), "spiffe://edge.test"}
	for _, name := range all {
		compare(t, name, modern, name)
	}
	compare(t, "unknown name", modern, webID.String(), srv.ID("/nope").String())
	compare(t, "unfederated trust domain", modern, "spiffe://other.test")
	compare(t, "Envoy 1.17", testutil.EnvoyNode(1, 17), "ROOTCA", "spiffe://edge.test", webID.String())
	disabled := testutil.EnvoyNode(1, 34)
	md, _ := structpb.NewStruct(map[string]any{"disable_spiffe_cert_validation": true})
	disabled.Metadata = md
	compare(t, "validation disabled by metadata: ROOTCA", disabled, "ROOTCA")
	compare(t, "validation disabled by metadata: own trust domain", disabled, td.IDString())

	// A stream's first response.
	for _, a := range agents {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		st, err := a.client.StreamSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(testutil.SDSRequest(modern, "default", "ROOTCA")); err != nil {
			t.Fatal(err)
		}
		r, err := st.Recv()
		if err != nil || r.VersionInfo != "1" || r.Nonce == "" || len(r.Resources) != 2 {
			t.Errorf("%s: first stream response %v, %v", a.name, r, err)
		}
		cancel()
	}

	// Differences on purpose.
	for _, a := range agents {
		ss, err := a.fetch(t, modern)
		switch a.name {
		case "spire-agent":
			t.Logf("spire-agent, empty names: %q", summary(ss))
			if err != nil || len(ss) == 0 {
				t.Errorf("spire-agent refused an empty names list: %v", err)
			}
		case "sigil-agent":
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("sigil-agent, empty names: %v, want InvalidArgument", err)
			}
		}
		// Two names of our bundle at once: spire-agent serves the first and
		// calls the other unknown.
		ss, err = a.fetch(t, modern, "ROOTCA", td.IDString(), "ALL")
		switch a.name {
		case "spire-agent":
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("spire-agent, several names of our bundle: %v", err)
			}
		case "sigil-agent":
			if err != nil || len(ss) != 3 {
				t.Errorf("sigil-agent, several names of our bundle: %q, %v", summary(ss), err)
			}
		}
		_, err = a.fetch(t, testutil.EnvoyNode(1, 17), "ALL")
		want := map[string]codes.Code{"spire-agent": codes.Internal, "sigil-agent": codes.FailedPrecondition}[a.name]
		if status.Code(err) != want {
			t.Errorf("%s: ALL for Envoy 1.17: %v, want %s", a.name, err, want)
		}
	}
	versionless := &corev3.Node{Id: "envoy", UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{}}}
	for _, a := range agents {
		_, err := a.fetch(t, versionless, "ROOTCA")
		switch a.name {
		case "spire-agent":
			a.agent.Proc.WaitExit(t, deadline)
			t.Logf("spire-agent exited on a node without a build version (%v): %v", err, a.agent.Proc.Err())
		case "sigil-agent":
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("sigil-agent, node without a build version: %v, want InvalidArgument", err)
			}
			if _, err := a.fetch(t, modern, "default"); err != nil || a.agent.Proc.Exited() {
				t.Errorf("sigil-agent after a node without a build version: %v, exited %v", err, a.agent.Proc.Exited())
			}
		}
	}
}

// spiffeBundleFor is a bundle of a new CA for a trust domain.
func spiffeBundleFor(t *testing.T, name string) *spiffebundle.Bundle {
	t.Helper()
	d := spiffeid.RequireTrustDomainFromString(name)
	b := spiffebundle.New(d)
	b.AddX509Authority(testca.New(t, testca.TrustDomain(d)).Cert)
	b.SetSequenceNumber(1)
	return b
}

func newEntry(t *testing.T, id, parent spiffeid.ID, selectors ...string) *types.Entry {
	t.Helper()
	e, err := adminclient.NewEntry(id, parent, selectors...)
	if err != nil {
		t.Fatal(err)
	}
	return e
}
