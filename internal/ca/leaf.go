package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Signing an X509-SVID with x509.CreateCertificate costs two ECDSA
// verifications besides the signature: CreateCertificate checks every
// signature its signer returns (a guard against faulty hardware signers),
// and a P-256 verification costs about twice a signature. For an
// in-memory ECDSA key (disk and memory key managers) that check guards
// against nothing Go's own signing code could get wrong, and it was a third
// of the server's signing CPU in the fleet benchmark (bench/RESULTS.md,
// "Fleet scale"). createLeaf encodes the SVID itself, as CreateCertificate
// would, byte for byte (TestCreateLeafMatchesCreateCertificate), and signs
// it once. Any other signer (a TPM, an RSA key) goes through
// CreateCertificate and keeps the check.

var (
	oidSignatureECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidSignatureECDSAWithSHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidSignatureECDSAWithSHA512 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}

	oidExtensionKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtensionExtendedKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtensionBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtensionSubjectKeyID     = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidExtensionAuthorityKeyID   = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtensionSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}

	oidExtKeyUsageServerAuth = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidExtKeyUsageClientAuth = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

// The ASN.1 structures of RFC 5280, as crypto/x509 marshals them.
type (
	leafCertificate struct {
		TBSCertificate     asn1.RawValue
		SignatureAlgorithm pkix.AlgorithmIdentifier
		SignatureValue     asn1.BitString
	}
	leafTBS struct {
		Version            int `asn1:"optional,explicit,default:0,tag:0"`
		SerialNumber       *big.Int
		SignatureAlgorithm pkix.AlgorithmIdentifier
		Issuer             asn1.RawValue
		Validity           leafValidity
		Subject            asn1.RawValue
		PublicKey          asn1.RawValue
		Extensions         []pkix.Extension `asn1:"omitempty,optional,explicit,tag:3"`
	}
	leafValidity struct {
		NotBefore, NotAfter time.Time
	}
	leafBasicConstraints struct {
		IsCA       bool `asn1:"optional"`
		MaxPathLen int  `asn1:"optional,default:-1"`
	}
	leafAuthKeyID struct {
		ID []byte `asn1:"optional,tag:0"`
	}
)

// leafSupported reports whether createLeaf encodes tmpl exactly as
// x509.CreateCertificate would: the fields SignX509SVID sets, and no
// others.
func leafSupported(tmpl *x509.Certificate) bool {
	return tmpl.SerialNumber != nil && tmpl.SerialNumber.Sign() > 0 && !tmpl.IsCA && tmpl.BasicConstraintsValid &&
		(tmpl.MaxPathLen == 0 || tmpl.MaxPathLen == -1) && !tmpl.MaxPathLenZero &&
		tmpl.KeyUsage == x509.KeyUsageDigitalSignature &&
		len(tmpl.ExtKeyUsage) == 2 && tmpl.ExtKeyUsage[0] == x509.ExtKeyUsageServerAuth && tmpl.ExtKeyUsage[1] == x509.ExtKeyUsageClientAuth &&
		len(tmpl.UnknownExtKeyUsage) == 0 && len(tmpl.URIs) > 0 && len(tmpl.SubjectKeyId) > 0 &&
		len(tmpl.RawSubject) == 0 && len(tmpl.EmailAddresses) == 0 && len(tmpl.IPAddresses) == 0 &&
		len(tmpl.ExtraExtensions) == 0 && len(tmpl.Policies) == 0 && len(tmpl.PolicyIdentifiers) == 0 &&
		len(tmpl.OCSPServer) == 0 && len(tmpl.IssuingCertificateURL) == 0 && len(tmpl.CRLDistributionPoints) == 0 &&
		len(tmpl.PermittedDNSDomains) == 0 && len(tmpl.ExcludedDNSDomains) == 0 &&
		len(tmpl.PermittedIPRanges) == 0 && len(tmpl.ExcludedIPRanges) == 0 &&
		len(tmpl.PermittedEmailAddresses) == 0 && len(tmpl.ExcludedEmailAddresses) == 0 &&
		len(tmpl.PermittedURIDomains) == 0 && len(tmpl.ExcludedURIDomains) == 0
}

// createLeaf returns the DER certificate x509.CreateCertificate(rand,
// tmpl, parent, pub, key) returns for an SVID template (leafSupported),
// signed once with key.
func createLeaf(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key *ecdsa.PrivateKey) ([]byte, error) {
	if !leafSupported(tmpl) {
		return nil, errors.New("ca: template not supported by createLeaf")
	}
	if parent.PublicKey != nil && !key.PublicKey.Equal(parent.PublicKey) {
		return nil, errors.New("x509: provided PrivateKey doesn't match parent's PublicKey")
	}
	var sigAlg asn1.ObjectIdentifier
	var hash crypto.Hash
	switch key.Curve {
	case elliptic.P256():
		sigAlg, hash = oidSignatureECDSAWithSHA256, crypto.SHA256
	case elliptic.P384():
		sigAlg, hash = oidSignatureECDSAWithSHA384, crypto.SHA384
	case elliptic.P521():
		sigAlg, hash = oidSignatureECDSAWithSHA512, crypto.SHA512
	default:
		return nil, errors.New("x509: unknown elliptic curve")
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	subject, err := asn1.Marshal(tmpl.Subject.ToRDNSequence())
	if err != nil {
		return nil, err
	}
	issuer := parent.RawSubject
	if len(issuer) == 0 {
		if issuer, err = asn1.Marshal(parent.Subject.ToRDNSequence()); err != nil {
			return nil, err
		}
	}
	authKeyID := tmpl.AuthorityKeyId
	if !bytes.Equal(issuer, subject) && len(parent.SubjectKeyId) > 0 {
		authKeyID = parent.SubjectKeyId
	}
	exts, err := leafExtensions(tmpl, authKeyID, len(subject) == 2)
	if err != nil {
		return nil, err
	}
	algo := pkix.AlgorithmIdentifier{Algorithm: sigAlg}
	tbs, err := asn1.Marshal(leafTBS{
		Version:            2,
		SerialNumber:       tmpl.SerialNumber,
		SignatureAlgorithm: algo,
		Issuer:             asn1.RawValue{FullBytes: issuer},
		Validity:           leafValidity{tmpl.NotBefore.UTC(), tmpl.NotAfter.UTC()},
		Subject:            asn1.RawValue{FullBytes: subject},
		PublicKey:          asn1.RawValue{FullBytes: spki},
		Extensions:         exts,
	})
	if err != nil {
		return nil, err
	}
	h := hash.New()
	h.Write(tbs)
	sig, err := key.Sign(rand.Reader, h.Sum(nil), hash)
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(leafCertificate{
		TBSCertificate:     asn1.RawValue{FullBytes: tbs},
		SignatureAlgorithm: algo,
		SignatureValue:     asn1.BitString{Bytes: sig, BitLength: len(sig) * 8},
	})
}

// leafExtensions are the extensions of an SVID template, in
// CreateCertificate's order.
func leafExtensions(tmpl *x509.Certificate, authKeyID []byte, subjectIsEmpty bool) ([]pkix.Extension, error) {
	ku, err := asn1.Marshal(asn1.BitString{Bytes: []byte{0x80}, BitLength: 1}) // digitalSignature
	if err != nil {
		return nil, err
	}
	eku, err := asn1.Marshal([]asn1.ObjectIdentifier{oidExtKeyUsageServerAuth, oidExtKeyUsageClientAuth})
	if err != nil {
		return nil, err
	}
	bc, err := asn1.Marshal(leafBasicConstraints{IsCA: false, MaxPathLen: -1})
	if err != nil {
		return nil, err
	}
	skid, err := asn1.Marshal(tmpl.SubjectKeyId)
	if err != nil {
		return nil, err
	}
	exts := []pkix.Extension{
		{Id: oidExtensionKeyUsage, Critical: true, Value: ku},
		{Id: oidExtensionExtendedKeyUsage, Value: eku},
		{Id: oidExtensionBasicConstraints, Critical: true, Value: bc},
		{Id: oidExtensionSubjectKeyID, Value: skid},
	}
	if len(authKeyID) > 0 {
		akid, err := asn1.Marshal(leafAuthKeyID{authKeyID})
		if err != nil {
			return nil, err
		}
		exts = append(exts, pkix.Extension{Id: oidExtensionAuthorityKeyID, Value: akid})
	}
	// subjectAltName: DNS names (tag 2), then URIs (tag 6).
	names := make([]asn1.RawValue, 0, len(tmpl.DNSNames)+len(tmpl.URIs))
	for _, n := range tmpl.DNSNames {
		if !isIA5(n) {
			return nil, fmt.Errorf("x509: %q cannot be encoded as an IA5String", n)
		}
		names = append(names, asn1.RawValue{Tag: 2, Class: asn1.ClassContextSpecific, Bytes: []byte(n)})
	}
	for _, u := range tmpl.URIs {
		s := u.String()
		if !isIA5(s) {
			return nil, fmt.Errorf("x509: %q cannot be encoded as an IA5String", s)
		}
		names = append(names, asn1.RawValue{Tag: 6, Class: asn1.ClassContextSpecific, Bytes: []byte(s)})
	}
	san, err := asn1.Marshal(names)
	if err != nil {
		return nil, err
	}
	return append(exts, pkix.Extension{Id: oidExtensionSubjectAltName, Critical: subjectIsEmpty, Value: san}), nil
}

func isIA5(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
