package azuremsi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/jwtkeys"
	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/lazyre"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Refusals, each wrapping node.ErrRefused.
var (
	// ErrBadSignature: the token's signature does not verify with Azure
	// AD's key of its key ID, or the key ID is not Azure AD's.
	ErrBadSignature = fmt.Errorf("%w: managed identity token signature invalid", node.ErrRefused)
	// ErrTenantNotAllowed: the token's tenant is not configured.
	ErrTenantNotAllowed = fmt.Errorf("%w: tenant not allowed", node.ErrRefused)
	// ErrBadClaims: wrong issuer or audience, expired or not yet valid.
	ErrBadClaims = fmt.Errorf("%w: managed identity token claims invalid", node.ErrRefused)
	// ErrNoSuchVM: Resource Manager lists no VM with the token's principal
	// as its system-assigned identity.
	ErrNoSuchVM = fmt.Errorf("%w: no virtual machine with this identity", node.ErrRefused)
	// ErrUnusableVM: the VM yields no valid agent ID (agent_path_template).
	ErrUnusableVM = fmt.Errorf("%w: virtual machine unusable for azure_msi", node.ErrRefused)
)

// Leeway is the clock skew tolerated on exp and nbf (SPIRE's 5 minutes:
// the tokens live for hours).
const Leeway = 5 * time.Minute

// keysTTL is how long Azure AD's keys are used (SPIRE's hour).
const keysTTL = time.Hour

// armTimeout bounds the Resource Manager calls of one attestation.
const armTimeout = 20 * time.Second

// Endpoints (Sigil extensions login_endpoint, management_endpoint,
// metadata_endpoint).
const (
	DefaultLoginEndpoint      = "https://login.microsoftonline.com"
	DefaultManagementEndpoint = "https://management.azure.com"
)

// DefaultAgentPathTemplate is SPIRE's agent ID path.
const DefaultAgentPathTemplate = "/{{ .PluginName }}/{{ .TenantID }}/{{ .PrincipalID }}"

// allowedAlgorithms are SPIRE's (Azure AD signs RS256).
var allowedAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256, jose.PS384, jose.PS512,
}

// Tenant is one tenant of tenants { "<tenant id>" { ... } }.
type Tenant struct {
	ID string
	// ResourceID (resource_id) is the audience its tokens must have; ""
	// is DefaultResourceID.
	ResourceID string
	// SubscriptionID, AppID, AppSecret (subscription_id, app_id,
	// app_secret): the credentials of an app registration to read the
	// tenant's VMs with (all three or none; none: the server's own managed
	// identity, in the subscription of the server's VM).
	SubscriptionID, AppID, AppSecret string
}

// ServerConfig is the plugin_data of the server's NodeAttestor
// "azure_msi": SPIRE's keys and Sigil's endpoints.
type ServerConfig struct {
	Tenants           []Tenant
	AgentPathTemplate string
	// LoginEndpoint (login_endpoint): Azure AD, for its keys and the apps'
	// tokens. ManagementEndpoint (management_endpoint): Resource Manager.
	// MetadataEndpoint (metadata_endpoint): the server's own instance
	// metadata service (managed identity).
	LoginEndpoint, ManagementEndpoint, MetadataEndpoint string
}

// Validate checks the configuration.
func (c ServerConfig) Validate() error {
	var errs []error
	if len(c.Tenants) == 0 {
		errs = append(errs, errors.New("tenants: at least one tenant is required"))
	}
	for _, t := range c.Tenants {
		if err := t.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, e := range []struct{ key, v string }{{"login_endpoint", c.LoginEndpoint}, {"management_endpoint", c.ManagementEndpoint}, {"metadata_endpoint", c.MetadataEndpoint}} {
		if e.v != "" {
			if _, err := node.ParseEndpoint(e.v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", e.key, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Validate checks one tenant.
func (t Tenant) Validate() error {
	var errs []error
	if !reGUID.MatchString(t.ID) {
		errs = append(errs, fmt.Errorf("tenant %s: the tenant ID is not a GUID", clip.Quote(t.ID)))
	}
	if t.SubscriptionID != "" && !reGUID.MatchString(t.SubscriptionID) {
		errs = append(errs, fmt.Errorf("tenant %s: subscription_id %s is not a GUID", clip.Quote(t.ID), clip.Quote(t.SubscriptionID)))
	}
	if t.AppID != "" || t.AppSecret != "" {
		for _, m := range []struct{ key, v string }{{"subscription_id", t.SubscriptionID}, {"app_id", t.AppID}, {"app_secret", t.AppSecret}} {
			if m.v == "" {
				errs = append(errs, fmt.Errorf("tenant %s: %s is missing (app credentials need subscription_id, app_id and app_secret)", clip.Quote(t.ID), m.key))
			}
		}
	}
	return errors.Join(errs...)
}

// Audience is the tenant's resource_id, or DefaultResourceID.
func (t Tenant) Audience() string {
	if t.ResourceID == "" {
		return DefaultResourceID
	}
	return t.ResourceID
}

// Endpoints returns the endpoints with their defaults.
func (c ServerConfig) Endpoints() (login, management, metadata string) {
	login, management, metadata = c.LoginEndpoint, c.ManagementEndpoint, c.MetadataEndpoint
	if login == "" {
		login = DefaultLoginEndpoint
	}
	if management == "" {
		management = DefaultManagementEndpoint
	}
	if metadata == "" {
		metadata = DefaultMetadataEndpoint
	}
	trim := func(s string) string { return strings.TrimSuffix(s, "/") }
	return trim(login), trim(management), trim(metadata)
}

// TemplateData is what agent_path_template can use (SPIRE's names).
type TemplateData struct {
	PluginName  string // "azure_msi"
	TenantID    string
	PrincipalID string
}

// PathTemplate renders an agent ID path; agentpath.Parse returns one.
type PathTemplate interface {
	Execute(data any) (string, error)
}

// VM is what Resource Manager says about the VM of a principal: resource
// IDs, as Azure gives them.
type VM struct {
	SubscriptionID string
	ID             string
	Interfaces     []Interface
}

// Interface is a network interface of a VM.
type Interface struct {
	ID              string
	SecurityGroupID string   // "" for none
	SubnetIDs       []string // of its IP configurations
}

// ResourceManager finds the VM of a principal in a tenant. armapi
// implements it. Errors wrapping ErrNoSuchVM are refusals; others are
// failures.
type ResourceManager interface {
	VirtualMachine(ctx context.Context, tenant Tenant, principalID string) (*VM, error)
}

// ServerOptions are what the server half needs besides its plugin_data.
type ServerOptions struct {
	TrustDomain   spiffeid.TrustDomain
	ParseTemplate func(text string) (PathTemplate, error)
	ARM           ResourceManager
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// HTTPClient fetches Azure AD's keys (nil: a client with the
	// environment's proxy settings).
	HTTPClient *http.Client
}

// Server is the server half.
type Server struct {
	cfg  ServerConfig
	td   spiffeid.TrustDomain
	tmpl PathTemplate
	arm  ResourceManager
	keys *jwtkeys.Set
	now  func() time.Time
}

// NewServer returns the server half.
func NewServer(cfg ServerConfig, opts ServerOptions) (*Server, error) {
	if opts.TrustDomain.IsZero() || opts.ParseTemplate == nil || opts.ARM == nil {
		return nil, errors.New("azure_msi: a trust domain, a template engine and a Resource Manager client are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("azure_msi: %w", err)
	}
	text := cfg.AgentPathTemplate
	if text == "" {
		text = DefaultAgentPathTemplate
	}
	tmpl, err := opts.ParseTemplate(text)
	if err != nil {
		return nil, fmt.Errorf("azure_msi: %w", err)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	client := opts.HTTPClient
	if client == nil {
		client = &http.Client{Transport: http.DefaultTransport}
	}
	login, _, _ := cfg.Endpoints()
	discovery := login + "/common/.well-known/openid-configuration"
	fetch := func(ctx context.Context) (map[string]any, time.Duration, error) {
		body, _, err := jwtkeys.Get(ctx, client, discovery)
		if err != nil {
			return nil, 0, fmt.Errorf("azure AD keys: %w", err)
		}
		var doc struct {
			JWKSURI string `json:"jwks_uri"`
		}
		if err := json.Unmarshal(body, &doc); err != nil || doc.JWKSURI == "" {
			return nil, 0, fmt.Errorf("azure AD keys: %s has no jwks_uri", discovery)
		}
		if u, err := url.Parse(doc.JWKSURI); err != nil || u.Scheme != "https" && u.Scheme != "http" {
			return nil, 0, fmt.Errorf("azure AD keys: jwks_uri %s is not an http(s) URL", clip.Quote(doc.JWKSURI))
		}
		body, _, err = jwtkeys.Get(ctx, client, doc.JWKSURI)
		if err != nil {
			return nil, 0, fmt.Errorf("azure AD keys: %w", err)
		}
		keys, err := jwtkeys.Parse(body)
		if err != nil {
			return nil, 0, fmt.Errorf("azure AD keys: %s: %w", doc.JWKSURI, err)
		}
		return keys, keysTTL, nil
	}
	return &Server{cfg: cfg, td: opts.TrustDomain, tmpl: tmpl, arm: opts.ARM, keys: jwtkeys.New(fetch, now), now: now}, nil
}

// claims are the token's claims the attestor reads.
type claims struct {
	jwt.Claims
	TenantID string `json:"tid"`
}

// Verify checks the token's signature, tenant, issuer, audience and
// lifetime, and returns its tenant and principal.
func (s *Server) Verify(ctx context.Context, payload []byte) (*Tenant, string, error) {
	if len(payload) == 0 {
		return nil, "", fmt.Errorf("%w: azure_msi attestation data is empty", node.ErrInvalid)
	}
	if len(payload) > MaxPayloadSize {
		return nil, "", fmt.Errorf("%w: azure_msi attestation data is %d bytes, more than %d", node.ErrInvalid, len(payload), MaxPayloadSize)
	}
	var data attestationData
	if err := json.Unmarshal(payload, &data); err != nil {
		return nil, "", fmt.Errorf("%w: azure_msi attestation data is not JSON {\"token\"}: %s", node.ErrInvalid, clip.Cut(err.Error(), 100))
	}
	if data.Token == "" {
		return nil, "", fmt.Errorf("%w: azure_msi attestation data has no token", node.ErrInvalid)
	}
	tok, err := jwt.ParseSigned(data.Token, allowedAlgorithms)
	if err != nil {
		return nil, "", fmt.Errorf("%w: azure_msi: the token is not a signed JWT: %s", node.ErrInvalid, clip.Cut(err.Error(), 100))
	}
	if len(tok.Headers) != 1 || tok.Headers[0].KeyID == "" {
		return nil, "", fmt.Errorf("%w: azure_msi: the token has no key ID", node.ErrInvalid)
	}
	kid := tok.Headers[0].KeyID
	key, err := s.keys.Key(ctx, kid)
	switch {
	case errors.Is(err, jwtkeys.ErrUnknownKey):
		return nil, "", fmt.Errorf("%w: the token is signed with %v, not one of Azure AD's keys", ErrBadSignature, err)
	case err != nil:
		return nil, "", fmt.Errorf("azure_msi: %w", err)
	}
	var c claims
	if err := tok.Claims(key, &c); err != nil {
		return nil, "", fmt.Errorf("%w: the signature does not verify with Azure AD's key %s", ErrBadSignature, clip.Quote(kid))
	}
	if !reGUID.MatchString(c.TenantID) || !reGUID.MatchString(c.Subject) {
		return nil, "", fmt.Errorf("%w: azure_msi: the token's tid %s or sub %s is not a GUID", node.ErrInvalid, clip.Quote(c.TenantID), clip.Quote(c.Subject))
	}
	i := slices.IndexFunc(s.cfg.Tenants, func(t Tenant) bool { return strings.EqualFold(t.ID, c.TenantID) })
	if i < 0 {
		return nil, "", fmt.Errorf("%w: tenant %s is not configured", ErrTenantNotAllowed, c.TenantID)
	}
	t := s.cfg.Tenants[i]
	if iss := []string{"https://sts.windows.net/" + c.TenantID + "/", "https://login.microsoftonline.com/" + c.TenantID + "/v2.0"}; !slices.Contains(iss, c.Issuer) {
		return nil, "", fmt.Errorf("%w: issuer %s is not tenant %s's", ErrBadClaims, clip.Quote(c.Issuer), c.TenantID)
	}
	if !c.Audience.Contains(t.Audience()) {
		return nil, "", fmt.Errorf("%w: audience %s, not the tenant's resource_id %q", ErrBadClaims, clip.Quote(strings.Join(c.Audience, ",")), t.Audience())
	}
	if c.Expiry == nil {
		return nil, "", fmt.Errorf("%w: the token has no expiry", ErrBadClaims)
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Time: s.now()}, Leeway); err != nil {
		return nil, "", fmt.Errorf("%w: %v (expires %s)", ErrBadClaims, err, c.Expiry.Time().UTC().Format(time.RFC3339))
	}
	return &t, strings.ToLower(c.Subject), nil
}

var (
	reVMID     = lazyre.New(`^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft\.Compute/virtualMachines/([^/]+)$`)
	reNSGID    = lazyre.New(`^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft\.Network/networkSecurityGroups/([^/]+)$`)
	reSubnetID = lazyre.New(`^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft\.Network/virtualNetworks/([^/]+)/subnets/([^/]+)$`)
)

// Attest verifies the token, finds the VM and returns the agent ID and
// selectors.
func (s *Server) Attest(ctx context.Context, payload []byte, _ node.ChallengeFunc) (*node.Result, error) {
	t, principal, err := s.Verify(ctx, payload)
	if err != nil {
		return nil, err
	}
	path, err := s.tmpl.Execute(TemplateData{PluginName: Type, TenantID: t.ID, PrincipalID: principal})
	if err != nil {
		return nil, fmt.Errorf("%w: agent_path_template fails for principal %s: %s", ErrUnusableVM, principal, clip.Cut(err.Error(), 120))
	}
	if err := spiffeid.ValidatePath(path); err != nil {
		return nil, fmt.Errorf("%w: the agent path %s of principal %s is not a valid SPIFFE ID path: %w", ErrUnusableVM, clip.Quote(path), principal, err)
	}
	id, err := spiffeid.FromPath(s.td, "/spire/agent"+path)
	if err != nil {
		return nil, fmt.Errorf("%w: agent ID for path %s: %w", ErrUnusableVM, clip.Quote(path), err)
	}
	actx, cancel := context.WithTimeout(ctx, armTimeout)
	defer cancel()
	vm, err := s.arm.VirtualMachine(actx, *t, principal)
	if err != nil {
		return nil, fmt.Errorf("azure_msi: principal %s of tenant %s: %w", principal, t.ID, err)
	}
	m := reVMID.FindStringSubmatch(vm.ID)
	if m == nil {
		return nil, fmt.Errorf("azure_msi: Resource Manager gave the malformed virtual machine ID %s", clip.Quote(vm.ID))
	}
	values := []string{"subscription-id:" + vm.SubscriptionID, "vm-name:" + m[1] + ":" + m[2]}
	for _, nic := range vm.Interfaces {
		if nic.SecurityGroupID != "" {
			g := reNSGID.FindStringSubmatch(nic.SecurityGroupID)
			if g == nil {
				return nil, fmt.Errorf("azure_msi: Resource Manager gave the malformed network security group ID %s", clip.Quote(nic.SecurityGroupID))
			}
			values = append(values, "network-security-group:"+g[1]+":"+g[2])
		}
		for _, sn := range nic.SubnetIDs {
			n := reSubnetID.FindStringSubmatch(sn)
			if n == nil {
				return nil, fmt.Errorf("azure_msi: Resource Manager gave the malformed subnet ID %s", clip.Quote(sn))
			}
			values = append(values, "virtual-network:"+n[1]+":"+n[2], "virtual-network-subnet:"+n[1]+":"+n[2]+":"+n[3])
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
	return &node.Result{AgentID: id, Selectors: selector.Dedupe(sels), CanReattest: false}, nil
}
