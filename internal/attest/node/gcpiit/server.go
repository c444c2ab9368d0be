package gcpiit

import (
	"context"
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
	// ErrBadSignature: the token's signature does not verify with
	// Google's key of its key ID, or the key ID is not Google's.
	ErrBadSignature = fmt.Errorf("%w: identity token signature invalid", node.ErrRefused)
	// ErrBadClaims: wrong issuer or audience, expired or not yet valid.
	ErrBadClaims = fmt.Errorf("%w: identity token claims invalid", node.ErrRefused)
	// ErrProjectNotAllowed: the project is not in projectid_allow_list.
	ErrProjectNotAllowed = fmt.Errorf("%w: project not allowed", node.ErrRefused)
	// ErrNoSuchInstance: the Compute API does not know the instance
	// (use_instance_metadata).
	ErrNoSuchInstance = fmt.Errorf("%w: no such instance", node.ErrRefused)
	// ErrUnusableInstance: the instance yields no valid agent ID
	// (agent_path_template), or a metadata value over
	// max_metadata_value_size.
	ErrUnusableInstance = fmt.Errorf("%w: instance unusable for gcp_iit", node.ErrRefused)
)

// Google's issuers of identity tokens.
var issuers = []string{"https://accounts.google.com", "accounts.google.com"}

// Leeway is the clock skew tolerated on exp, iat and nbf.
const Leeway = time.Minute

// computeTimeout bounds the Compute API call of one attestation.
const computeTimeout = 20 * time.Second

// DefaultCertificatesURL is where Google publishes the certificates of the
// keys that sign identity tokens (SPIRE's URL).
const DefaultCertificatesURL = "https://www.googleapis.com/oauth2/v1/certs"

// defaultKeysTTL: how long Google's keys are used when the answer says
// nothing about it.
const defaultKeysTTL = 5 * time.Minute

// DefaultMaxMetadataValueSize is SPIRE's max_metadata_value_size.
const DefaultMaxMetadataValueSize = 128

// DefaultAgentPathTemplate is SPIRE's agent ID path.
const DefaultAgentPathTemplate = "/{{ .PluginName }}/{{ .ProjectID }}/{{ .InstanceID }}"

// ServerConfig is the plugin_data of the server's NodeAttestor "gcp_iit",
// with SPIRE's keys plus Sigil's audience, certificates_url and
// compute_endpoint.
type ServerConfig struct {
	ProjectIDAllowList   []string // projectid_allow_list (required)
	AgentPathTemplate    string   // agent_path_template
	UseInstanceMetadata  bool     // use_instance_metadata
	AllowedLabelKeys     []string // allowed_label_keys
	AllowedMetadataKeys  []string // allowed_metadata_keys
	MaxMetadataValueSize int64    // max_metadata_value_size (0: 128)
	ServiceAccountFile   string   // service_account_file

	// Sigil extensions.
	Audience        string // audience ("": DefaultAudience)
	CertificatesURL string // certificates_url ("": DefaultCertificatesURL)
	ComputeEndpoint string // compute_endpoint ("": computeapi.DefaultEndpoint)
}

// TemplateData is what agent_path_template can use (as SPIRE's).
type TemplateData struct {
	PluginName     string // "gcp_iit"
	ServiceAccount string // the email, "@" replaced by "_"
	ProjectID      string
	ProjectNumber  int64
	Zone           string
	InstanceID     string
	InstanceName   string
	// InstanceCreationTimestamp is in seconds since the epoch.
	InstanceCreationTimestamp int64
}

// PathTemplate renders an agent ID path; agentpath.Parse returns one.
type PathTemplate interface {
	Execute(data any) (string, error)
}

// Instance is what the server learns about an instance from the Compute
// API.
type Instance struct {
	Tags     []string
	Labels   map[string]string
	Metadata []MetadataItem
}

// MetadataItem is an instance metadata entry.
type MetadataItem struct {
	Key   string
	Value string
}

// Compute is what the server half asks the Compute API (instances.get).
// computeapi implements it. Errors wrapping ErrNoSuchInstance are
// refusals; others are failures.
type Compute interface {
	Instance(ctx context.Context, project, zone, name string) (*Instance, error)
}

// ServerOptions are what the server half needs besides its plugin_data.
type ServerOptions struct {
	TrustDomain spiffeid.TrustDomain
	// ParseTemplate parses agent_path_template (agentpath.Parse). Required.
	ParseTemplate func(text string) (PathTemplate, error)
	// Compute reaches the Compute API; required with use_instance_metadata.
	Compute Compute
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// HTTPClient fetches Google's certificates (nil: a client with the
	// environment's proxy settings).
	HTTPClient *http.Client
}

// Server is the server half.
type Server struct {
	cfg     ServerConfig
	td      spiffeid.TrustDomain
	tmpl    PathTemplate
	compute Compute
	keys    *jwtkeys.Set
	now     func() time.Time
}

var reKey = lazyre.New(`^[a-zA-Z0-9_.-]{1,128}$`)

// Validate checks the configuration.
func (c ServerConfig) Validate() error {
	var errs []error
	if len(c.ProjectIDAllowList) == 0 {
		errs = append(errs, errors.New("projectid_allow_list is required"))
	}
	for _, p := range c.ProjectIDAllowList {
		if !reProjectID.MatchString(p) {
			errs = append(errs, fmt.Errorf("projectid_allow_list: %s is not a project ID", clip.Quote(p)))
		}
	}
	if c.MaxMetadataValueSize < 0 {
		errs = append(errs, errors.New("max_metadata_value_size must not be negative"))
	}
	for _, k := range append(slices.Clone(c.AllowedLabelKeys), c.AllowedMetadataKeys...) {
		if !reKey.MatchString(k) {
			errs = append(errs, fmt.Errorf("allowed key %s is not a label or metadata key", clip.Quote(k)))
		}
	}
	for _, e := range []struct{ key, v string }{{"certificates_url", c.CertificatesURL}, {"compute_endpoint", c.ComputeEndpoint}} {
		if e.v == "" {
			continue
		}
		if u, err := url.Parse(e.v); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%s %s is not an http(s) URL", e.key, clip.Quote(e.v)))
		}
	}
	return errors.Join(errs...)
}

// NewServer returns the server half.
func NewServer(cfg ServerConfig, opts ServerOptions) (*Server, error) {
	if opts.TrustDomain.IsZero() || opts.ParseTemplate == nil {
		return nil, errors.New("gcp_iit: a trust domain and a template engine are required")
	}
	if cfg.UseInstanceMetadata && opts.Compute == nil {
		return nil, errors.New("gcp_iit: use_instance_metadata needs a Compute API client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("gcp_iit: %w", err)
	}
	text := cfg.AgentPathTemplate
	if text == "" {
		text = DefaultAgentPathTemplate
	}
	tmpl, err := opts.ParseTemplate(text)
	if err != nil {
		return nil, fmt.Errorf("gcp_iit: %w", err)
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if cfg.CertificatesURL == "" {
		cfg.CertificatesURL = DefaultCertificatesURL
	}
	if cfg.MaxMetadataValueSize == 0 {
		cfg.MaxMetadataValueSize = DefaultMaxMetadataValueSize
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	client := opts.HTTPClient
	if client == nil {
		client = &http.Client{Transport: http.DefaultTransport}
	}
	return &Server{
		cfg: cfg, td: opts.TrustDomain, tmpl: tmpl, compute: opts.Compute, now: now,
		keys: jwtkeys.New(func(ctx context.Context) (map[string]any, time.Duration, error) {
			body, h, err := jwtkeys.Get(ctx, client, cfg.CertificatesURL)
			if err != nil {
				return nil, 0, fmt.Errorf("google certificates: %w", err)
			}
			keys, err := jwtkeys.Parse(body)
			if err != nil {
				return nil, 0, fmt.Errorf("google certificates: %s: %w", cfg.CertificatesURL, err)
			}
			return keys, jwtkeys.TTL(h, now(), defaultKeysTTL), nil
		}, now),
	}, nil
}

// claims are the identity token's claims the attestor reads.
type claims struct {
	jwt.Claims
	Email  string `json:"email"`
	Google struct {
		ComputeEngine *ComputeEngine `json:"compute_engine"`
	} `json:"google"`
}

// Verify checks the token's signature and claims and returns its
// google.compute_engine claim and service account email.
func (s *Server) Verify(ctx context.Context, payload []byte) (*ComputeEngine, string, error) {
	if len(payload) == 0 {
		return nil, "", fmt.Errorf("%w: gcp_iit attestation data is empty", node.ErrInvalid)
	}
	if len(payload) > MaxTokenSize {
		return nil, "", fmt.Errorf("%w: gcp_iit attestation data is %d bytes, more than %d", node.ErrInvalid, len(payload), MaxTokenSize)
	}
	tok, err := jwt.ParseSigned(string(payload), []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, "", fmt.Errorf("%w: gcp_iit attestation data is not an RS256 JWT: %s", node.ErrInvalid, clip.Cut(err.Error(), 100))
	}
	if len(tok.Headers) != 1 {
		return nil, "", fmt.Errorf("%w: gcp_iit: the identity token has %d signatures", node.ErrInvalid, len(tok.Headers))
	}
	key, err := s.keys.Key(ctx, tok.Headers[0].KeyID)
	switch {
	case errors.Is(err, jwtkeys.ErrUnknownKey):
		return nil, "", fmt.Errorf("%w: the token is signed with %v, not one of Google's keys", ErrBadSignature, err)
	case err != nil:
		return nil, "", fmt.Errorf("gcp_iit: %w", err)
	}
	var c claims
	if err := tok.Claims(key, &c); err != nil {
		return nil, "", fmt.Errorf("%w: the signature does not verify with Google's key %s", ErrBadSignature, clip.Quote(tok.Headers[0].KeyID))
	}
	if !slices.Contains(issuers, c.Issuer) {
		return nil, "", fmt.Errorf("%w: issuer %s is not Google's", ErrBadClaims, clip.Quote(c.Issuer))
	}
	if !c.Audience.Contains(s.cfg.Audience) {
		return nil, "", fmt.Errorf("%w: audience %s, not %q", ErrBadClaims, clip.Quote(strings.Join(c.Audience, ",")), s.cfg.Audience)
	}
	if c.Expiry == nil {
		return nil, "", fmt.Errorf("%w: the token has no expiry", ErrBadClaims)
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Time: s.now()}, Leeway); err != nil {
		return nil, "", fmt.Errorf("%w: %v (expires %s)", ErrBadClaims, err, c.Expiry.Time().UTC().Format(time.RFC3339))
	}
	ce := c.Google.ComputeEngine
	if ce == nil {
		return nil, "", fmt.Errorf("%w: gcp_iit: the identity token has no google.compute_engine claim (the agent must request format=full)", node.ErrInvalid)
	}
	if err := ce.check(); err != nil {
		return nil, "", fmt.Errorf("%w: gcp_iit: %w", node.ErrInvalid, err)
	}
	return ce, c.Email, nil
}

// Attest verifies the identity token, checks the project and returns the
// agent ID and selectors (with use_instance_metadata, from the Compute API
// too).
func (s *Server) Attest(ctx context.Context, payload []byte, _ node.ChallengeFunc) (*node.Result, error) {
	ce, email, err := s.Verify(ctx, payload)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(s.cfg.ProjectIDAllowList, ce.ProjectID) {
		return nil, fmt.Errorf("%w: project %s of instance %s is not in projectid_allow_list", ErrProjectNotAllowed, ce.ProjectID, ce.InstanceID)
	}
	path, err := s.tmpl.Execute(TemplateData{
		PluginName: Type, ServiceAccount: strings.ReplaceAll(email, "@", "_"),
		ProjectID: ce.ProjectID, ProjectNumber: ce.ProjectNumber, Zone: ce.Zone,
		InstanceID: ce.InstanceID, InstanceName: ce.InstanceName, InstanceCreationTimestamp: ce.InstanceCreationTimestamp,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: agent_path_template fails for instance %s: %s", ErrUnusableInstance, ce.InstanceID, clip.Cut(err.Error(), 120))
	}
	if err := spiffeid.ValidatePath(path); err != nil {
		return nil, fmt.Errorf("%w: the agent path %s of instance %s is not a valid SPIFFE ID path: %w", ErrUnusableInstance, clip.Quote(path), ce.InstanceID, err)
	}
	id, err := spiffeid.FromPath(s.td, "/spire/agent"+path)
	if err != nil {
		return nil, fmt.Errorf("%w: agent ID for path %s: %w", ErrUnusableInstance, clip.Quote(path), err)
	}
	values := []string{
		"project-id:" + ce.ProjectID,
		"zone:" + ce.Zone,
		"instance-name:" + ce.InstanceName,
		"sa:" + email,
	}
	if s.cfg.UseInstanceMetadata {
		cctx, cancel := context.WithTimeout(ctx, computeTimeout)
		defer cancel()
		inst, err := s.compute.Instance(cctx, ce.ProjectID, ce.Zone, ce.InstanceName)
		if err != nil {
			return nil, fmt.Errorf("gcp_iit: instance %s (%s) of project %s: %w", ce.InstanceName, ce.InstanceID, ce.ProjectID, err)
		}
		for _, t := range inst.Tags {
			values = append(values, "tag:"+t)
		}
		for _, k := range s.cfg.AllowedLabelKeys {
			if v, ok := inst.Labels[k]; ok {
				values = append(values, "label:"+k+":"+v)
			}
		}
		for _, m := range inst.Metadata {
			if !slices.Contains(s.cfg.AllowedMetadataKeys, m.Key) {
				continue
			}
			if int64(len(m.Value)) > s.cfg.MaxMetadataValueSize {
				return nil, fmt.Errorf("%w: metadata %s of instance %s is %d bytes, more than max_metadata_value_size %d",
					ErrUnusableInstance, clip.Quote(m.Key), ce.InstanceID, len(m.Value), s.cfg.MaxMetadataValueSize)
			}
			values = append(values, "metadata:"+m.Key+":"+m.Value)
		}
	}
	sels := make([]selector.Selector, 0, len(values))
	for _, v := range values {
		sel := selector.Selector{Type: Type, Value: v}
		if sel.Validate() != nil {
			continue // a value a selector cannot hold (an entry could not name it either)
		}
		sels = append(sels, sel)
	}
	return &node.Result{AgentID: id, Selectors: selector.Dedupe(sels), CanReattest: false}, nil
}
