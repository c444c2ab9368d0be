package testutil

import (
	"crypto/x509"
	"encoding/pem"
	"sort"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// SecretTypeURL is the type of every SDS resource.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// DialSDS is the Envoy side of SDS for tests: go-control-plane's generated
// SecretDiscoveryService client on an agent's socket (addr as
// Agent.SocketAddr gives it). The connection is closed on cleanup.
func DialSDS(t testing.TB, addr string) secretv3.SecretDiscoveryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return secretv3.NewSecretDiscoveryServiceClient(conn)
}

// EnvoyNode is the node an Envoy of version major.minor sends.
func EnvoyNode(major, minor uint32) *corev3.Node {
	return &corev3.Node{Id: "envoy-test", Cluster: "test", UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{
			Version: &typev3.SemanticVersion{MajorNumber: major, MinorNumber: minor},
		}}}
}

// SDSRequest asks for names, as Envoy's first request on a stream does.
func SDSRequest(node *corev3.Node, names ...string) *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{Node: node, ResourceNames: names, TypeUrl: SecretTypeURL}
}

// SDSAck acknowledges resp for names, as Envoy does after applying it.
func SDSAck(resp *discoveryv3.DiscoveryResponse, names ...string) *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{ResourceNames: names, TypeUrl: SecretTypeURL, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}
}

// Secret is an SDS secret decoded for comparisons.
type Secret struct {
	Name string
	// Kind is "tls_certificate", "spiffe_validator" or "trusted_ca".
	Kind string
	// Certs: the certificate chain (tls_certificate), or the authorities
	// of a trusted_ca.
	Certs []*x509.Certificate
	// Key is the PKCS#8 private key (tls_certificate).
	Key any
	// TrustDomains maps the trust domains of a SPIFFE validator context,
	// in its order, to their authorities.
	TrustDomains      map[string][]*x509.Certificate
	TrustDomainsOrder []string
}

// DecodeSecrets decodes a response's resources (each must be a Secret).
func DecodeSecrets(t testing.TB, resp *discoveryv3.DiscoveryResponse) []Secret {
	t.Helper()
	var out []Secret
	for _, a := range resp.GetResources() {
		if a.GetTypeUrl() != SecretTypeURL {
			t.Fatalf("resource of type %q", a.GetTypeUrl())
		}
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			t.Fatal(err)
		}
		d := Secret{Name: s.GetName()}
		switch {
		case s.GetTlsCertificate() != nil:
			d.Kind = "tls_certificate"
			tc := s.GetTlsCertificate()
			d.Certs = pemCertificates(t, tc.GetCertificateChain().GetInlineBytes())
			b, _ := pem.Decode(tc.GetPrivateKey().GetInlineBytes())
			if b == nil || b.Type != "PRIVATE KEY" {
				t.Fatalf("secret %q: the private key is not PKCS#8 PEM", d.Name)
			}
			key, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				t.Fatalf("secret %q: %v", d.Name, err)
			}
			d.Key = key
		case s.GetValidationContext().GetCustomValidatorConfig() != nil:
			d.Kind = "spiffe_validator"
			cvc := s.GetValidationContext().GetCustomValidatorConfig()
			if cvc.GetName() != "envoy.tls.cert_validator.spiffe" {
				t.Fatalf("secret %q: custom validator %q", d.Name, cvc.GetName())
			}
			cfg := &tlsv3.SPIFFECertValidatorConfig{}
			if err := cvc.GetTypedConfig().UnmarshalTo(cfg); err != nil {
				t.Fatalf("secret %q: %v", d.Name, err)
			}
			d.TrustDomains = map[string][]*x509.Certificate{}
			for _, td := range cfg.GetTrustDomains() {
				d.TrustDomainsOrder = append(d.TrustDomainsOrder, td.GetName())
				d.TrustDomains[td.GetName()] = pemCertificates(t, td.GetTrustBundle().GetInlineBytes())
			}
		case s.GetValidationContext() != nil:
			d.Kind = "trusted_ca"
			d.Certs = pemCertificates(t, s.GetValidationContext().GetTrustedCa().GetInlineBytes())
		default:
			t.Fatalf("secret %q of an unexpected type %T", d.Name, s.GetType())
		}
		out = append(out, d)
	}
	return out
}

// SecretNames lists the names of secrets, sorted.
func SecretNames(secrets []Secret) []string {
	out := make([]string, 0, len(secrets))
	for _, s := range secrets {
		out = append(out, s.Name)
	}
	sort.Strings(out)
	return out
}

// SecretNamed returns the secret called name, failing the test without one.
func SecretNamed(t testing.TB, secrets []Secret, name string) Secret {
	t.Helper()
	for _, s := range secrets {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no secret %q among %q", name, SecretNames(secrets))
	return Secret{}
}

func pemCertificates(t testing.TB, data []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}
