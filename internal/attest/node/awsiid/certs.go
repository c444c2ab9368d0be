package awsiid

import (
	"crypto/rsa"
	"crypto/x509"
	"embed"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// The signature forms of an instance identity document.
const (
	// FormRSASHA256 is the "signature" form: RSA PKCS #1 v1.5 over the
	// SHA-256 of the document.
	FormRSASHA256 = "rsa-sha256"
	// FormPKCS7 is the "rsa2048" form: a PKCS #7 SignedData holding the
	// document, signed with RSA-2048.
	FormPKCS7 = "pkcs7"
)

// anyRegion is the Regions value of a certificate that verifies documents
// of every region that has no certificate of its own.
const anyRegion = "*"

// builtIn holds AWS's public certificates for instance identity documents,
// one file per partition, as AWS publishes them ("AWS public certificates"
// in the EC2 user guide; the set SPIRE 1.15.3 ships). Each PEM block says
// which signature form it verifies (Form) and for which regions (Regions,
// "*": any region without its own); Bits and Expires are informational.
//
//go:embed awscerts/*.pem
var builtIn embed.FS

// Certificates are the public certificates that verify documents, by
// signature form and region.
type Certificates struct {
	byForm map[string]map[string]*rsa.PublicKey
}

// BuiltInCertificates returns AWS's certificates for the regions of a
// partition.
func BuiltInCertificates(partition string) (*Certificates, error) {
	if !slices.Contains(Partitions, partition) {
		return nil, fmt.Errorf("unknown AWS partition %q (one of %s)", partition, strings.Join(Partitions, ", "))
	}
	data, err := builtIn.ReadFile("awscerts/" + partition + ".pem")
	if err != nil {
		return nil, fmt.Errorf("built-in certificates of partition %s: %w", partition, err)
	}
	return ParseCertificates(data)
}

// ParseCertificates reads PEM CERTIFICATE blocks with RSA keys (other
// blocks are skipped). A block's optional headers restrict it: "Form:
// rsa-sha256" or "Form: pkcs7" (absent: both forms), "Regions: <region>
// ..." separated by spaces or commas (absent, or "*": every region without
// a certificate of its own). It fails when there is no certificate.
func ParseCertificates(data []byte) (*Certificates, error) {
	c := &Certificates{byForm: map[string]map[string]*rsa.PublicKey{}}
	n := 0
	for i := 1; ; i++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", i, err)
		}
		key, ok := cert.PublicKey.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("PEM block %d: the certificate has a %s key; AWS signs documents with RSA", i, cert.PublicKeyAlgorithm)
		}
		forms := []string{FormRSASHA256, FormPKCS7}
		if f, ok := b.Headers["Form"]; ok {
			if f != FormRSASHA256 && f != FormPKCS7 {
				return nil, fmt.Errorf("PEM block %d: Form %q is neither %s nor %s", i, f, FormRSASHA256, FormPKCS7)
			}
			forms = []string{f}
		}
		regions := strings.FieldsFunc(b.Headers["Regions"], func(r rune) bool { return r == ' ' || r == ',' || r == '\t' })
		if len(regions) == 0 {
			regions = []string{anyRegion}
		}
		for _, r := range regions {
			if r != anyRegion && !reRegion.MatchString(r) {
				return nil, fmt.Errorf("PEM block %d: %q is not an AWS region name", i, r)
			}
			for _, f := range forms {
				m := c.byForm[f]
				if m == nil {
					m = map[string]*rsa.PublicKey{}
					c.byForm[f] = m
				}
				if _, dup := m[r]; dup {
					return nil, fmt.Errorf("PEM block %d: a second %s certificate for region %s", i, f, r)
				}
				m[r] = key
			}
		}
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return c, nil
}

// lookup returns the key verifying documents of region in form, or nil.
func (c *Certificates) lookup(form, region string) *rsa.PublicKey {
	m := c.byForm[form]
	if k, ok := m[region]; ok {
		return k
	}
	return m[anyRegion]
}

// Regions returns the regions with a certificate of their own for form,
// sorted (for messages and tests).
func (c *Certificates) Regions(form string) []string {
	var out []string
	for r := range c.byForm[form] {
		if r != anyRegion {
			out = append(out, r)
		}
	}
	slices.Sort(out)
	return out
}

// readFile reads a file of at most limit bytes.
func readFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}
