package azureimds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/clip"
)

// DefaultMetadataEndpoint is the instance metadata service of every Azure
// VM.
const DefaultMetadataEndpoint = "http://169.254.169.254"

const (
	documentPath       = "/metadata/attested/document"
	documentAPIVersion = "2025-04-07"
	instancePath       = "/metadata/instance"
	instanceAPIVersion = "2021-02-01"
	imdsTimeout        = 10 * time.Second
	maxIMDSResponse    = 32 << 10
	maxNonce           = 64
)

// AgentConfig is the plugin_data of the agent's NodeAttestor "azure_imds":
// SPIRE's tenant_domain and Sigil's metadata_endpoint.
type AgentConfig struct {
	// TenantDomain (tenant_domain, required) names the server's tenant
	// (a key of its tenants).
	TenantDomain string
	// MetadataEndpoint (Sigil extension metadata_endpoint) is the instance
	// metadata service's base URL; "" is DefaultMetadataEndpoint.
	MetadataEndpoint string
}

// Agent is the agent half.
type Agent struct {
	domain, base string
	client       *http.Client
}

// NewAgent returns the agent half. It talks to the metadata service only
// when the server's challenge comes.
func NewAgent(c AgentConfig) (*Agent, error) {
	if c.TenantDomain == "" {
		return nil, errors.New("azure_imds: tenant_domain is required")
	}
	ep := c.MetadataEndpoint
	if ep == "" {
		ep = DefaultMetadataEndpoint
	}
	base, err := node.ParseEndpoint(ep)
	if err != nil {
		return nil, fmt.Errorf("azure_imds: metadata_endpoint: %w", err)
	}
	return &Agent{
		domain: c.TenantDomain, base: base,
		// No proxy: the metadata service is local to the VM (and refuses
		// requests with X-Forwarded-For).
		client: &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: imdsTimeout},
	}, nil
}

// Type returns the attestation data type (the plugin's name), "azure_imds".
func (a *Agent) Type() string { return Type }

// Begin returns the session; the metadata service is asked in Respond.
func (a *Agent) Begin(context.Context) (node.Session, error) { return &session{a: a}, nil }

type session struct {
	a    *Agent
	done bool
}

func (s *session) Payload() []byte { return []byte(placeholder) }
func (s *session) Close() error    { return nil }

// Respond answers the server's nonce with the attested document for it and
// the scale set's name.
func (s *session) Respond(ctx context.Context, challenge []byte) ([]byte, error) {
	if s.done {
		return nil, errors.New("azure_imds: the server sent a second challenge")
	}
	s.done = true
	if len(challenge) == 0 || len(challenge) > maxNonce {
		return nil, fmt.Errorf("azure_imds: the server's nonce is %d bytes (1 to %d expected)", len(challenge), maxNonce)
	}
	var doc Document
	q := url.Values{"api-version": {documentAPIVersion}, "nonce": {string(challenge)}}
	if err := s.a.get(ctx, documentPath+"?"+q.Encode(), &doc); err != nil {
		return nil, err
	}
	if doc.Encoding == "" || doc.Signature == "" {
		return nil, errors.New("azure_imds: instance metadata service: the attested document has no encoding or signature")
	}
	var inst struct {
		Compute struct {
			VMScaleSetName string `json:"vmScaleSetName"`
		} `json:"compute"`
	}
	if err := s.a.get(ctx, instancePath+"?"+url.Values{"api-version": {instanceAPIVersion}, "format": {"json"}}.Encode(), &inst); err != nil {
		return nil, err
	}
	r := Response{Document: doc, Metadata: Metadata{AgentDomain: s.a.domain}}
	if n := inst.Compute.VMScaleSetName; n != "" {
		r.Metadata.VMSSName = &n
	}
	return json.Marshal(r)
}

func (a *Agent) get(ctx context.Context, pathQuery string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+pathQuery, nil)
	if err != nil {
		return fmt.Errorf("azure_imds: %w", err)
	}
	req.Header.Set("Metadata", "true")
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("azure_imds: instance metadata service: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIMDSResponse+1))
	if err != nil {
		return fmt.Errorf("azure_imds: instance metadata service: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("azure_imds: instance metadata service: GET %s: %s: %s", req.URL.Path, resp.Status, clip.Quote(string(body)))
	}
	if len(body) > maxIMDSResponse {
		return fmt.Errorf("azure_imds: instance metadata service: GET %s: the answer is larger than %d bytes", req.URL.Path, maxIMDSResponse)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("azure_imds: instance metadata service: GET %s: %s", req.URL.Path, clip.Cut(err.Error(), 100))
	}
	return nil
}
