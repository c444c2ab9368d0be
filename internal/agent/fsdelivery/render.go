package fsdelivery

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
)

// File names inside a generation.
const (
	SVIDFile       = "svid.pem"
	KeyFile        = "svid.key"
	BundleFile     = "bundle.pem"
	BundleJSONFile = "bundle.json"
)

// FederatedBundleFile returns the PEM file name of a federated trust
// domain's bundle; FederatedBundleJSONFile its SPIFFE bundle JSON.
func FederatedBundleFile(trustDomain string) string {
	return "federated_bundle." + trustDomain + ".pem"
}

// FederatedBundleJSONFile: see FederatedBundleFile.
func FederatedBundleJSONFile(trustDomain string) string {
	return "federated_bundle." + trustDomain + ".json"
}

// file is one file of a generation.
type file struct {
	name   string
	data   []byte
	secret bool // the private key: always 0600
}

// render produces the files of a generation, the key first.
func render(st *state) ([]file, error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(st.svid.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	files := []file{
		{name: KeyFile, data: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), secret: true},
		{name: SVIDFile, data: certsPEM(st.svid.Chain)},
	}
	add := func(pemName, jsonName string, b *spiffebundle.Bundle) error {
		doc, err := bundleJSON(b)
		if err != nil {
			return fmt.Errorf("marshal bundle of %q: %w", b.TrustDomain().Name(), err)
		}
		files = append(files, file{name: pemName, data: certsPEM(b.X509Authorities())}, file{name: jsonName, data: doc})
		return nil
	}
	if err := add(BundleFile, BundleJSONFile, st.bundle); err != nil {
		return nil, err
	}
	for _, b := range st.federated {
		td := b.TrustDomain().Name()
		if err := add(FederatedBundleFile(td), FederatedBundleJSONFile(td), b); err != nil {
			return nil, err
		}
	}
	return files, nil
}

func certsPEM(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

// bundleJSON is the SPIFFE bundle document of b with its keys in a stable
// order (go-spiffe's Marshal orders JWT authorities by map iteration), so
// an unchanged bundle renders to the same bytes and causes no rotation.
func bundleJSON(b *spiffebundle.Bundle) ([]byte, error) {
	raw, err := b.Marshal()
	if err != nil {
		return nil, err
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	keys := []json.RawMessage{}
	if k, ok := doc["keys"]; ok {
		if err := json.Unmarshal(k, &keys); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(keys, func(a, b json.RawMessage) int { return bytes.Compare(a, b) })
	sorted, err := json.Marshal(keys)
	if err != nil {
		return nil, err
	}
	doc["keys"] = sorted
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}
