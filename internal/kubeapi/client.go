// Package kubeapi is the little of the Kubernetes API that sigil-server
// needs, spoken with net/http and encoding/json: sigil-server links no
// Kubernetes client library (client-go, apimachinery), whose weight it
// would pay for three requests (cmd/sigil-server's deps test checks).
//
// A Client reaches one API server as its Config says, which it loads
// again at every request (kubeconfig.Loader reads a kubeconfig file or the
// in-cluster service account, as SPIRE's client does): rotated tokens and
// certificates are used without a restart, and connections are kept while
// the TLS material is unchanged.
//
// The API calls are those of node attestation: TokenReview, and GET of a
// pod and of a node, decoded into the few fields used.
package kubeapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// Client calls one API server. It is safe for concurrent use.
type Client struct {
	load    func() (*Config, error)
	timeout time.Duration

	mu        sync.Mutex
	transport *http.Transport
	tlsKey    [sha256.Size]byte // of the TLS material transport was built with
}

// DefaultTimeout bounds a request whose context has no deadline.
const DefaultTimeout = 30 * time.Second

// Config is how to reach and authenticate to an API server.
type Config struct {
	// Server is the API server's URL, https://host:port.
	Server string
	// CAPEM are the CA certificates to verify the API server with (nil:
	// the system's).
	CAPEM []byte
	// InsecureSkipTLSVerify does not verify the API server's certificate.
	InsecureSkipTLSVerify bool
	// TLSServerName is the name to verify the certificate against instead
	// of Server's host.
	TLSServerName string
	// Token is a bearer token; TokenFile one read at each request.
	Token     string
	TokenFile string
	// CertPEM and KeyPEM are a client certificate and its key.
	CertPEM, KeyPEM []byte
	// Username and Password are HTTP basic credentials.
	Username, Password string
}

// New returns a client configured by load, called at every request
// (nothing is loaded before the first).
func New(load func() (*Config, error)) *Client {
	return &Client{load: load, timeout: DefaultTimeout}
}

// Close closes idle connections.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.transport != nil {
		c.transport.CloseIdleConnections()
	}
}

// StatusError is a non-2xx answer: the HTTP status, and the reason and
// message of the API server's Status object (cut).
type StatusError struct {
	Code    int
	Reason  string
	Message string
}

func (e *StatusError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("API server answered %d (%s): %s", e.Code, e.Reason, e.Message)
	}
	return fmt.Sprintf("API server answered %d: %s", e.Code, e.Message)
}

// IsNotFound reports whether err is a 404 answer.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// maxResponseSize bounds an answer (a node with many images is tens of
// KiB).
const maxResponseSize = 16 << 20

// do sends one request: in as the JSON body, the answer decoded into out.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	cfg, err := c.load()
	if err != nil {
		return err
	}
	rt, err := c.roundTripper(cfg)
	if err != nil {
		return err
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(cfg.Server, "/")+path, body)
	if err != nil {
		return fmt.Errorf("request %s: %w", path, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "sigil-server")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	token := cfg.Token
	if cfg.TokenFile != "" {
		b, err := ReadFile(cfg.TokenFile, MaxCredentialSize)
		if err != nil {
			return fmt.Errorf("API server token: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	switch {
	case token != "":
		req.Header.Set("Authorization", "Bearer "+token)
	case cfg.Username != "" || cfg.Password != "":
		req.SetBasicAuth(cfg.Username, cfg.Password)
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize+1))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if len(b) > maxResponseSize {
		return fmt.Errorf("%s %s: the answer is larger than %d bytes", method, path, maxResponseSize)
	}
	if resp.StatusCode/100 != 2 {
		var st struct{ Reason, Message string }
		if json.Unmarshal(b, &st) != nil || st.Message == "" {
			st.Message = string(b)
		}
		return &StatusError{Code: resp.StatusCode, Reason: clip.Cut(st.Reason, 64), Message: clip.Cut(st.Message, 200)}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %s", method, path, clip.Cut(err.Error(), 120))
	}
	return nil
}

// roundTripper returns the transport for cfg's TLS material: the current
// one while it is unchanged (connections are reused), else a new one.
func (c *Client) roundTripper(cfg *Config) (http.RoundTripper, error) {
	h := sha256.New()
	for _, part := range [][]byte{cfg.CAPEM, cfg.CertPEM, cfg.KeyPEM, []byte(cfg.TLSServerName), []byte(cfg.Server)} {
		fmt.Fprintf(h, "%d:", len(part))
		h.Write(part)
	}
	if cfg.InsecureSkipTLSVerify {
		h.Write([]byte{1})
	}
	var key [sha256.Size]byte
	copy(key[:], h.Sum(nil))

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.transport != nil && c.tlsKey == key {
		return c.transport, nil
	}
	tc, err := tlsConfig(cfg)
	if err != nil {
		return nil, err
	}
	if c.transport != nil {
		c.transport.CloseIdleConnections()
	}
	c.transport = &http.Transport{
		TLSClientConfig:     tc,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	c.tlsKey = key
	return c.transport, nil
}

func tlsConfig(cfg *Config) (*tls.Config, error) {
	u, err := url.Parse(cfg.Server)
	if err != nil {
		return nil, fmt.Errorf("API server URL: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.TLSServerName}
	if tc.ServerName == "" {
		tc.ServerName = u.Hostname()
	}
	if cfg.InsecureSkipTLSVerify {
		tc.InsecureSkipVerify = true //nolint:gosec // the kubeconfig asks for it (insecure-skip-tls-verify)
	} else if len(cfg.CAPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CAPEM) {
			return nil, errors.New("the API server's CA (certificate-authority) holds no PEM certificate")
		}
		tc.RootCAs = pool
	}
	if cfg.CertPEM != nil {
		pair, err := tls.X509KeyPair(cfg.CertPEM, cfg.KeyPEM)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// Check loads the configuration and builds its TLS settings without
// contacting the API server: what a configuration check can verify.
func (c *Client) Check() error {
	cfg, err := c.load()
	if err != nil {
		return err
	}
	if _, err := tlsConfig(cfg); err != nil {
		return err
	}
	if cfg.TokenFile != "" {
		if _, err := ReadFile(cfg.TokenFile, MaxCredentialSize); err != nil {
			return fmt.Errorf("API server token: %w", err)
		}
	}
	return nil
}

// ObjectMeta is the part of an object's metadata read.
type ObjectMeta struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace,omitempty"`
	UID       string            `json:"uid"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// Pod is the part of a pod read.
type Pod struct {
	Metadata ObjectMeta `json:"metadata"`
	Spec     struct {
		NodeName           string `json:"nodeName"`
		ServiceAccountName string `json:"serviceAccountName"`
	} `json:"spec"`
	Status struct {
		HostIP string `json:"hostIP"`
	} `json:"status"`
}

// Node is the part of a node read.
type Node struct {
	Metadata ObjectMeta `json:"metadata"`
}

// UserInfo is the user a reviewed token authenticates.
type UserInfo struct {
	Username string              `json:"username"`
	UID      string              `json:"uid"`
	Groups   []string            `json:"groups"`
	Extra    map[string][]string `json:"extra"`
}

// TokenReviewStatus is the API server's verdict on a token.
type TokenReviewStatus struct {
	Authenticated bool     `json:"authenticated"`
	User          UserInfo `json:"user"`
	Audiences     []string `json:"audiences"`
	Error         string   `json:"error"`
}

// TokenReview asks the API server whether token is valid for one of
// audiences (none: the API server's own audiences). The caller checks
// Authenticated; the answer's Audiences say which of those asked it is
// valid for.
func (c *Client) TokenReview(ctx context.Context, token string, audiences []string) (*TokenReviewStatus, error) {
	type spec struct {
		Token     string   `json:"token"`
		Audiences []string `json:"audiences,omitempty"`
	}
	in := struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Spec       spec   `json:"spec"`
	}{"authentication.k8s.io/v1", "TokenReview", spec{Token: token, Audiences: audiences}}
	var out struct {
		Status TokenReviewStatus `json:"status"`
	}
	if err := c.do(ctx, http.MethodPost, "/apis/authentication.k8s.io/v1/tokenreviews", in, &out); err != nil {
		return nil, fmt.Errorf("TokenReview: %w", err)
	}
	return &out.Status, nil
}

// GetPod reads a pod.
func (c *Client) GetPod(ctx context.Context, namespace, name string) (*Pod, error) {
	if namespace == "" || name == "" {
		return nil, errors.New("get pod: empty namespace or name")
	}
	var p Pod
	if err := c.do(ctx, http.MethodGet, "/api/v1/namespaces/"+url.PathEscape(namespace)+"/pods/"+url.PathEscape(name), nil, &p); err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", clip.Cut(namespace, 64), clip.Cut(name, 64), err)
	}
	return &p, nil
}

// GetNode reads a node.
func (c *Client) GetNode(ctx context.Context, name string) (*Node, error) {
	if name == "" {
		return nil, errors.New("get node: empty name")
	}
	var n Node
	if err := c.do(ctx, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name), nil, &n); err != nil {
		return nil, fmt.Errorf("get node %s: %w", clip.Cut(name, 64), err)
	}
	return &n, nil
}

// MaxCredentialSize bounds a credential file (token, certificate, key, CA)
// a Config names.
const MaxCredentialSize = 1 << 20

// ReadFile reads a file of at most limit bytes.
func ReadFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var b bytes.Buffer
	n, err := b.ReadFrom(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if n > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b.Bytes(), nil
}
