package azuremsi

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
	tokenPath       = "/metadata/identity/oauth2/token"
	tokenAPIVersion = "2018-02-01"
	imdsTimeout     = 10 * time.Second
	maxIMDSResponse = 64 << 10
)

// AgentConfig is the plugin_data of the agent's NodeAttestor "azure_msi":
// SPIRE's resource_id and Sigil's metadata_endpoint.
type AgentConfig struct {
	// ResourceID (resource_id) is the token's audience; "" is
	// DefaultResourceID. The server's tenant must name the same.
	ResourceID string
	// MetadataEndpoint (Sigil extension metadata_endpoint) is the instance
	// metadata service's base URL; "" is DefaultMetadataEndpoint.
	MetadataEndpoint string
}

// Agent is the agent half: it gets the managed identity's token from the
// instance metadata service.
type Agent struct {
	url    string
	client *http.Client
}

// NewAgent returns the agent half. It talks to the metadata service only
// when an attestation begins.
func NewAgent(c AgentConfig) (*Agent, error) {
	ep, res := c.MetadataEndpoint, c.ResourceID
	if ep == "" {
		ep = DefaultMetadataEndpoint
	}
	if res == "" {
		res = DefaultResourceID
	}
	base, err := node.ParseEndpoint(ep)
	if err != nil {
		return nil, fmt.Errorf("azure_msi: metadata_endpoint: %w", err)
	}
	q := url.Values{"api-version": {tokenAPIVersion}, "resource": {res}}
	return &Agent{
		url: base + tokenPath + "?" + q.Encode(),
		// No proxy: the metadata service is local to the VM (and refuses
		// requests with X-Forwarded-For).
		client: &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: imdsTimeout},
	}, nil
}

// Type returns the attestation data type (the plugin's name), "azure_msi".
func (a *Agent) Type() string { return Type }

// Begin gets the token and returns the session sending it.
func (a *Agent) Begin(ctx context.Context) (node.Session, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.url, nil)
	if err != nil {
		return nil, fmt.Errorf("azure_msi: %w", err)
	}
	req.Header.Set("Metadata", "true")
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("azure_msi: instance metadata service: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIMDSResponse+1))
	if err != nil {
		return nil, fmt.Errorf("azure_msi: instance metadata service: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("azure_msi: instance metadata service: GET %s: %s: %s", tokenPath, resp.Status, clip.Quote(string(body)))
	}
	if len(body) > maxIMDSResponse {
		return nil, fmt.Errorf("azure_msi: instance metadata service: the answer is larger than %d bytes", maxIMDSResponse)
	}
	var out struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &out); err != nil || out.AccessToken == "" {
		return nil, fmt.Errorf("azure_msi: instance metadata service: the answer has no access_token: %s", clip.Quote(string(body)))
	}
	payload, err := json.Marshal(attestationData{Token: out.AccessToken})
	if err != nil {
		return nil, fmt.Errorf("azure_msi: %w", err)
	}
	return session(payload), nil
}

// session sends the payload; azure_msi has no challenge.
type session []byte

func (s session) Payload() []byte { return s }
func (s session) Respond(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("azure_msi: the server sent a challenge, but azure_msi attestation has none")
}
func (s session) Close() error { return nil }
