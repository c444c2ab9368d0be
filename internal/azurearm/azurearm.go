// Package azurearm is the Azure side of the server halves of azure_msi and
// azure_imds: Azure Resource Manager's REST API (resources, virtual
// machines, scale sets, network interfaces) over net/http and JSON,
// authorized with a token of a tenant's app registration (client
// credentials grant at Azure AD) or of the server's own managed identity
// (its instance metadata service). No Azure SDK. Only sigil-server links
// it; it imports neither attestor, so either can be left out of a build.
package azurearm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// API versions of the Resource Manager calls.
const (
	computeAPIVersion   = "2024-07-01"
	networkAPIVersion   = "2024-05-01"
	imdsTokenAPIVersion = "2018-02-01"
	imdsInstanceVersion = "2021-02-01"
)

const (
	maxResponse = 4 << 20
	maxPages    = 20
)

// Client reads Resource Manager.
type Client struct {
	login, management, metadata string
	http                        *http.Client
	imds                        *http.Client
	now                         func() time.Time

	mu     sync.Mutex
	tokens map[string]token // by tenant ID ("" for the managed identity)
	sub    string           // the server VM's subscription, once read
}

type token struct {
	value string
	exp   time.Time
}

// New returns a client for the endpoints (Azure AD, Resource Manager, the
// server's metadata service; no trailing "/").
func New(login, management, metadata string) *Client {
	return &Client{
		login: login, management: management, metadata: metadata,
		http:   &http.Client{Transport: http.DefaultTransport, Timeout: 30 * time.Second},
		imds:   &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 10 * time.Second},
		now:    time.Now,
		tokens: map[string]token{},
	}
}

// NetworkInterface reads a network interface's security group and
// subnets.
func (c *Client) NetworkInterface(ctx context.Context, tok, id string) (Interface, error) {
	var nic struct {
		Properties struct {
			NetworkSecurityGroup *struct {
				ID string `json:"id"`
			} `json:"networkSecurityGroup"`
			IPConfigurations []struct {
				Properties struct {
					Subnet *struct {
						ID string `json:"id"`
					} `json:"subnet"`
				} `json:"properties"`
			} `json:"ipConfigurations"`
		} `json:"properties"`
	}
	if err := c.Get(ctx, tok, c.management+EscapePath(id)+"?api-version="+networkAPIVersion, &nic); err != nil {
		return Interface{}, err
	}
	in := Interface{ID: id}
	if g := nic.Properties.NetworkSecurityGroup; g != nil {
		in.SecurityGroupID = g.ID
	}
	for _, ipc := range nic.Properties.IPConfigurations {
		if s := ipc.Properties.Subnet; s != nil && s.ID != "" {
			in.SubnetIDs = append(in.SubnetIDs, s.ID)
		}
	}
	return in, nil
}

// EscapePath escapes each segment of a resource ID.
func EscapePath(id string) string {
	parts := strings.Split(id, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// Get GETs u with the bearer token into out.
func (c *Client) Get(ctx context.Context, tok, u string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	body, status, err := do(c.http, req)
	if err != nil {
		return fmt.Errorf("resource Manager: %w", err)
	}
	if status != http.StatusOK {
		return fmt.Errorf("resource Manager: GET %s: %d %s", req.URL.Path, status, armError(body))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("resource Manager: GET %s: %s", req.URL.Path, clip.Cut(err.Error(), 100))
	}
	return nil
}

func do(hc *http.Client, req *http.Request) ([]byte, int, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, 0, err
	}
	return body, resp.StatusCode, nil
}

// armError is the code and message of an Azure error answer: Resource
// Manager's {"error": {"code", "message"}} or Azure AD's {"error",
// "error_description"}.
func armError(body []byte) string {
	var e struct {
		Error       json.RawMessage `json:"error"`
		Description string          `json:"error_description"`
	}
	if json.Unmarshal(body, &e) == nil {
		var obj struct{ Code, Message string }
		if json.Unmarshal(e.Error, &obj) == nil && obj.Code != "" {
			return obj.Code + ": " + clip.Quote(obj.Message)
		}
		var code string
		if json.Unmarshal(e.Error, &code) == nil && code != "" {
			return code + ": " + clip.Quote(e.Description)
		}
	}
	return clip.Quote(string(body))
}

// Credentials name how a tenant's resources are read: its app (AppID,
// AppSecret) or, without one, the server's managed identity; and in which
// subscription (SubscriptionID; "" with the managed identity: its VM's).
type Credentials struct {
	TenantID, AppID, AppSecret, SubscriptionID string
	// AssertionPath: the app authenticates with the JWT in this file (a
	// client assertion, read again for each token: projected tokens
	// rotate) instead of AppSecret.
	AssertionPath string
}

// Interface is a network interface: its ID, its security group's ("" for
// none) and its IP configurations' subnets'.
type Interface struct {
	ID              string
	SecurityGroupID string
	SubnetIDs       []string
}

// Management is Resource Manager's base URL.
func (c *Client) Management() string { return c.management }

// Credentials returns a Resource Manager token and the subscription to
// search for a tenant: its app's, or the server's managed identity and its
// VM's subscription (or the tenant's subscription_id).
func (c *Client) Credentials(ctx context.Context, t Credentials) (string, string, error) {
	if t.AppID != "" {
		tok, err := c.cachedToken(t.TenantID, func() (token, error) { return c.appToken(ctx, t) })
		return tok, t.SubscriptionID, err
	}
	tok, err := c.cachedToken("", func() (token, error) { return c.managedIdentityToken(ctx) })
	if err != nil {
		return "", "", err
	}
	if t.SubscriptionID != "" {
		return tok, t.SubscriptionID, nil
	}
	sub, err := c.serverSubscription(ctx)
	return tok, sub, err
}

func (c *Client) cachedToken(key string, fetch func() (token, error)) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.tokens[key]; ok && c.now().Before(t.exp.Add(-time.Minute)) {
		return t.value, nil
	}
	t, err := fetch()
	if err != nil {
		return "", err
	}
	c.tokens[key] = t
	return t.value, nil
}

// tokenAnswer is an OAuth token answer (Azure AD's expires_in is a
// number, the metadata service's a string).
type tokenAnswer struct {
	AccessToken string          `json:"access_token"`
	ExpiresIn   json.RawMessage `json:"expires_in"`
}

func (a tokenAnswer) token(now time.Time) (token, error) {
	if a.AccessToken == "" {
		return token{}, errors.New("no access_token in the answer")
	}
	s, err := strconv.Atoi(strings.Trim(string(a.ExpiresIn), `"`))
	if err != nil || s <= 0 {
		s = 300
	}
	return token{value: a.AccessToken, exp: now.Add(time.Duration(s) * time.Second)}, nil
}

// appToken is the client credentials grant of the tenant's app.
func (c *Client) appToken(ctx context.Context, t Credentials) (token, error) {
	form := url.Values{
		"grant_type": {"client_credentials"}, "client_id": {t.AppID}, "client_secret": {t.AppSecret},
		"scope": {c.management + "/.default"},
	}
	if t.AssertionPath != "" {
		b, err := os.ReadFile(t.AssertionPath)
		if err != nil {
			return token{}, fmt.Errorf("azure AD token for app %s of tenant %s: %w", t.AppID, t.TenantID, err)
		}
		jwt := strings.TrimSpace(string(b))
		if strings.Count(jwt, ".") != 2 || strings.ContainsAny(jwt, " \n") {
			return token{}, fmt.Errorf("azure AD token for app %s of tenant %s: %s does not hold a JWT", t.AppID, t.TenantID, t.AssertionPath)
		}
		form.Del("client_secret")
		form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		form.Set("client_assertion", jwt)
	}
	u := c.login + "/" + url.PathEscape(t.TenantID) + "/oauth2/v2.0/token"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return token{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	body, status, err := do(c.http, req)
	if err != nil {
		return token{}, fmt.Errorf("azure AD token for app %s of tenant %s: %w", t.AppID, t.TenantID, err)
	}
	if status != http.StatusOK {
		return token{}, fmt.Errorf("azure AD token for app %s of tenant %s: %d %s", t.AppID, t.TenantID, status, armError(body))
	}
	var a tokenAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return token{}, fmt.Errorf("azure AD token: %s", clip.Cut(err.Error(), 100))
	}
	return a.token(c.now())
}

// managedIdentityToken is the server VM's managed identity token for
// Resource Manager.
func (c *Client) managedIdentityToken(ctx context.Context) (token, error) {
	q := url.Values{"api-version": {imdsTokenAPIVersion}, "resource": {c.management + "/"}}
	var a tokenAnswer
	if err := c.imdsGet(ctx, "/metadata/identity/oauth2/token?"+q.Encode(), &a); err != nil {
		return token{}, fmt.Errorf("the server's managed identity (no app_id for the tenant): %w", err)
	}
	return a.token(c.now())
}

// serverSubscription is the subscription of the server's VM.
func (c *Client) serverSubscription(ctx context.Context) (string, error) {
	c.mu.Lock()
	sub := c.sub
	c.mu.Unlock()
	if sub != "" {
		return sub, nil
	}
	var md struct {
		Compute struct {
			SubscriptionID string `json:"subscriptionId"`
		} `json:"compute"`
	}
	if err := c.imdsGet(ctx, "/metadata/instance?api-version="+imdsInstanceVersion+"&format=json", &md); err != nil {
		return "", fmt.Errorf("the server's subscription (no subscription_id for the tenant): %w", err)
	}
	if md.Compute.SubscriptionID == "" {
		return "", errors.New("the server's instance metadata has no subscriptionId")
	}
	c.mu.Lock()
	c.sub = md.Compute.SubscriptionID
	c.mu.Unlock()
	return md.Compute.SubscriptionID, nil
}

func (c *Client) imdsGet(ctx context.Context, pathQuery string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.metadata+pathQuery, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Metadata", "true")
	body, status, err := do(c.imds, req)
	if err != nil {
		return fmt.Errorf("instance metadata service: %w", err)
	}
	if status != http.StatusOK {
		return fmt.Errorf("instance metadata service: GET %s: %d %s", req.URL.Path, status, armError(body))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("instance metadata service: %s", clip.Cut(err.Error(), 100))
	}
	return nil
}
