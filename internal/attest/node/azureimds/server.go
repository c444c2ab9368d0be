package azureimds

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/pkcs7"
	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/lazyre"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Refusals, each wrapping node.ErrRefused.
var (
	// ErrBadSignature: the document's signature does not verify with its
	// signer's certificate, the signer is not the message's only one, or
	// the certificate is not Azure's (domain, chain, validity).
	ErrBadSignature = fmt.Errorf("%w: attested document signature invalid", node.ErrRefused)
	// ErrBadDocument: wrong nonce (a replayed document), expired.
	ErrBadDocument = fmt.Errorf("%w: attested document invalid", node.ErrRefused)
	// ErrTenantNotAllowed: the agent's tenant is not configured.
	ErrTenantNotAllowed = fmt.Errorf("%w: tenant not allowed", node.ErrRefused)
	// ErrSubscriptionNotAllowed: restrict_to_subscriptions excludes it.
	ErrSubscriptionNotAllowed = fmt.Errorf("%w: subscription not allowed", node.ErrRefused)
	// ErrNoSuchVM: Resource Manager knows no VM with the document's ID.
	ErrNoSuchVM = fmt.Errorf("%w: no such virtual machine", node.ErrRefused)
	// ErrUnusableVM: the VM yields no valid agent ID (agent_path_template).
	ErrUnusableVM = fmt.Errorf("%w: virtual machine unusable for azure_imds", node.ErrRefused)
)

// Leeway is the clock skew tolerated on the document's timestamps.
const Leeway = 5 * time.Minute

// armTimeout bounds the Azure calls of one attestation.
const armTimeout = 20 * time.Second

// caIssuersHost is the only host an intermediate is fetched from (SPIRE's).
const caIssuersHost = "www.microsoft.com"

// DefaultAgentPathTemplate is SPIRE's agent ID path.
const DefaultAgentPathTemplate = "/{{ .PluginName }}/{{ .TenantID }}/{{ .SubscriptionID }}/{{ .VMID }}"

//go:embed roots/*.pem
var rootFiles embed.FS

// microsoftRoots are the embedded roots Azure's metadata certificates chain
// to (DigiCert Global Root G2 and Global Root CA, Microsoft RSA Root 2017).
func microsoftRoots() *x509.CertPool {
	pool := x509.NewCertPool()
	entries, _ := rootFiles.ReadDir("roots")
	for _, e := range entries {
		b, err := rootFiles.ReadFile("roots/" + e.Name())
		if err != nil || !pool.AppendCertsFromPEM(b) {
			panic("azure_imds: embedded root " + e.Name() + " is not PEM")
		}
	}
	return pool
}

// TemplateData is what agent_path_template can use (SPIRE's names).
type TemplateData struct {
	PluginName     string // "azure_imds"
	TenantID       string
	SubscriptionID string
	VMID           string
}

// PathTemplate renders an agent ID path; agentpath.Parse returns one.
type PathTemplate interface {
	Execute(data any) (string, error)
}

// VM is what Resource Manager says about a VM (or a scale set's VM).
type VM struct {
	ID, Name, ResourceGroup, Location string
	Tags                              map[string]string
	Interfaces                        []Interface
}

// Interface is a network interface of a VM: resource IDs, as Azure gives
// them.
type Interface struct {
	SecurityGroupID string   // "" for none
	SubnetIDs       []string // of its IP configurations
}

// Credentials are how Resource Manager is read for a tenant.
type Credentials struct {
	TenantID         string
	AppID, AppSecret string // "": the server's managed identity
	TokenPath        string // the app's client assertion file, instead of AppSecret
}

// ResourceManager looks VMs up; armimds implements it. Errors wrapping
// ErrNoSuchVM are refusals; others are failures.
type ResourceManager interface {
	// InstanceByVMID finds the VM of vmID in the subscription, in the
	// scale set scaleSet when it is not "".
	InstanceByVMID(ctx context.Context, c Credentials, subscription, vmID, scaleSet string) (*VM, error)
}

// ServerOptions are what the server half needs besides its plugin_data.
type ServerOptions struct {
	TrustDomain   spiffeid.TrustDomain
	ParseTemplate func(text string) (PathTemplate, error)
	ARM           ResourceManager
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// HTTPClient looks tenant IDs up and fetches intermediates (nil: a
	// client with the environment's proxy settings).
	HTTPClient *http.Client
}

// Server is the server half.
type Server struct {
	cfg     ServerConfig
	td      spiffeid.TrustDomain
	tmpl    PathTemplate
	arm     ResourceManager
	now     func() time.Time
	client  *http.Client
	roots   *x509.CertPool
	domains []string
	login   string

	mu        sync.Mutex
	tenantIDs map[string]string // domain -> tenant ID
}

// NewServer returns the server half.
func NewServer(cfg ServerConfig, opts ServerOptions) (*Server, error) {
	if opts.TrustDomain.IsZero() || opts.ParseTemplate == nil || opts.ARM == nil {
		return nil, errors.New("azure_imds: a trust domain, a template engine and a Resource Manager client are required")
	}
	if len(cfg.Tenants) == 0 {
		return nil, errors.New("azure_imds: tenants: at least one tenant is required")
	}
	text := cfg.AgentPathTemplate
	if text == "" {
		text = DefaultAgentPathTemplate
	}
	tmpl, err := opts.ParseTemplate(text)
	if err != nil {
		return nil, fmt.Errorf("azure_imds: %w", err)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	client := opts.HTTPClient
	if client == nil {
		client = &http.Client{Transport: http.DefaultTransport, Timeout: 10 * time.Second}
	}
	roots := microsoftRoots()
	for _, c := range cfg.Roots {
		roots.AddCert(c)
	}
	login, _, _ := cfg.Endpoints()
	s := &Server{cfg: cfg, td: opts.TrustDomain, tmpl: tmpl, arm: opts.ARM, now: now, client: client, roots: roots,
		domains: cfg.Domains(), login: login, tenantIDs: map[string]string{}}
	for _, t := range cfg.Tenants {
		if reGUID.MatchString(t.Domain) {
			s.tenantIDs[t.Domain] = strings.ToLower(t.Domain)
		}
	}
	return s, nil
}

// content is the signed document (Azure's field names).
type content struct {
	Nonce          string `json:"nonce"`
	VMID           string `json:"vmId"`
	SubscriptionID string `json:"subscriptionId"`
	TimeStamp      struct {
		CreatedOn string `json:"createdOn"`
		ExpiresOn string `json:"expiresOn"`
	} `json:"timeStamp"`
}

// timeLayout is the document's timestamp form ("11/28/25 16:04:05 -0000").
const timeLayout = "01/02/06 15:04:05 -0700"

// Attest challenges the agent with a nonce, verifies the attested document
// it answers, looks the VM up and returns the agent ID and selectors.
func (s *Server) Attest(ctx context.Context, payload []byte, challenge node.ChallengeFunc) (*node.Result, error) {
	if len(payload) == 0 || len(payload) > MaxPayloadSize {
		return nil, fmt.Errorf("%w: azure_imds attestation data is %d bytes (1 to %d expected)", node.ErrInvalid, len(payload), MaxPayloadSize)
	}
	if challenge == nil {
		return nil, errors.New("azure_imds: the transport cannot send challenges")
	}
	nonce := newNonce()
	answer, err := challenge(ctx, []byte(nonce))
	if err != nil {
		return nil, err
	}
	return s.Check(ctx, nonce, answer)
}

// Check verifies an answer to the challenge nonce (Attest's second half).
func (s *Server) Check(ctx context.Context, nonce string, answer []byte) (*node.Result, error) {
	if len(answer) == 0 || len(answer) > MaxPayloadSize {
		return nil, fmt.Errorf("%w: azure_imds answer is %d bytes (1 to %d expected)", node.ErrInvalid, len(answer), MaxPayloadSize)
	}
	var r Response
	if err := json.Unmarshal(answer, &r); err != nil {
		return nil, fmt.Errorf("%w: azure_imds answer is not JSON {\"document\", \"metadata\"}: %s", node.ErrInvalid, clip.Cut(err.Error(), 100))
	}
	doc, err := s.Verify(ctx, r.Document)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(doc.Nonce), []byte(nonce)) != 1 {
		return nil, fmt.Errorf("%w: the document's nonce is not this attestation's challenge (a replayed document?)", ErrBadDocument)
	}
	if !reGUID.MatchString(doc.VMID) || !reGUID.MatchString(doc.SubscriptionID) {
		return nil, fmt.Errorf("%w: azure_imds: the document's vmId %s or subscriptionId %s is not a GUID", ErrBadDocument, clip.Quote(doc.VMID), clip.Quote(doc.SubscriptionID))
	}
	vmID, sub := strings.ToLower(doc.VMID), strings.ToLower(doc.SubscriptionID)
	i := slices.IndexFunc(s.cfg.Tenants, func(t Tenant) bool { return t.Domain == r.Metadata.AgentDomain })
	if i < 0 {
		return nil, fmt.Errorf("%w: tenant %s is not configured", ErrTenantNotAllowed, clip.Quote(r.Metadata.AgentDomain))
	}
	t := s.cfg.Tenants[i]
	if len(t.RestrictToSubscriptions) > 0 && !slices.ContainsFunc(t.RestrictToSubscriptions, func(a string) bool { return strings.EqualFold(a, sub) }) {
		return nil, fmt.Errorf("%w: subscription %s is not in tenant %s's restrict_to_subscriptions", ErrSubscriptionNotAllowed, sub, clip.Quote(t.Domain))
	}
	scaleSet := ""
	if r.Metadata.VMSSName != nil {
		scaleSet = *r.Metadata.VMSSName
		if !reVMSSName.MatchString(scaleSet) {
			return nil, fmt.Errorf("%w: azure_imds: vmssName %s is not a scale set name", node.ErrInvalid, clip.Quote(scaleSet))
		}
	}
	actx, cancel := context.WithTimeout(ctx, armTimeout)
	defer cancel()
	tenantID, err := s.tenantID(actx, t.Domain)
	if err != nil {
		return nil, err
	}
	path, err := s.tmpl.Execute(TemplateData{PluginName: Type, TenantID: tenantID, SubscriptionID: sub, VMID: vmID})
	if err != nil {
		return nil, fmt.Errorf("%w: agent_path_template fails for VM %s: %s", ErrUnusableVM, vmID, clip.Cut(err.Error(), 120))
	}
	if err := spiffeid.ValidatePath(path); err != nil {
		return nil, fmt.Errorf("%w: the agent path %s of VM %s is not a valid SPIFFE ID path: %w", ErrUnusableVM, clip.Quote(path), vmID, err)
	}
	id, err := spiffeid.FromPath(s.td, "/spire/agent"+path)
	if err != nil {
		return nil, fmt.Errorf("%w: agent ID for path %s: %w", ErrUnusableVM, clip.Quote(path), err)
	}
	vm, err := s.arm.InstanceByVMID(actx, Credentials{TenantID: tenantID, AppID: t.AppID, AppSecret: t.AppSecret, TokenPath: t.TokenPath}, sub, vmID, scaleSet)
	if err != nil {
		return nil, fmt.Errorf("azure_imds: VM %s of subscription %s: %w", vmID, sub, err)
	}
	sels, err := selectors(t, sub, scaleSet, vm)
	if err != nil {
		return nil, err
	}
	return &node.Result{AgentID: id, Selectors: sels, CanReattest: false}, nil
}

var (
	reNSGID    = lazyre.New(`^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft\.Network/networkSecurityGroups/([^/]+)$`)
	reSubnetID = lazyre.New(`^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network/virtualNetworks/([^/]+)/subnets/([^/]+)$`)
)

// selectors are SPIRE's azure_imds selectors of a VM.
func selectors(t Tenant, sub, scaleSet string, vm *VM) ([]selector.Selector, error) {
	values := []string{"subscription-id:" + sub, "vm-name:" + vm.Name, "vm-location:" + vm.Location, "resource-group:" + vm.ResourceGroup}
	if scaleSet != "" {
		values = append(values, "vmss-name:"+scaleSet)
	}
	for _, k := range t.AllowedVMTags {
		if v, ok := vm.Tags[k]; ok {
			values = append(values, "vm-tag:"+k+":"+v)
		}
	}
	for _, nic := range vm.Interfaces {
		if nic.SecurityGroupID != "" {
			g := reNSGID.FindStringSubmatch(nic.SecurityGroupID)
			if g == nil {
				return nil, fmt.Errorf("azure_imds: Resource Manager gave the malformed network security group ID %s", clip.Quote(nic.SecurityGroupID))
			}
			values = append(values, "network-security-group:"+g[1]+":"+g[2])
		}
		for _, sn := range nic.SubnetIDs {
			n := reSubnetID.FindStringSubmatch(sn)
			if n == nil {
				return nil, fmt.Errorf("azure_imds: Resource Manager gave the malformed subnet ID %s", clip.Quote(sn))
			}
			values = append(values, "virtual-network:"+n[1], "virtual-network-subnet:"+n[1]+":"+n[2])
		}
	}
	sels := make([]selector.Selector, 0, len(values))
	for _, v := range values {
		sel := selector.Selector{Type: Type, Value: v}
		if sel.Validate() != nil {
			continue
		}
		sels = append(sels, sel)
	}
	return selector.Dedupe(sels), nil
}

// Verify checks the document's signature and signer and returns its
// content (whose nonce, IDs and tenant the caller checks).
func (s *Server) Verify(ctx context.Context, d Document) (*content, error) {
	if d.Signature == "" {
		return nil, fmt.Errorf("%w: azure_imds: the document has no signature", node.ErrInvalid)
	}
	if d.Encoding != "" && !strings.EqualFold(d.Encoding, "pkcs7") {
		return nil, fmt.Errorf("%w: azure_imds: the document's encoding is %s, not pkcs7", node.ErrInvalid, clip.Quote(d.Encoding))
	}
	der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(d.Signature), ""))
	if err != nil {
		return nil, fmt.Errorf("%w: azure_imds: the document's signature is not base64", node.ErrInvalid)
	}
	m, err := pkcs7.Parse(der)
	if err != nil {
		if errors.Is(err, pkcs7.ErrSignerCount) {
			return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
		}
		return nil, fmt.Errorf("%w: azure_imds: %w", node.ErrInvalid, err)
	}
	cert, err := m.Signer()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	key, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: the signer's key is not RSA", ErrBadSignature)
	}
	if err := m.Verify(key); err != nil {
		return nil, fmt.Errorf("%w: %w with the signer's certificate %s", ErrBadSignature, err, clip.Quote(cert.Subject.CommonName))
	}
	if !s.domainAllowed(cert) {
		return nil, fmt.Errorf("%w: the signer's certificate names none of allowed_metadata_domains %q (its DNS names: %s)", ErrBadSignature, s.domains, clip.Quote(strings.Join(cert.DNSNames, ",")))
	}
	if err := s.checkChain(ctx, cert, m.Certificates); err != nil {
		return nil, fmt.Errorf("%w: the signer's certificate %s: %w", ErrBadSignature, clip.Quote(cert.Subject.CommonName), err)
	}
	var c content
	if err := json.Unmarshal(m.Content, &c); err != nil {
		return nil, fmt.Errorf("%w: azure_imds: the signed document is not JSON: %s", ErrBadDocument, clip.Cut(err.Error(), 100))
	}
	now := s.now()
	exp, err := time.Parse(timeLayout, c.TimeStamp.ExpiresOn)
	if err != nil {
		return nil, fmt.Errorf("%w: the document's expiresOn %s is not a time", ErrBadDocument, clip.Quote(c.TimeStamp.ExpiresOn))
	}
	if now.After(exp.Add(Leeway)) {
		return nil, fmt.Errorf("%w: the document expired at %s", ErrBadDocument, exp.UTC().Format(time.RFC3339))
	}
	if created, err := time.Parse(timeLayout, c.TimeStamp.CreatedOn); err == nil && created.After(now.Add(Leeway)) {
		return nil, fmt.Errorf("%w: the document is created in the future (%s)", ErrBadDocument, created.UTC().Format(time.RFC3339))
	}
	return &c, nil
}

func (s *Server) domainAllowed(c *x509.Certificate) bool {
	for _, n := range c.DNSNames {
		n = strings.ToLower(n)
		for _, d := range s.domains {
			d = strings.ToLower(d)
			if n == d || strings.HasSuffix(n, "."+d) {
				return true
			}
		}
	}
	return false
}

// checkChain verifies cert against the roots, with the bag's other
// certificates as intermediates, and if that fails for want of an issuer,
// with the intermediate its CA issuers URL names on www.microsoft.com.
func (s *Server) checkChain(ctx context.Context, cert *x509.Certificate, bag []*x509.Certificate) error {
	inter := x509.NewCertPool()
	for _, c := range bag {
		if c != cert {
			inter.AddCert(c)
		}
	}
	opts := x509.VerifyOptions{Roots: s.roots, Intermediates: inter, CurrentTime: s.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	_, err := cert.Verify(opts)
	var unknown x509.UnknownAuthorityError
	if err == nil || !errors.As(err, &unknown) || len(cert.IssuingCertificateURL) == 0 {
		return err
	}
	for _, c := range bag {
		if c != cert && bytes.Equal(c.RawSubject, cert.RawIssuer) {
			return err // the message carries its issuer: nothing to fetch
		}
	}
	ic, ferr := s.fetchIntermediate(ctx, cert.IssuingCertificateURL[0])
	if ferr != nil {
		return fmt.Errorf("%w (its intermediate: %w)", err, ferr)
	}
	inter.AddCert(ic)
	_, err = cert.Verify(opts)
	return err
}

func (s *Server) fetchIntermediate(ctx context.Context, raw string) (*x509.Certificate, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host != caIssuersHost || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("the CA issuers URL %s is not on %s", clip.Quote(raw), caIssuersHost)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", clip.Quote(raw), resp.Status)
	}
	return x509.ParseCertificate(b)
}

// tenantID is the tenant ID of a tenant domain, looked up once at Azure AD
// (its OpenID configuration's issuer).
func (s *Server) tenantID(ctx context.Context, domain string) (string, error) {
	s.mu.Lock()
	id, ok := s.tenantIDs[domain]
	s.mu.Unlock()
	if ok {
		return id, nil
	}
	u := s.login + "/" + url.PathEscape(domain) + "/.well-known/openid-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("azure_imds: tenant ID of %s: %w", clip.Quote(domain), err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("azure_imds: tenant ID of %s: GET %s: %s", clip.Quote(domain), u, resp.Status)
	}
	var oc struct {
		Issuer string `json:"issuer"`
	}
	_ = json.Unmarshal(b, &oc)
	for _, pre := range []string{"https://sts.windows.net/", "https://login.microsoftonline.com/"} {
		if rest, ok := strings.CutPrefix(oc.Issuer, pre); ok {
			id, _, _ = strings.Cut(rest, "/")
			if reGUID.MatchString(id) {
				id = strings.ToLower(id)
				s.mu.Lock()
				s.tenantIDs[domain] = id
				s.mu.Unlock()
				return id, nil
			}
		}
	}
	return "", fmt.Errorf("azure_imds: tenant ID of %s: the issuer %s names no tenant", clip.Quote(domain), clip.Quote(oc.Issuer))
}

// newNonce is 32 letters and digits (SPIRE's form; Azure accepts up to 32).
func newNonce() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, 32)
	for i := range b {
		var r [1]byte
		for {
			_, _ = rand.Read(r[:])
			if int(r[0]) < 256-256%len(alphabet) {
				break
			}
		}
		b[i] = alphabet[int(r[0])%len(alphabet)]
	}
	return string(b)
}
