package azureimds_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azureimds"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// FuzzVerify feeds the server half's document check PKCS #7 messages as
// they come from the network (the decoded signature), with the fake's test
// PKI trusted. It never panics, every error is a refusal (node.ErrInvalid
// or node.ErrRefused) of bounded length, and a success is only ever a
// document the fake's metadata certificate signed.
func FuzzVerify(f *testing.F) {
	az := cloudfake.NewAzure(f)
	cfg, err := azureimds.ParseServerConfig(config.NewPlugin("NodeAttestor", azureimds.Type, az.IMDSServerPluginData(f, f.TempDir())).Data(), parseTemplate)
	if err != nil {
		f.Fatal(err)
	}
	s, err := azureimds.NewServer(cfg, azureimds.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, ARM: noARM{},
		HTTPClient: &http.Client{Transport: noNetwork{}}})
	if err != nil {
		f.Fatal(err)
	}
	vm := az.AddVM(&cloudfake.AzureVM{Name: "web-1"})
	der := func(o cloudfake.AzureDocument) []byte {
		b, err := base64.StdEncoding.DecodeString(az.AttestedDocument(vm, "fuzz", o)["signature"])
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	good := der(cloudfake.AzureDocument{})
	evil := cloudfake.NewAzurePKI(f, "evil", "eastus.metadata.azure.com")
	f.Add(good)
	f.Add(good[:len(good)-40])
	f.Add(der(cloudfake.AzureDocument{Signers: []cloudfake.PKCS7Signer{{Key: az.IMDS.Key, Cert: az.IMDS.Leaf}, {Key: evil.Key, Cert: evil.Leaf}}, Bag: []*x509.Certificate{az.IMDS.Leaf, evil.Leaf}}))
	f.Add([]byte{0x30, 0x80, 0, 0})
	f.Fuzz(func(t *testing.T, msg []byte) {
		doc, err := s.Verify(context.Background(), azureimds.Document{Encoding: "pkcs7", Signature: base64.StdEncoding.EncodeToString(msg)})
		if err != nil {
			if !errors.Is(err, node.ErrInvalid) && !errors.Is(err, node.ErrRefused) {
				t.Fatalf("an error that is not a refusal: %v", err)
			}
			if len(err.Error()) > 600 {
				t.Fatalf("a %d-byte error message", len(err.Error()))
			}
			return
		}
		if doc.VMID != vm.VMID || doc.Nonce != "fuzz" {
			t.Fatalf("verified a document the metadata service did not sign: %+v", doc)
		}
	})
}

// noNetwork refuses every request (an intermediate to fetch, for a mutated
// certificate whose issuer the bag lacks).
type noNetwork struct{}

func (noNetwork) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("no network in the fuzz test")
}

// noARM is a Resource Manager Verify never reaches.
type noARM struct{}

func (noARM) InstanceByVMID(context.Context, azureimds.Credentials, string, string, string) (*azureimds.VM, error) {
	return nil, errors.New("not reached")
}
