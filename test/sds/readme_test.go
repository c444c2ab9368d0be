package sds

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"

	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// readmeBootstrap reads the README's Envoy bootstrap (the yaml block of
// "Envoy (SDS)") into Envoy's own Bootstrap message: every field must be
// one Envoy knows (protojson, typed configs included), and Envoy's
// validation rules must hold.
func readmeBootstrap(t *testing.T) *bootstrapv3.Bootstrap {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(readme)
	i := strings.Index(s, "\n### Envoy (SDS)\n")
	if i < 0 {
		t.Fatal("README.md has no Envoy (SDS) section")
	}
	s = s[i:]
	start := strings.Index(s, "```yaml\n")
	if start < 0 {
		t.Fatal("the Envoy (SDS) section has no yaml block")
	}
	s = s[start+len("```yaml\n"):]
	s = s[:strings.Index(s, "\n```")]
	var doc any
	if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
		t.Fatalf("README bootstrap: %v", err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(js, b); err != nil {
		t.Fatalf("README bootstrap is not an Envoy bootstrap: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("README bootstrap: %v", err)
	}
	return b
}

// TestREADMEEnvoyBootstrap: the README's bootstrap is a valid Envoy
// bootstrap whose SDS configs all reach the agent's default socket over
// gRPC (HTTP/2), and the secrets it names are the ones a real agent serves
// an Envoy with the README's entry.
func TestREADMEEnvoyBootstrap(t *testing.T) {
	b := readmeBootstrap(t)
	var agentCluster bool
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != "sigil_agent" {
			continue
		}
		agentCluster = true
		pipe := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe()
		if pipe.GetPath() != config.DefaultAgentSocketPath {
			t.Errorf("the agent cluster's socket is %q, not the default socket_path %q", pipe.GetPath(), config.DefaultAgentSocketPath)
		}
		if _, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]; !ok {
			t.Error("the agent cluster does not speak HTTP/2")
		}
	}
	if !agentCluster {
		t.Fatal("no sigil_agent cluster")
	}
	var names []string
	checkSource := func(name string, src *corev3.ConfigSource) {
		t.Helper()
		api := src.GetApiConfigSource()
		if src.GetResourceApiVersion() != corev3.ApiVersion_V3 || api.GetApiType() != corev3.ApiConfigSource_GRPC ||
			api.GetTransportApiVersion() != corev3.ApiVersion_V3 || api.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != "sigil_agent" {
			t.Errorf("secret %q is not fetched over SDS v3 gRPC from sigil_agent: %v", name, src)
		}
		names = append(names, name)
	}
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			tc := &tlsv3.DownstreamTlsContext{}
			if err := fc.GetTransportSocket().GetTypedConfig().UnmarshalTo(tc); err != nil {
				t.Fatal(err)
			}
			if err := tc.ValidateAll(); err != nil {
				t.Fatalf("README DownstreamTlsContext: %v", err)
			}
			for _, sc := range tc.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs() {
				checkSource(sc.GetName(), sc.GetSdsConfig())
			}
			if vc := tc.GetCommonTlsContext().GetValidationContextSdsSecretConfig(); vc != nil {
				checkSource(vc.GetName(), vc.GetSdsConfig())
			}
		}
	}
	if !slices.Equal(names, []string{"spiffe://example.org/myservice", "ROOTCA"}) {
		t.Fatalf("the README's Envoy asks for %q", names)
	}

	// A real agent, with the README's entry for Envoy, serves each of them
	// (Envoy opens one stream per secret).
	srv := testutil.StartServer(t, testutil.ServerConfig{})
	a := testutil.StartAgent(t, testutil.AgentFor(t, srv, "/agent/envoy", ""))
	srv.Admin(t).CreateEntry(t, srv.ID("/myservice"), srv.ID("/agent/envoy"), uidSelector)
	testutil.RequireSVID(t, a.SocketAddr(), srv.ID("/myservice"), deadline)
	client := testutil.DialSDS(t, a.SocketAddr())
	node := b.GetNode()
	node.UserAgentName = "envoy"
	node.UserAgentVersionType = envoy.GetUserAgentVersionType()
	for _, name := range names {
		st, err := client.StreamSecrets(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		send(t, st, testutil.SDSRequest(node, name))
		ss := testutil.DecodeSecrets(t, recv(t, st))
		if len(ss) != 1 || ss[0].Name != name {
			t.Fatalf("%s: served %q", name, testutil.SecretNames(ss))
		}
	}
}
