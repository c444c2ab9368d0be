// Package pkcs7 verifies PKCS #7 (RFC 2315) / CMS (RFC 5652) SignedData
// messages, just what the cloud node attestors' signed documents need (the
// server halves only; the agent never links it): exactly one signer, an RSA
// PKCS #1 v1.5 signature with SHA-256, -384 or -512, with or without signed
// attributes, and the signed content inside (not detached). AWS encodes its
// messages in BER with indefinite lengths, so the input is first re-encoded
// in DER (toDER).
//
// Parse checks the structure; the caller then chooses the key: aws_iid
// verifies with the key it trusts for the document's region (Verify),
// azure_imds with the certificate the message carries for its one signer
// (Signer, found by issuer and serial number, never by its place in the
// certificate bag), whose chain the caller checks.
package pkcs7

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	_ "crypto/sha256" // the digests PKCS #7 signatures use
	_ "crypto/sha512"
)

var (
	oidData          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidSignedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidContentType   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 3}
	oidMessageDigest = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
	oidRSA           = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}

	digestOIDs = map[string]crypto.Hash{
		"2.16.840.1.101.3.4.2.1": crypto.SHA256,
		"2.16.840.1.101.3.4.2.2": crypto.SHA384,
		"2.16.840.1.101.3.4.2.3": crypto.SHA512,
	}
	// rsaWithOIDs are the RSA signature algorithms that name their digest.
	rsaWithOIDs = map[string]crypto.Hash{
		"1.2.840.113549.1.1.11": crypto.SHA256,
		"1.2.840.113549.1.1.12": crypto.SHA384,
		"1.2.840.113549.1.1.13": crypto.SHA512,
	}
)

type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"explicit,optional,tag:0"`
}

type signedData struct {
	Version          int
	DigestAlgorithms []pkix.AlgorithmIdentifier `asn1:"set"`
	ContentInfo      contentInfo
	Certificates     asn1.RawValue `asn1:"optional,tag:0"`
	CRLs             asn1.RawValue `asn1:"optional,tag:1"`
	SignerInfos      []signerInfo  `asn1:"set"`
}

type signerInfo struct {
	Version            int
	SignerID           asn1.RawValue
	DigestAlgorithm    pkix.AlgorithmIdentifier
	SignedAttributes   asn1.RawValue `asn1:"optional,tag:0"`
	SignatureAlgorithm pkix.AlgorithmIdentifier
	Signature          []byte
	UnsignedAttributes asn1.RawValue `asn1:"optional,tag:1"`
}

type attribute struct {
	Type   asn1.ObjectIdentifier
	Values asn1.RawValue `asn1:"set"`
}

// ErrMalformed prefixes what is wrong with a message's structure; other
// errors of Verify are signatures that do not verify.
var ErrMalformed = errors.New("not a PKCS #7 SignedData of a document")

// ErrSignerCount: the message has no signer or more than one (wraps
// ErrMalformed).
var ErrSignerCount = fmt.Errorf("%w: not exactly one signer", ErrMalformed)

// MaxSize bounds a decoded message.
const MaxSize = 32 << 10

// Message is a parsed SignedData with one signer.
type Message struct {
	// Content is the signed content.
	Content []byte
	// Certificates is the message's certificate bag, in its order (none
	// of them trusted).
	Certificates []*x509.Certificate
	si           signerInfo
	hash         crypto.Hash
}

// Parse checks that der is a SignedData of data content with exactly one
// signer (a message with two signers is refused, whichever would verify).
func Parse(der []byte) (*Message, error) {
	if len(der) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrMalformed, len(der), MaxSize)
	}
	der, err := toDER(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	var ci contentInfo
	if rest, err := asn1.Unmarshal(der, &ci); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("%w: ContentInfo: %v", ErrMalformed, errOr(err, "trailing data"))
	}
	if !ci.ContentType.Equal(oidSignedData) {
		return nil, fmt.Errorf("%w: content type %s", ErrMalformed, ci.ContentType)
	}
	var sd signedData
	if rest, err := asn1.Unmarshal(ci.Content.Bytes, &sd); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("%w: SignedData: %v", ErrMalformed, errOr(err, "trailing data"))
	}
	if !sd.ContentInfo.ContentType.Equal(oidData) {
		return nil, fmt.Errorf("%w: the signed content's type is %s, not data", ErrMalformed, sd.ContentInfo.ContentType)
	}
	var content []byte
	if rest, err := asn1.Unmarshal(sd.ContentInfo.Content.Bytes, &content); err != nil || len(rest) > 0 || len(sd.ContentInfo.Content.Bytes) == 0 {
		return nil, fmt.Errorf("%w: no signed content (a detached signature?)", ErrMalformed)
	}
	if len(sd.SignerInfos) != 1 {
		return nil, fmt.Errorf("%w: %d signers", ErrSignerCount, len(sd.SignerInfos))
	}
	m := &Message{Content: content, si: sd.SignerInfos[0]}
	if len(sd.Certificates.Bytes) > 0 {
		certs, err := x509.ParseCertificates(sd.Certificates.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: certificates: %v", ErrMalformed, err)
		}
		m.Certificates = certs
	}
	hash, ok := digestOIDs[m.si.DigestAlgorithm.Algorithm.String()]
	if !ok {
		return nil, fmt.Errorf("%w: digest algorithm %s (SHA-256, -384 or -512 expected)", ErrMalformed, m.si.DigestAlgorithm.Algorithm)
	}
	switch alg := m.si.SignatureAlgorithm.Algorithm; {
	case alg.Equal(oidRSA):
	case rsaWithOIDs[alg.String()] == hash:
	default:
		return nil, fmt.Errorf("%w: signature algorithm %s with digest %s", ErrMalformed, alg, m.si.DigestAlgorithm.Algorithm)
	}
	m.hash = hash
	return m, nil
}

// issuerAndSerial is a SignerIdentifier's issuerAndSerialNumber.
type issuerAndSerial struct {
	Issuer asn1.RawValue
	Serial *big.Int
}

// Signer returns the certificate of the bag the signer names (by issuer
// and serial number, or by subject key identifier), or an error if the bag
// has none. It says nothing of the certificate's trust, nor of the
// signature.
func (m *Message) Signer() (*x509.Certificate, error) {
	id := m.si.SignerID
	switch {
	case id.Class == asn1.ClassUniversal && id.Tag == asn1.TagSequence:
		var is issuerAndSerial
		if rest, err := asn1.Unmarshal(id.FullBytes, &is); err != nil || len(rest) > 0 || is.Serial == nil {
			return nil, fmt.Errorf("%w: the signer's issuer and serial number: %v", ErrMalformed, errOr(err, "trailing data"))
		}
		for _, c := range m.Certificates {
			if c.SerialNumber.Cmp(is.Serial) == 0 && bytes.Equal(c.RawIssuer, is.Issuer.FullBytes) {
				return c, nil
			}
		}
	case id.Class == asn1.ClassContextSpecific && id.Tag == 0:
		for _, c := range m.Certificates {
			if len(c.SubjectKeyId) > 0 && bytes.Equal(c.SubjectKeyId, id.Bytes) {
				return c, nil
			}
		}
	default:
		return nil, fmt.Errorf("%w: the signer identifier is neither an issuer and serial number nor a key identifier", ErrMalformed)
	}
	return nil, fmt.Errorf("%w: the message carries no certificate of its signer", ErrMalformed)
}

// Verify checks the signature with key.
func (m *Message) Verify(key *rsa.PublicKey) error {
	si, hash := m.si, m.hash
	h := hash.New()
	h.Write(m.Content)
	contentDigest := h.Sum(nil)

	signed := contentDigest
	if len(si.SignedAttributes.FullBytes) > 0 {
		// The signature covers the attributes, encoded as a SET OF (the
		// [0] IMPLICIT tag replaced), which must include the content's
		// type and digest.
		attrs := bytes.Clone(si.SignedAttributes.FullBytes)
		attrs[0] = 0x31
		var list []attribute
		if rest, err := asn1.UnmarshalWithParams(attrs, &list, "set"); err != nil || len(rest) > 0 {
			return fmt.Errorf("%w: signed attributes: %v", ErrMalformed, errOr(err, "trailing data"))
		}
		var sawType, sawDigest bool
		for _, a := range list {
			switch {
			case a.Type.Equal(oidContentType):
				var t asn1.ObjectIdentifier
				if _, err := asn1.Unmarshal(a.Values.Bytes, &t); err != nil || !t.Equal(oidData) {
					return fmt.Errorf("%w: the content-type attribute is not data", ErrMalformed)
				}
				sawType = true
			case a.Type.Equal(oidMessageDigest):
				var d []byte
				if _, err := asn1.Unmarshal(a.Values.Bytes, &d); err != nil {
					return fmt.Errorf("%w: message-digest attribute: %v", ErrMalformed, err)
				}
				if subtle.ConstantTimeCompare(d, contentDigest) != 1 {
					return errors.New("the message-digest attribute is not the digest of the signed content")
				}
				sawDigest = true
			}
		}
		if !sawType || !sawDigest {
			return fmt.Errorf("%w: the signed attributes lack the content type or message digest", ErrMalformed)
		}
		h := hash.New()
		h.Write(attrs)
		signed = h.Sum(nil)
	}
	if err := rsa.VerifyPKCS1v15(key, hash, signed, si.Signature); err != nil {
		return errors.New("the signature does not verify")
	}
	return nil
}

func errOr(err error, msg string) error {
	if err != nil {
		return err
	}
	return errors.New(msg)
}

// maxBERDepth bounds the nesting of a BER message.
const maxBERDepth = 16

// toDER re-encodes BER as DER as far as SignedData needs it: definite
// lengths everywhere, and constructed OCTET STRINGs (content streamed in
// pieces) joined into one primitive OCTET STRING. A message already in DER
// comes back unchanged.
func toDER(ber []byte) ([]byte, error) {
	out, rest, err := berElement(ber, 0)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimRight(rest, "\x00")) > 0 {
		return nil, errors.New("trailing data after the message")
	}
	return out, nil
}

// berElement converts the element at the start of b and returns it and
// what follows it.
func berElement(b []byte, depth int) (der, rest []byte, err error) {
	if depth > maxBERDepth {
		return nil, nil, errors.New("nested too deeply")
	}
	if len(b) < 2 {
		return nil, nil, errors.New("truncated element")
	}
	// Identifier octets: one, or more for high tag numbers.
	idLen := 1
	if b[0]&0x1f == 0x1f {
		for idLen < len(b) && b[idLen]&0x80 != 0 {
			idLen++
			if idLen > 4 {
				return nil, nil, errors.New("tag number too large")
			}
		}
		idLen++
	}
	if idLen >= len(b) {
		return nil, nil, errors.New("truncated element")
	}
	id := b[:idLen]
	constructed := b[0]&0x20 != 0
	lenByte := b[idLen]
	body := b[idLen+1:]
	var content []byte
	var parts [][]byte // the children's DER, when constructed
	switch {
	case lenByte == 0x80: // indefinite: constructed only, ends with 00 00
		if !constructed {
			return nil, nil, errors.New("indefinite length on a primitive element")
		}
		for {
			if len(body) < 2 {
				return nil, nil, errors.New("missing end-of-contents")
			}
			if body[0] == 0 && body[1] == 0 {
				rest = body[2:]
				break
			}
			var kid []byte
			kid, body, err = berElement(body, depth+1)
			if err != nil {
				return nil, nil, err
			}
			parts = append(parts, kid)
		}
	case lenByte&0x80 == 0:
		n := int(lenByte)
		if n > len(body) {
			return nil, nil, errors.New("length beyond the data")
		}
		content, rest = body[:n], body[n:]
	default:
		k := int(lenByte & 0x7f)
		if k > 3 || k > len(body) {
			return nil, nil, errors.New("length too large")
		}
		n := 0
		for _, c := range body[:k] {
			n = n<<8 | int(c)
		}
		body = body[k:]
		if n > len(body) {
			return nil, nil, errors.New("length beyond the data")
		}
		content, rest = body[:n], body[n:]
	}
	if constructed && content != nil {
		for len(content) > 0 {
			var kid []byte
			kid, content, err = berElement(content, depth+1)
			if err != nil {
				return nil, nil, err
			}
			parts = append(parts, kid)
		}
	}
	if !constructed {
		return encodeTLV(id, content), rest, nil
	}
	if len(id) == 1 && id[0] == 0x24 { // constructed OCTET STRING: join the pieces
		var joined []byte
		for _, p := range parts {
			if p[0] != 0x04 {
				return nil, nil, errors.New("a piece of an OCTET STRING is not an OCTET STRING")
			}
			var v asn1.RawValue
			if _, err := asn1.Unmarshal(p, &v); err != nil {
				return nil, nil, err
			}
			joined = append(joined, v.Bytes...)
		}
		return encodeTLV([]byte{0x04}, joined), rest, nil
	}
	return encodeTLV(id, bytes.Join(parts, nil)), rest, nil
}

// encodeTLV writes an element with a definite (minimal) length.
func encodeTLV(id, content []byte) []byte {
	n := len(content)
	out := append([]byte(nil), id...)
	switch {
	case n < 0x80:
		out = append(out, byte(n))
	case n < 0x100:
		out = append(out, 0x81, byte(n))
	case n < 0x10000:
		out = append(out, 0x82, byte(n>>8), byte(n))
	default:
		out = append(out, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	return append(out, content...)
}
