package awsiid

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/clip"
)

// DefaultMetadataEndpoint is the instance metadata service of every EC2
// instance.
const DefaultMetadataEndpoint = "http://169.254.169.254"

// metadataEndpointEnv is the AWS SDKs' variable for another instance
// metadata endpoint, used when ec2_metadata_endpoint is not set.
const metadataEndpointEnv = "AWS_EC2_METADATA_SERVICE_ENDPOINT"

// IMDS paths and headers (IMDSv2).
const (
	tokenPath       = "/latest/api/token"
	documentPath    = "/latest/dynamic/instance-identity/document"
	signaturePath   = "/latest/dynamic/instance-identity/signature"
	rsa2048Path     = "/latest/dynamic/instance-identity/rsa2048"
	tokenTTLHeader  = "X-aws-ec2-metadata-token-ttl-seconds"
	tokenHeader     = "X-aws-ec2-metadata-token"
	tokenTTLSeconds = "60" // one attestation's worth
	// imdsTimeout bounds each metadata request.
	imdsTimeout = 5 * time.Second
)

// AgentConfig is the plugin_data of the agent's NodeAttestor "aws_iid",
// with SPIRE's key.
type AgentConfig struct {
	// MetadataEndpoint (ec2_metadata_endpoint) is the instance metadata
	// service's base URL; "" is $AWS_EC2_METADATA_SERVICE_ENDPOINT, else
	// DefaultMetadataEndpoint. A trailing /latest (as in SPIRE's
	// documentation) is accepted.
	MetadataEndpoint string
}

// ParseEndpoint checks an endpoint URL and returns it without a trailing
// "/" or "/latest".
func parseEndpoint(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("not a URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("%s is not an http:// or https:// URL with a host", clip.Quote(s))
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%s has a query or fragment", clip.Quote(s))
	}
	p := strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), "/latest")
	return u.Scheme + "://" + u.Host + p, nil
}

// Agent is the agent half: it reads the instance identity document and its
// signatures from the instance metadata service.
type Agent struct {
	endpoint string
	client   *http.Client
}

// NewAgent returns the agent half. It talks to the metadata service only
// when an attestation begins.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	ep := cfg.MetadataEndpoint
	if ep == "" {
		ep = os.Getenv(metadataEndpointEnv)
	}
	if ep == "" {
		ep = DefaultMetadataEndpoint
	}
	base, err := parseEndpoint(ep)
	if err != nil {
		return nil, fmt.Errorf("aws_iid: ec2_metadata_endpoint: %w", err)
	}
	return &Agent{
		endpoint: base,
		// No proxy: the metadata service is link-local to the instance,
		// and its documents must not go through a proxy.
		client: &http.Client{Transport: &http.Transport{Proxy: nil, ResponseHeaderTimeout: imdsTimeout}, Timeout: imdsTimeout},
	}, nil
}

// Type returns the attestation data type (the plugin's name), "aws_iid".
func (a *Agent) Type() string { return Type }

// Begin reads the document and its signatures and returns the session
// sending them.
func (a *Agent) Begin(ctx context.Context) (node.Session, error) {
	data, err := a.fetch(ctx)
	if err != nil {
		return nil, err
	}
	payload, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("aws_iid: encode attestation data: %w", err)
	}
	return session(payload), nil
}

// fetch reads the instance identity document and its two signatures
// (IMDSv2; IMDSv1 when the service does not issue tokens).
func (a *Agent) fetch(ctx context.Context) (*attestationData, error) {
	token, err := a.token(ctx)
	if err != nil {
		return nil, err
	}
	var out attestationData
	for _, f := range []struct {
		path string
		dst  *string
	}{{documentPath, &out.Document}, {signaturePath, &out.Signature}, {rsa2048Path, &out.SignatureRSA2048}} {
		b, err := a.get(ctx, f.path, token)
		if err != nil {
			return nil, err
		}
		*f.dst = string(b)
	}
	return &out, nil
}

// errTokenUnsupported: the metadata service does not issue IMDSv2 tokens
// (403, 404, 405: IMDSv1 only, as the AWS SDKs fall back).
var errTokenUnsupported = errors.New("no IMDSv2 token")

// token gets an IMDSv2 session token; "" when the service only speaks
// IMDSv1.
func (a *Agent) token(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, a.endpoint+tokenPath, nil)
	if err != nil {
		return "", fmt.Errorf("aws_iid: %w", err)
	}
	req.Header.Set(tokenTTLHeader, tokenTTLSeconds)
	b, err := a.do(req)
	if errors.Is(err, errTokenUnsupported) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func (a *Agent) get(ctx context.Context, path, token string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.endpoint+path, nil)
	if err != nil {
		return nil, fmt.Errorf("aws_iid: %w", err)
	}
	if token != "" {
		req.Header.Set(tokenHeader, token)
	}
	return a.do(req)
}

func (a *Agent) do(req *http.Request) ([]byte, error) {
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("aws_iid: instance metadata service: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIMDSResponse+1))
	if err != nil {
		return nil, fmt.Errorf("aws_iid: instance metadata service: %s %s: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode != http.StatusOK {
		if req.Method == http.MethodPut {
			switch resp.StatusCode {
			case http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed:
				return nil, errTokenUnsupported
			}
		}
		return nil, fmt.Errorf("aws_iid: instance metadata service: %s %s: %s: %s", req.Method, req.URL.Path, resp.Status, clip.Quote(string(body)))
	}
	if len(body) > maxIMDSResponse {
		return nil, fmt.Errorf("aws_iid: instance metadata service: %s %s: the answer is larger than %d bytes", req.Method, req.URL.Path, maxIMDSResponse)
	}
	return body, nil
}

// session sends the payload; aws_iid has no challenge.
type session []byte

func (s session) Payload() []byte { return s }
func (s session) Respond(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("aws_iid: the server sent a challenge, but aws_iid attestation has none")
}
func (s session) Close() error { return nil }
