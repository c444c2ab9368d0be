package gcpiit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/clip"
)

// Agent defaults (SPIRE's).
const (
	DefaultIdentityTokenHost = "metadata.google.internal"
	DefaultServiceAccount    = "default"
	// metadataTimeout bounds the metadata request.
	metadataTimeout = 10 * time.Second
)

// AgentConfig is the plugin_data of the agent's NodeAttestor "gcp_iit",
// with SPIRE's keys and Sigil's audience.
type AgentConfig struct {
	// IdentityTokenHost (identity_token_host) is the metadata server's
	// host[:port]; "" is DefaultIdentityTokenHost.
	IdentityTokenHost string
	// ServiceAccount (service_account) is the instance's service account
	// whose identity token to send; "" is "default".
	ServiceAccount string
	// Audience (Sigil extension audience) is the token's audience; "" is
	// DefaultAudience (the server's must match).
	Audience string
}

// Agent is the agent half: it gets an identity token from the metadata
// server.
type Agent struct {
	url    string
	client *http.Client
}

// NewAgent returns the agent half. It talks to the metadata server only
// when an attestation begins.
func NewAgent(c AgentConfig) (*Agent, error) {
	host, sa, aud := c.IdentityTokenHost, c.ServiceAccount, c.Audience
	if host == "" {
		host = DefaultIdentityTokenHost
	}
	if sa == "" {
		sa = DefaultServiceAccount
	}
	if aud == "" {
		aud = DefaultAudience
	}
	if err := checkHost(host); err != nil {
		return nil, fmt.Errorf("gcp_iit: identity_token_host: %w", err)
	}
	if strings.ContainsAny(sa, "/?#") {
		return nil, fmt.Errorf("gcp_iit: service_account %s is not an account name or email", clip.Quote(sa))
	}
	u := url.URL{
		Scheme:   "http",
		Host:     host,
		Path:     "/computeMetadata/v1/instance/service-accounts/" + sa + "/identity",
		RawQuery: url.Values{"audience": {aud}, "format": {"full"}}.Encode(),
	}
	return &Agent{
		url: u.String(),
		// No proxy: the metadata server is local to the instance.
		client: &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: metadataTimeout},
	}, nil
}

func checkHost(h string) error {
	u, err := url.Parse("http://" + h)
	if err != nil || u.Host != h || u.Path != "" || u.User != nil {
		return fmt.Errorf("%s is not a host[:port]", clip.Quote(h))
	}
	return nil
}

// Type returns the attestation data type (the plugin's name), "gcp_iit".
func (a *Agent) Type() string { return Type }

// Begin gets the identity token and returns the session sending it.
func (a *Agent) Begin(ctx context.Context) (node.Session, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.url, nil)
	if err != nil {
		return nil, fmt.Errorf("gcp_iit: %w", err)
	}
	req.Header.Set("Metadata-Flavor", "Google")
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("gcp_iit: metadata server: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxTokenSize+1))
	if err != nil {
		return nil, fmt.Errorf("gcp_iit: metadata server: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("gcp_iit: metadata server: GET %s: %s: %s", req.URL.Path, resp.Status, clip.Quote(string(body)))
	}
	if len(body) > MaxTokenSize {
		return nil, fmt.Errorf("gcp_iit: metadata server: the identity token is larger than %d bytes", MaxTokenSize)
	}
	tok := strings.TrimSpace(string(body))
	if strings.Count(tok, ".") != 2 {
		return nil, fmt.Errorf("gcp_iit: metadata server: the answer is not a JWT: %s", clip.Quote(tok))
	}
	return session(tok), nil
}

// session sends the token; gcp_iit has no challenge.
type session []byte

func (s session) Payload() []byte { return s }
func (s session) Respond(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("gcp_iit: the server sent a challenge, but gcp_iit attestation has none")
}
func (s session) Close() error { return nil }
