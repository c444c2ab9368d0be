package sds

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/sds/sdspb"
	"github.com/sigil-spiffe/sigil/internal/clip"
)

// spiffeValidatorName is the name Envoy registers its SPIFFE certificate
// validator extension under.
const spiffeValidatorName = "envoy.tls.cert_validator.spiffe"

// disableValidationKey is the Envoy node metadata key that overrides
// Config.DisableSPIFFECertValidation for one Envoy.
const disableValidationKey = "disable_spiffe_cert_validation"

// marshal is deterministic, so that equal secrets have equal bytes and a
// stream can tell whether anything changed.
var marshal = proto.MarshalOptions{Deterministic: true}

// pack is anypb.New with Envoy's type URL (the message's own full name is
// sdspb's).
func pack(typeURL string, m proto.Message) (*anypb.Any, error) {
	b, err := marshal.Marshal(m)
	if err != nil {
		return nil, err
	}
	return &anypb.Any{TypeUrl: typeURL, Value: b}, nil
}

// checkNode refuses an Envoy node SDS cannot answer: one whose build
// version has no version.
func checkNode(n *sdspb.Node) error {
	if bv := n.GetUserAgentBuildVersion(); bv != nil && bv.GetVersion() == nil {
		return status.Error(codes.InvalidArgument, "node.user_agent_build_version has no version")
	}
	return nil
}

// useSPIFFEValidator reports whether validation contexts use Envoy's
// SPIFFE certificate validator for this node: SPIFFE validation is not
// disabled (by configuration, overridden by the node's metadata) and the
// node is not an Envoy of 1.17 or older (one without a build version is
// taken as recent). The node must have passed checkNode.
func (s *Service) useSPIFFEValidator(n *sdspb.Node) bool {
	disabled := s.cfg.DisableSPIFFECertValidation
	if v, ok := n.GetMetadata().GetFields()[disableValidationKey]; ok {
		// A value of another type, or a string that is no bool, is
		// ignored, as SPIRE ignores it.
		switch k := v.GetKind().(type) {
		case *structpb.Value_BoolValue:
			disabled = k.BoolValue
		case *structpb.Value_StringValue:
			if b, err := strconv.ParseBool(k.StringValue); err == nil {
				disabled = b
			}
		}
	}
	if disabled {
		return false
	}
	if bv := n.GetUserAgentBuildVersion(); bv != nil {
		v := bv.GetVersion()
		return v.GetMajorNumber() > 1 || (v.GetMajorNumber() == 1 && v.GetMinorNumber() > 17)
	}
	return true
}

// secrets builds the secrets named by names (distinct, in that order) for
// a caller whose state is u. A name the caller may not have is an
// InvalidArgument error naming the unknown names.
func (s *Service) secrets(names []string, spiffe bool, u *cache.WorkloadUpdate) ([]*anypb.Any, error) {
	var ownID string
	if u.Bundle != nil {
		ownID = u.Bundle.TrustDomain().IDString()
	}
	federated := make(map[string]*spiffebundle.Bundle, len(u.FederatedBundles))
	for td, b := range u.FederatedBundles {
		federated[td.IDString()] = b
	}
	identities := make(map[string]*cache.Identity, len(u.Identities))
	for i := range u.Identities {
		id := u.Identities[i].Entry.SPIFFEID.String()
		if _, dup := identities[id]; !dup {
			identities[id] = &u.Identities[i]
		}
	}

	out := make([]*anypb.Any, 0, len(names))
	var unknown []string
	for _, name := range names {
		var (
			secret *sdspb.Secret
			err    error
		)
		// The bundle names first, then the identities, as SPIRE: a
		// misconfigured default SVID name equal to a bundle name serves
		// the bundle.
		switch {
		case u.Bundle != nil && (name == ownID || name == s.cfg.DefaultBundleName):
			secret, err = validationContext(name, spiffe, []*spiffebundle.Bundle{u.Bundle})
		case u.Bundle != nil && name == s.cfg.DefaultAllBundlesName:
			if !spiffe {
				return nil, status.Errorf(codes.FailedPrecondition, "%s names the bundles of several trust domains, which only Envoy's SPIFFE certificate validator (Envoy 1.18 or later, SPIFFE validation not disabled) can take", clip.Quote(name))
			}
			all := []*spiffebundle.Bundle{u.Bundle}
			for _, b := range u.FederatedBundles {
				all = append(all, b)
			}
			secret, err = validationContext(name, true, all)
		case federated[name] != nil:
			secret, err = validationContext(name, spiffe, []*spiffebundle.Bundle{federated[name]})
		case identities[name] != nil:
			secret, err = tlsCertificate(name, identities[name])
		case name == s.cfg.DefaultSVIDName && len(u.Identities) > 0:
			secret, err = tlsCertificate(name, &u.Identities[0])
		default:
			unknown = append(unknown, name)
			continue
		}
		if err != nil {
			return nil, status.Errorf(codes.Internal, "build secret %s: %v", clip.Quote(name), err)
		}
		a, err := pack(SecretTypeURL, secret)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "marshal secret %s: %v", clip.Quote(name), err)
		}
		out = append(out, a)
	}
	if len(unknown) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "the caller is not entitled to the requested secrets %s", quoteNames(unknown))
	}
	return out, nil
}

// quoteNames lists names sorted, each clipped, at most 2 of them.
func quoteNames(names []string) string {
	sort.Strings(names)
	const show = 2
	q := make([]string, 0, show)
	for i, n := range names {
		if i == show {
			break
		}
		q = append(q, clip.Quote(n))
	}
	s := "[" + strings.Join(q, " ") + "]"
	if len(names) > show {
		s += fmt.Sprintf(" and %d more", len(names)-show)
	}
	return s
}

// validationContext is a validation context secret for bundles: Envoy's
// SPIFFE certificate validator with one trust domain per bundle (sorted by
// name), or a trusted_ca of the one bundle's X.509 authorities.
func validationContext(name string, spiffe bool, bundles []*spiffebundle.Bundle) (*sdspb.Secret, error) {
	vc := &sdspb.CertificateValidationContext{}
	if spiffe {
		sort.Slice(bundles, func(i, j int) bool { return bundles[i].TrustDomain().Compare(bundles[j].TrustDomain()) < 0 })
		cfg := &sdspb.SPIFFECertValidatorConfig{}
		for _, b := range bundles {
			cfg.TrustDomains = append(cfg.TrustDomains, &sdspb.SPIFFECertValidatorConfig_TrustDomain{
				Name:        b.TrustDomain().Name(),
				TrustBundle: inline(pemCerts(b.X509Authorities())),
			})
		}
		tc, err := pack(spiffeValidatorConfigTypeURL, cfg)
		if err != nil {
			return nil, err
		}
		vc.CustomValidatorConfig = &sdspb.TypedExtensionConfig{Name: spiffeValidatorName, TypedConfig: tc}
	} else {
		if len(bundles) != 1 {
			return nil, fmt.Errorf("a trusted_ca holds one trust domain, not %d", len(bundles))
		}
		vc.TrustedCa = inline(pemCerts(bundles[0].X509Authorities()))
	}
	return &sdspb.Secret{Name: name, Type: &sdspb.Secret_ValidationContext{ValidationContext: vc}}, nil
}

// tlsCertificate is the TLS certificate secret of an identity: its chain
// (leaf first) and its key (PKCS#8), PEM.
func tlsCertificate(name string, id *cache.Identity) (*sdspb.Secret, error) {
	key, err := x509.MarshalPKCS8PrivateKey(id.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("private key of %s: %w", id.Entry.SPIFFEID, err)
	}
	return &sdspb.Secret{Name: name, Type: &sdspb.Secret_TlsCertificate{TlsCertificate: &sdspb.TlsCertificate{
		CertificateChain: inline(pemCerts(id.SVID)),
		PrivateKey:       inline(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})),
	}}}, nil
}

func inline(b []byte) *sdspb.DataSource {
	return &sdspb.DataSource{Specifier: &sdspb.DataSource_InlineBytes{InlineBytes: b}}
}

func pemCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}
