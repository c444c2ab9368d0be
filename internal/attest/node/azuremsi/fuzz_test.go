package azuremsi_test

import (
	"context"
	"errors"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi/armapi"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// FuzzVerify feeds the server half's token check attestation data as it
// comes from the network ({"token": ...}), with the fake's Azure AD keys.
// It never panics, every error is a refusal (node.ErrInvalid or
// node.ErrRefused) of bounded length, and a success is only ever the
// principal the fake signed for.
func FuzzVerify(f *testing.F) {
	az := cloudfake.NewAzure(f)
	vm := az.AddVM(&cloudfake.AzureVM{Name: "web-1"})
	cfg := azuremsi.ServerConfig{Tenants: []azuremsi.Tenant{{ID: cloudfake.AzureTenant}}, LoginEndpoint: az.URL(), ManagementEndpoint: az.URL()}
	s, err := azuremsi.NewServer(cfg, azuremsi.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, ARM: armapi.New(cfg)})
	if err != nil {
		f.Fatal(err)
	}
	tok := az.Token(f, vm, azuremsi.DefaultResourceID)
	f.Add([]byte(`{"token":"` + tok + `"}`))
	f.Add([]byte(`{"token":"` + tok[:len(tok)-10] + `"}`))
	f.Add([]byte(`{"token":"a.b.c"}`))
	f.Add([]byte(`{"token":5}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		tenant, principal, err := s.Verify(context.Background(), payload)
		if err != nil {
			if !errors.Is(err, node.ErrInvalid) && !errors.Is(err, node.ErrRefused) {
				t.Fatalf("an error that is not a refusal: %v", err)
			}
			if len(err.Error()) > 600 {
				t.Fatalf("a %d-byte error message", len(err.Error()))
			}
			return
		}
		if tenant.ID != cloudfake.AzureTenant || principal != vm.PrincipalID {
			t.Fatalf("verified a token Azure AD did not sign: %s %s", tenant.ID, principal)
		}
	})
}
