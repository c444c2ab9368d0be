// Package cloudfake holds small servers that speak the real wire formats of
// the cloud services Sigil's cloud node attestors talk to, for tests (no
// cloud is reachable from here): AWS's instance metadata service (IMDSv2)
// and EC2, IAM and STS Query APIs (XML, Signature Version 4 checked), GCP's
// metadata server, Google's certificate endpoints, OAuth token endpoint and
// Compute API, and Azure's IMDS, Azure AD keys and Resource Manager. Each
// signs with test keys that the test configures sigil-server to trust.
//
// Import it only from test code.
package cloudfake

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"encoding/xml"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rsaKeys are generated once per test binary (RSA generation is slow).
var (
	rsaKeysMu sync.Mutex
	rsaKeys   = map[string]*rsa.PrivateKey{}
)

// RSAKey returns the test binary's RSA key of that name and size,
// generated at its first use.
func RSAKey(tb testing.TB, name string, bits int) *rsa.PrivateKey {
	tb.Helper()
	rsaKeysMu.Lock()
	defer rsaKeysMu.Unlock()
	name = fmt.Sprintf("%s/%d", name, bits)
	if k, ok := rsaKeys[name]; ok {
		return k
	}
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		tb.Fatal(err)
	}
	rsaKeys[name] = k
	return k
}

// selfSigned makes a long-lived self-signed certificate for key, as AWS's
// and Google's signing certificates are.
func selfSigned(tb testing.TB, key *rsa.PrivateKey, cn string) *x509.Certificate {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"Sigil test cloud"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// AWSSigner signs instance identity documents as AWS does for one region
// (or for every region): an RSA-SHA256 signature with one key (AWS's
// "RSA" certificate) and a PKCS #7 SignedData with another (its
// "RSA-2048" certificate).
type AWSSigner struct {
	Regions            []string // nil: every region
	RSAKey, PKCS7Key   *rsa.PrivateKey
	RSACert, PKCS7Cert *x509.Certificate
}

// NewAWSSigner returns a signer with the test binary's keys of that name.
func NewAWSSigner(tb testing.TB, name string, regions ...string) *AWSSigner {
	tb.Helper()
	s := &AWSSigner{Regions: regions, RSAKey: RSAKey(tb, name+"-rsa", 1024), PKCS7Key: RSAKey(tb, name+"-pkcs7", 2048)}
	s.RSACert = selfSigned(tb, s.RSAKey, name+" RSA")
	s.PKCS7Cert = selfSigned(tb, s.PKCS7Key, name+" RSA-2048")
	return s
}

// CertificatesPEM is the signer's certificates in the format of aws_iid's
// signing_certificates_path (Form and Regions headers).
func (s *AWSSigner) CertificatesPEM() []byte {
	var b bytes.Buffer
	regions := "*"
	if len(s.Regions) > 0 {
		regions = strings.Join(s.Regions, " ")
	}
	_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"Form": "rsa-sha256", "Regions": regions}, Bytes: s.RSACert.Raw})
	_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"Form": "pkcs7", "Regions": regions}, Bytes: s.PKCS7Cert.Raw})
	return b.Bytes()
}

// WriteCertificates writes CertificatesPEM of the signers to dir/name and
// returns its path.
func WriteCertificates(tb testing.TB, path string, signers ...*AWSSigner) string {
	tb.Helper()
	var b []byte
	for _, s := range signers {
		b = append(b, s.CertificatesPEM()...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// SignRSA is the "signature" of a document: base64 RSA PKCS #1 v1.5 over
// its SHA-256.
func (s *AWSSigner) SignRSA(doc []byte) string {
	sum := sha256.Sum256(doc)
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.RSAKey, crypto.SHA256, sum[:])
	if err != nil {
		panic(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

// SignPKCS7 is the "rsa2048" signature of a document: base64 of a PKCS #7
// SignedData holding it, SHA-256 with signed attributes (content type,
// signing time, message digest), as AWS's.
func (s *AWSSigner) SignPKCS7(doc []byte) string {
	return base64.StdEncoding.EncodeToString(PKCS7SignedData(doc, s.PKCS7Key, s.PKCS7Cert))
}

// PKCS7SignedData builds a DER PKCS #7 SignedData of content signed by key
// (RSA PKCS #1 v1.5, SHA-256, with signed attributes), naming cert as the
// signer and carrying no certificate.
func PKCS7SignedData(content []byte, key *rsa.PrivateKey, cert *x509.Certificate) []byte {
	return PKCS7SignedDataBy(content, []PKCS7Signer{{Key: key, Cert: cert}}, nil)
}

// PKCS7Signer is one signer of PKCS7SignedDataBy: its key, and the
// certificate its SignerInfo names (by issuer and serial number).
type PKCS7Signer struct {
	Key  *rsa.PrivateKey
	Cert *x509.Certificate
}

// PKCS7SignedDataBy builds a DER PKCS #7 SignedData of content with one
// SignerInfo per signer, carrying the certificates of bag in that order.
func PKCS7SignedDataBy(content []byte, signers []PKCS7Signer, bag []*x509.Certificate) []byte {
	oid := func(s ...int) asn1.ObjectIdentifier { return asn1.ObjectIdentifier(s) }
	var (
		oidData      = oid(1, 2, 840, 113549, 1, 7, 1)
		oidSigned    = oid(1, 2, 840, 113549, 1, 7, 2)
		oidSHA256    = oid(2, 16, 840, 1, 101, 3, 4, 2, 1)
		oidRSASHA256 = oid(1, 2, 840, 113549, 1, 1, 11)
	)
	must := func(b []byte, err error) []byte {
		if err != nil {
			panic(err)
		}
		return b
	}
	digest := sha256.Sum256(content)
	attr := func(t asn1.ObjectIdentifier, v any) []byte {
		val := must(asn1.Marshal(v))
		set := must(asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: val}))
		return must(asn1.Marshal(struct {
			Type   asn1.ObjectIdentifier
			Values asn1.RawValue
		}{t, asn1.RawValue{FullBytes: set}}))
	}
	attrs := [][]byte{
		attr(oid(1, 2, 840, 113549, 1, 9, 3), oidData),
		attr(oid(1, 2, 840, 113549, 1, 9, 5), time.Now().UTC().Truncate(time.Second)),
		attr(oid(1, 2, 840, 113549, 1, 9, 4), digest[:]),
	}
	// DER orders a SET OF by encoding.
	sort.Slice(attrs, func(i, j int) bool { return bytes.Compare(attrs[i], attrs[j]) < 0 })
	attrSet := must(asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: bytes.Join(attrs, nil)}))
	attrDigest := sha256.Sum256(attrSet)
	signedAttrs := bytes.Clone(attrSet)
	signedAttrs[0] = 0xa0 // [0] IMPLICIT

	type algID struct {
		Algorithm  asn1.ObjectIdentifier
		Parameters asn1.RawValue `asn1:"optional"`
	}
	var infos [][]byte
	for _, sg := range signers {
		sig := must(rsa.SignPKCS1v15(rand.Reader, sg.Key, crypto.SHA256, attrDigest[:]))
		issuerSerial := must(asn1.Marshal(struct {
			Issuer asn1.RawValue
			Serial *big.Int
		}{asn1.RawValue{FullBytes: sg.Cert.RawIssuer}, sg.Cert.SerialNumber}))
		infos = append(infos, must(asn1.Marshal(struct {
			Version      int
			IssuerSerial asn1.RawValue
			Digest       algID
			Attrs        asn1.RawValue
			SigAlg       algID
			Signature    []byte
		}{1, asn1.RawValue{FullBytes: issuerSerial}, algID{Algorithm: oidSHA256}, asn1.RawValue{FullBytes: signedAttrs}, algID{Algorithm: oidRSASHA256}, sig})))
	}
	sort.Slice(infos, func(i, j int) bool { return bytes.Compare(infos[i], infos[j]) < 0 })
	explicit0 := func(inner []byte) asn1.RawValue {
		return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: inner}
	}
	set := func(inner []byte) asn1.RawValue {
		return asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: inner}
	}
	type contentInfo struct {
		Type    asn1.ObjectIdentifier
		Content asn1.RawValue
	}
	parts := [][]byte{
		must(asn1.Marshal(1)),
		must(asn1.Marshal(set(must(asn1.Marshal(algID{Algorithm: oidSHA256}))))),
		must(asn1.Marshal(contentInfo{oidData, explicit0(must(asn1.Marshal(content)))})),
	}
	if len(bag) > 0 {
		var raw []byte
		for _, c := range bag {
			raw = append(raw, c.Raw...)
		}
		parts = append(parts, must(asn1.Marshal(explicit0(raw)))) // [0] IMPLICIT SET OF Certificate
	}
	parts = append(parts, must(asn1.Marshal(set(bytes.Join(infos, nil)))))
	sd := must(asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: bytes.Join(parts, nil)}))
	return must(asn1.Marshal(contentInfo{oidSigned, explicit0(sd)}))
}

// Instance is an EC2 instance of the fake cloud.
type Instance struct {
	Account, Region, ID string
	AZ, ImageID         string // default <region>a, ami-0123456789abcdef0
	Tags                map[string]string
	SecurityGroups      map[string]string // ID -> name
	// InstanceProfile is the instance profile's name ("" for none); its
	// roles are Roles (names).
	InstanceProfile string
	Roles           []string
	// State is "running" by default.
	State string
	// RootAttachSkew is how long after the primary network interface the
	// root volume was attached (0: 2 s, a fresh instance).
	RootAttachSkew time.Duration
	// InstanceStore makes the root device an instance store.
	InstanceStore bool
	// Signer signs the instance's document (nil: the cloud's).
	Signer *AWSSigner

	imds *httptest.Server
	// IMDSRequests counts the metadata requests it answered.
	IMDSRequests atomic.Int64
}

// Document returns the instance identity document, formatted as AWS does.
func (i *Instance) Document() []byte {
	return fmt.Appendf(nil, `{
  "accountId" : %q,
  "architecture" : "x86_64",
  "availabilityZone" : %q,
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : %q,
  "instanceId" : %q,
  "instanceType" : "t3.micro",
  "kernelId" : null,
  "pendingTime" : "2025-01-02T03:04:05Z",
  "privateIp" : "10.0.1.23",
  "ramdiskId" : null,
  "region" : %q,
  "version" : "2017-09-30"
}`, i.Account, i.AZ, i.ImageID, i.ID, i.Region)
}

// IMDSURL is the instance's metadata service (ec2_metadata_endpoint).
func (i *Instance) IMDSURL() string { return i.imds.URL }

// AWS is a fake AWS: instances with their metadata services, and one
// endpoint for the EC2, IAM and STS Query APIs.
type AWS struct {
	tb     testing.TB
	Signer *AWSSigner
	api    *httptest.Server

	mu        sync.Mutex
	instances []*Instance
	creds     map[string]awsCreds // access key ID -> credentials
	// roles: account -> role names the home credentials may assume.
	roles map[string][]string
	// Calls counts API calls by action (DescribeInstances, ...).
	calls map[string]int
}

type awsCreds struct {
	secret, token string
	account       string // the account whose resources they see
}

// Home credentials: the server's access_key_id / secret_access_key, of
// HomeAccount.
const (
	AWSAccessKeyID     = "AKIASIGILTESTKEY0001"
	AWSSecretAccessKey = "sigil-test-secret-access-key-0001"
	HomeAccount        = "111122223333"
)

// NewAWS starts the fake AWS; its servers stop at the test's end.
func NewAWS(tb testing.TB) *AWS {
	tb.Helper()
	a := &AWS{
		tb:     tb,
		Signer: NewAWSSigner(tb, "aws-test"),
		creds:  map[string]awsCreds{AWSAccessKeyID: {secret: AWSSecretAccessKey, account: HomeAccount}},
		roles:  map[string][]string{},
		calls:  map[string]int{},
	}
	a.api = httptest.NewServer(http.HandlerFunc(a.serveAPI))
	tb.Cleanup(a.api.Close)
	return a
}

// APIURL is the EC2, IAM and STS endpoint (ec2_endpoint, iam_endpoint,
// sts_endpoint).
func (a *AWS) APIURL() string { return a.api.URL }

// AllowAssumeRole lets the home credentials assume role in account.
func (a *AWS) AllowAssumeRole(account, role string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.roles[account] = append(a.roles[account], role)
}

// Calls returns how many times the API served action.
func (a *AWS) Calls(action string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[action]
}

// WriteCertificates writes the cloud signer's certificates (and those of
// more signers) for signing_certificates_path.
func (a *AWS) WriteCertificates(tb testing.TB, dir string, more ...*AWSSigner) string {
	return WriteCertificates(tb, filepath.Join(dir, "aws-iid-certs.pem"), append([]*AWSSigner{a.Signer}, more...)...)
}

// ServerPluginData is the server's plugin_data for the fake: its
// credentials, endpoints and certificate file (written into dir).
func (a *AWS) ServerPluginData(tb testing.TB, dir string) map[string]any {
	return map[string]any{
		"access_key_id":             AWSAccessKeyID,
		"secret_access_key":         AWSSecretAccessKey,
		"ec2_endpoint":              a.APIURL(),
		"iam_endpoint":              a.APIURL(),
		"sts_endpoint":              a.APIURL(),
		"signing_certificates_path": a.WriteCertificates(tb, dir),
	}
}

// AddInstance adds an instance and starts its metadata service.
func (a *AWS) AddInstance(i *Instance) *Instance {
	if i.Account == "" {
		i.Account = HomeAccount
	}
	if i.Region == "" {
		i.Region = "us-east-1"
	}
	if i.AZ == "" {
		i.AZ = i.Region + "a"
	}
	if i.ImageID == "" {
		i.ImageID = "ami-0123456789abcdef0"
	}
	if i.State == "" {
		i.State = "running"
	}
	if i.Signer == nil {
		i.Signer = a.Signer
	}
	i.imds = httptest.NewServer(&imds{inst: i, tokens: map[string]time.Time{}})
	a.tb.Cleanup(i.imds.Close)
	a.mu.Lock()
	a.instances = append(a.instances, i)
	a.mu.Unlock()
	return i
}

// imds is an instance's metadata service, IMDSv2 only (HttpTokens
// "required"): a session token from PUT /latest/api/token, then GETs with
// it.
type imds struct {
	inst   *Instance
	mu     sync.Mutex
	tokens map[string]time.Time
}

func (m *imds) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.inst.IMDSRequests.Add(1)
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut {
			http.Error(w, "", http.StatusMethodNotAllowed)
			return
		}
		if r.Header.Get("X-Forwarded-For") != "" {
			http.Error(w, "", http.StatusForbidden)
			return
		}
		ttl, err := strconv.Atoi(r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds"))
		if err != nil || ttl < 1 || ttl > 21600 {
			http.Error(w, "", http.StatusBadRequest)
			return
		}
		b := make([]byte, 24)
		_, _ = rand.Read(b)
		tok := base64.RawURLEncoding.EncodeToString(b)
		m.mu.Lock()
		m.tokens[tok] = time.Now().Add(time.Duration(ttl) * time.Second)
		m.mu.Unlock()
		w.Header().Set("X-aws-ec2-metadata-token-ttl-seconds", strconv.Itoa(ttl))
		_, _ = io.WriteString(w, tok)
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "", http.StatusMethodNotAllowed)
		return
	}
	m.mu.Lock()
	exp, ok := m.tokens[r.Header.Get("X-aws-ec2-metadata-token")]
	m.mu.Unlock()
	if !ok || time.Now().After(exp) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	doc := m.inst.Document()
	switch r.URL.Path {
	case "/latest/dynamic/instance-identity/document":
		_, _ = w.Write(doc)
	case "/latest/dynamic/instance-identity/signature":
		_, _ = io.WriteString(w, wrap64(m.inst.Signer.SignRSA(doc)))
	case "/latest/dynamic/instance-identity/rsa2048":
		_, _ = io.WriteString(w, wrap64(m.inst.Signer.SignPKCS7(doc)))
	default:
		http.NotFound(w, r)
	}
}

// wrap64 breaks base64 into lines of 64 characters, as the metadata
// service does.
func wrap64(s string) string {
	var b strings.Builder
	for len(s) > 64 {
		b.WriteString(s[:64])
		b.WriteByte('\n')
		s = s[64:]
	}
	b.WriteString(s)
	return b.String()
}

// serveAPI answers the EC2, IAM and STS Query APIs: form-encoded POSTs
// signed with Signature Version 4, XML answers.
func (a *AWS) serveAPI(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil || r.Method != http.MethodPost {
		a.queryError(w, "", http.StatusBadRequest, "InvalidRequest", "POST a form")
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		a.queryError(w, "", http.StatusBadRequest, "MalformedQueryString", err.Error())
		return
	}
	action := form.Get("Action")
	service, creds, err := a.checkSignature(r, body)
	if err != nil {
		a.queryError(w, service, http.StatusForbidden, "SignatureDoesNotMatch", err.Error())
		return
	}
	a.mu.Lock()
	a.calls[action]++
	a.mu.Unlock()
	switch {
	case service == "ec2" && action == "DescribeInstances":
		a.describeInstances(w, form, creds)
	case service == "iam" && action == "GetInstanceProfile":
		a.getInstanceProfile(w, form, creds)
	case service == "sts" && action == "AssumeRole":
		a.assumeRole(w, form, creds)
	default:
		a.queryError(w, service, http.StatusBadRequest, "InvalidAction", fmt.Sprintf("%s does not serve %s", service, action))
	}
}

// checkSignature verifies a Signature Version 4 Authorization header and
// returns the signed service and the credentials.
func (a *AWS) checkSignature(r *http.Request, body []byte) (service string, creds awsCreds, err error) {
	auth := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(auth, "AWS4-HMAC-SHA256 ")
	if !ok {
		return "", creds, fmt.Errorf("no AWS4-HMAC-SHA256 Authorization")
	}
	fields := map[string]string{}
	for _, f := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		fields[k] = v
	}
	scope := strings.Split(fields["Credential"], "/")
	if len(scope) != 5 || scope[4] != "aws4_request" {
		return "", creds, fmt.Errorf("bad credential scope")
	}
	akid, date, region, service := scope[0], scope[1], scope[2], scope[3]
	a.mu.Lock()
	creds, ok = a.creds[akid]
	a.mu.Unlock()
	if !ok {
		return service, creds, fmt.Errorf("unknown access key %s", akid)
	}
	if creds.token != "" && r.Header.Get("X-Amz-Security-Token") != creds.token {
		return service, creds, fmt.Errorf("session token missing or wrong")
	}
	amzDate := r.Header.Get("X-Amz-Date")
	if !strings.HasPrefix(amzDate, date) {
		return service, creds, fmt.Errorf("X-Amz-Date does not match the scope")
	}
	signed := strings.Split(fields["SignedHeaders"], ";")
	var canon strings.Builder
	for _, h := range signed {
		var v string
		switch h {
		case "host":
			v = r.Host
		case "content-length":
			v = strconv.Itoa(len(body))
		default:
			vs := r.Header.Values(h)
			for i := range vs {
				vs[i] = strings.Join(strings.Fields(vs[i]), " ")
			}
			v = strings.Join(vs, ",")
		}
		canon.WriteString(h + ":" + v + "\n")
	}
	payload := sha256.Sum256(body)
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	creq := strings.Join([]string{r.Method, path, r.URL.RawQuery, canon.String(), fields["SignedHeaders"], hex.EncodeToString(payload[:])}, "\n")
	creqSum := sha256.Sum256([]byte(creq))
	sts := strings.Join([]string{"AWS4-HMAC-SHA256", amzDate, strings.Join(scope[1:], "/"), hex.EncodeToString(creqSum[:])}, "\n")
	mac := func(key []byte, s string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(s))
		return h.Sum(nil)
	}
	key := mac(mac(mac(mac([]byte("AWS4"+creds.secret), date), region), service), "aws4_request")
	if !hmac.Equal([]byte(hex.EncodeToString(mac(key, sts))), []byte(fields["Signature"])) {
		return service, creds, fmt.Errorf("the request signature does not match")
	}
	return service, creds, nil
}

func (a *AWS) queryError(w http.ResponseWriter, service string, status int, code, msg string) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(status)
	if service == "ec2" || service == "" {
		fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error></Errors><RequestID>%s</RequestID></Response>`, code, xmlEscape(msg), requestID())
		return
	}
	fmt.Fprintf(w, `<ErrorResponse xmlns="https://%s.amazonaws.com/doc/"><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>%s</RequestId></ErrorResponse>`,
		service, code, xmlEscape(msg), requestID())
}

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func requestID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// formList reads Prefix.1, Prefix.2, ... of a Query API form.
func formList(form url.Values, prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := form[prefix+"."+strconv.Itoa(i)]
		if !ok {
			return out
		}
		out = append(out, v...)
	}
}

func (a *AWS) describeInstances(w http.ResponseWriter, form url.Values, creds awsCreds) {
	ids := formList(form, "InstanceId")
	var states []string
	for i := 1; ; i++ {
		name, ok := form["Filter."+strconv.Itoa(i)+".Name"]
		if !ok {
			break
		}
		if name[0] == "instance-state-name" {
			states = formList(form, "Filter."+strconv.Itoa(i)+".Value")
		}
	}
	a.mu.Lock()
	var found []*Instance
	for _, id := range ids {
		var inst *Instance
		for _, i := range a.instances {
			if i.ID == id && i.Account == creds.account {
				inst = i
			}
		}
		if inst == nil {
			a.mu.Unlock()
			a.queryError(w, "ec2", http.StatusBadRequest, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", id))
			return
		}
		if states == nil || slices.Contains(states, inst.State) {
			found = append(found, inst)
		}
	}
	a.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>%s</requestId>
    <reservationSet>`, requestID())
	for _, i := range found {
		launch := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
		root := "ebs"
		if i.InstanceStore {
			root = "instance-store"
		}
		skew := i.RootAttachSkew
		if skew == 0 {
			skew = 2 * time.Second
		}
		fmt.Fprintf(&b, `
        <item>
            <reservationId>r-0123456789abcdef0</reservationId>
            <ownerId>%s</ownerId>
            <groupSet/>
            <instancesSet>
                <item>
                    <instanceId>%s</instanceId>
                    <imageId>%s</imageId>
                    <instanceState><code>16</code><name>%s</name></instanceState>
                    <privateDnsName>ip-10-0-1-23.ec2.internal</privateDnsName>
                    <instanceType>t3.micro</instanceType>
                    <launchTime>%s</launchTime>
                    <placement><availabilityZone>%s</availabilityZone><tenancy>default</tenancy></placement>
                    <rootDeviceType>%s</rootDeviceType>
                    <rootDeviceName>/dev/xvda</rootDeviceName>
                    <blockDeviceMapping>
                        <item>
                            <deviceName>/dev/xvda</deviceName>
                            <ebs><volumeId>vol-0123456789abcdef0</volumeId><status>attached</status><attachTime>%s</attachTime><deleteOnTermination>true</deleteOnTermination></ebs>
                        </item>
                    </blockDeviceMapping>
                    <networkInterfaceSet>
                        <item>
                            <networkInterfaceId>eni-0123456789abcdef0</networkInterfaceId>
                            <attachment><attachmentId>eni-attach-0123456789abcdef0</attachmentId><deviceIndex>0</deviceIndex><status>attached</status><attachTime>%s</attachTime><deleteOnTermination>true</deleteOnTermination></attachment>
                        </item>
                    </networkInterfaceSet>`,
			i.Account, i.ID, i.ImageID, i.State, launch.Format(time.RFC3339), i.AZ, root,
			launch.Add(skew).Format("2006-01-02T15:04:05.000Z"), launch.Format("2006-01-02T15:04:05.000Z"))
		if i.InstanceProfile != "" {
			fmt.Fprintf(&b, `
                    <iamInstanceProfile><arn>arn:aws:iam::%s:instance-profile/%s</arn><id>AIPAEXAMPLE</id></iamInstanceProfile>`, i.Account, i.InstanceProfile)
		}
		b.WriteString(`
                    <groupSet>`)
		for _, id := range sortedKeys(i.SecurityGroups) {
			fmt.Fprintf(&b, `<item><groupId>%s</groupId><groupName>%s</groupName></item>`, id, xmlEscape(i.SecurityGroups[id]))
		}
		b.WriteString(`</groupSet>
                    <tagSet>`)
		for _, k := range sortedKeys(i.Tags) {
			fmt.Fprintf(&b, `<item><key>%s</key><value>%s</value></item>`, xmlEscape(k), xmlEscape(i.Tags[k]))
		}
		b.WriteString(`</tagSet>
                </item>
            </instancesSet>
        </item>`)
	}
	b.WriteString(`
    </reservationSet>
</DescribeInstancesResponse>`)
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	_, _ = io.WriteString(w, b.String())
}

func (a *AWS) getInstanceProfile(w http.ResponseWriter, form url.Values, creds awsCreds) {
	name := form.Get("InstanceProfileName")
	a.mu.Lock()
	var inst *Instance
	for _, i := range a.instances {
		if i.InstanceProfile == name && i.Account == creds.account {
			inst = i
		}
	}
	a.mu.Unlock()
	if inst == nil {
		a.queryError(w, "iam", http.StatusNotFound, "NoSuchEntity", fmt.Sprintf("Instance Profile %s cannot be found.", name))
		return
	}
	var roles strings.Builder
	for _, r := range inst.Roles {
		fmt.Fprintf(&roles, `
          <member>
            <Path>/</Path>
            <RoleName>%s</RoleName>
            <RoleId>AROAEXAMPLE</RoleId>
            <Arn>arn:aws:iam::%s:role/%s</Arn>
            <CreateDate>2025-01-02T03:04:05Z</CreateDate>
            <AssumeRolePolicyDocument>%%7B%%7D</AssumeRolePolicyDocument>
          </member>`, r, inst.Account, r)
	}
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprintf(w, `<GetInstanceProfileResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">
  <GetInstanceProfileResult>
    <InstanceProfile>
      <InstanceProfileId>AIPAEXAMPLE</InstanceProfileId>
      <Roles>%s
      </Roles>
      <InstanceProfileName>%s</InstanceProfileName>
      <Path>/</Path>
      <Arn>arn:aws:iam::%s:instance-profile/%s</Arn>
      <CreateDate>2025-01-02T03:04:05Z</CreateDate>
    </InstanceProfile>
  </GetInstanceProfileResult>
  <ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata>
</GetInstanceProfileResponse>`, roles.String(), name, inst.Account, name, requestID())
}

func (a *AWS) assumeRole(w http.ResponseWriter, form url.Values, creds awsCreds) {
	arn := form.Get("RoleArn")
	parts := strings.Split(arn, ":") // arn:aws:iam::<account>:role/<name>
	if len(parts) != 6 || !strings.HasPrefix(parts[5], "role/") || creds.token != "" {
		a.queryError(w, "sts", http.StatusBadRequest, "ValidationError", "bad RoleArn")
		return
	}
	account, role := parts[4], strings.TrimPrefix(parts[5], "role/")
	a.mu.Lock()
	allowed := slices.Contains(a.roles[account], role)
	a.mu.Unlock()
	if !allowed {
		a.queryError(w, "sts", http.StatusForbidden, "AccessDenied",
			fmt.Sprintf("User: arn:aws:iam::%s:user/sigil is not authorized to perform: sts:AssumeRole on resource: %s", creds.account, arn))
		return
	}
	rb := make([]byte, 12)
	_, _ = rand.Read(rb)
	akid := "ASIA" + strings.ToUpper(hex.EncodeToString(rb))[:16]
	temp := awsCreds{secret: "temp-secret-" + hex.EncodeToString(rb), token: "temp-token-" + hex.EncodeToString(rb), account: account}
	a.mu.Lock()
	a.creds[akid] = temp
	a.mu.Unlock()
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprintf(w, `<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::%s:assumed-role/%s/%s</Arn>
      <AssumedRoleId>AROAEXAMPLE:%s</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>%s</AccessKeyId>
      <SecretAccessKey>%s</SecretAccessKey>
      <SessionToken>%s</SessionToken>
      <Expiration>%s</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata>
</AssumeRoleResponse>`, account, role, form.Get("RoleSessionName"), form.Get("RoleSessionName"), akid, temp.secret, temp.token,
		time.Now().Add(time.Hour).UTC().Format(time.RFC3339), requestID())
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
