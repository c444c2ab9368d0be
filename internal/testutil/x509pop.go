package testutil

import (
	"crypto/sha1" //nolint:gosec // x509pop's fingerprint is SHA-1 by SPIRE's definition
	"crypto/x509"
	"encoding/hex"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// DeviceCA is a device PKI for x509pop node attestation: a root the
// server trusts (its NodeAttestor "x509pop" ca_bundle_path) and the
// intermediate CA that issues device certificates, which devices send
// along (intermediates_path).
type DeviceCA struct {
	Root, Issuer *testca.CA
	// BundlePath is the root's PEM file.
	BundlePath string
}

// NewDeviceCA creates a device PKI, writing the root's PEM into dir.
func NewDeviceCA(t testing.TB, dir string) *DeviceCA {
	t.Helper()
	root := testca.New(t, testca.Subject("Device Root CA"))
	return &DeviceCA{
		Root:       root,
		Issuer:     root.Intermediate(t, testca.Subject("Device Issuing CA")),
		BundlePath: testca.WriteCertsPEM(t, filepath.Join(dir, "device-root-ca.pem"), root.Cert),
	}
}

// ServerPlugin is a server's NodeAttestor "x509pop" trusting the root.
func (d *DeviceCA) ServerPlugin() Plugin {
	return Plugin{Type: "NodeAttestor", Name: "x509pop", Data: map[string]any{"ca_bundle_path": d.BundlePath}}
}

// Device issues a device certificate (common name cn, a new key) and
// writes it, its key and the intermediate into dir (device.crt,
// device.key, device-intermediates.crt). It returns the agent's
// NodeAttestor "x509pop" block reading them, and the certificate.
func (d *DeviceCA) Device(t testing.TB, dir, cn string, opts ...testca.Option) (*Plugin, *x509.Certificate) {
	t.Helper()
	cert, key := d.Issuer.Leaf(t, append([]testca.Option{testca.Subject(cn)}, opts...)...)
	return &Plugin{Type: "NodeAttestor", Name: "x509pop", Data: map[string]any{
		"certificate_path":   testca.WriteCertsPEM(t, filepath.Join(dir, "device.crt"), cert),
		"private_key_path":   testca.WriteKeyPEM(t, filepath.Join(dir, "device.key"), key),
		"intermediates_path": testca.WriteCertsPEM(t, filepath.Join(dir, "device-intermediates.crt"), d.Issuer.Chain()...),
	}}, cert
}

// Fingerprint is the SHA-1 of a certificate's DER, lowercase hex, as
// x509pop's agent IDs and ca:fingerprint selectors write it.
func Fingerprint(c *x509.Certificate) string {
	sum := sha1.Sum(c.Raw) //nolint:gosec // see the import
	return hex.EncodeToString(sum[:])
}

// X509PoPAgentID is the default x509pop agent ID of a device certificate:
// spiffe://<td>/spire/agent/x509pop/<fingerprint>.
func X509PoPAgentID(td spiffeid.TrustDomain, cert *x509.Certificate) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "spire", "agent", "x509pop", Fingerprint(cert))
}
