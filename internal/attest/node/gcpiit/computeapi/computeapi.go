// Package computeapi is the Google side of the gcp_iit server half: it
// implements gcpiit.Compute with the Compute Engine API's instances.get
// (GET .../projects/{project}/zones/{zone}/instances/{name}, JSON) over
// net/http, authorized with an OAuth 2.0 token from golang.org/x/oauth2/google:
// the service account key of service_account_file (JWT bearer grant to its
// token_uri), else Application Default Credentials
// (GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, the metadata server).
// Only sigil-server links it: the agent half of gcp_iit is plain HTTP.
package computeapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"

	"github.com/sigil-spiffe/sigil/internal/attest/node/gcpiit"
	"github.com/sigil-spiffe/sigil/internal/clip"
)

// DefaultEndpoint is the Compute Engine API v1.
const DefaultEndpoint = "https://compute.googleapis.com/compute/v1/"

// Scope is the OAuth scope the server asks for.
const Scope = "https://www.googleapis.com/auth/compute.readonly"

const maxResponse = 4 << 20

// Client implements gcpiit.Compute.
type Client struct {
	endpoint string
	file     []byte // service_account_file's content, nil for ADC

	mu     sync.Mutex
	client *http.Client
}

// LoadCredentials reads and checks a service account key file.
func LoadCredentials(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if _, err := google.CredentialsFromJSONWithType(context.Background(), b, google.ServiceAccount, Scope); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// CheckCredentials is gcpiit.ParseServerConfig's check of
// service_account_file.
func CheckCredentials(path string) error {
	_, err := LoadCredentials(path)
	return err
}

// New returns a client for cfg. With service_account_file it reads the key
// now; Application Default Credentials are looked up at the first call.
func New(cfg gcpiit.ServerConfig) (*Client, error) {
	c := &Client{endpoint: cfg.ComputeEndpoint}
	if c.endpoint == "" {
		c.endpoint = DefaultEndpoint
	}
	if !strings.HasSuffix(c.endpoint, "/") {
		c.endpoint += "/"
	}
	if cfg.ServiceAccountFile != "" {
		b, err := LoadCredentials(cfg.ServiceAccountFile)
		if err != nil {
			return nil, fmt.Errorf("gcp_iit: service_account_file: %w", err)
		}
		c.file = b
	}
	return c, nil
}

// httpClient returns the authorized client, creating it at the first call
// (a failed lookup of default credentials is tried again next time).
func (c *Client) httpClient(ctx context.Context) (*http.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		return c.client, nil
	}
	// The token source outlives this call's context.
	bg := context.WithoutCancel(ctx)
	var creds *google.Credentials
	var err error
	if c.file != nil {
		creds, err = google.CredentialsFromJSONWithType(bg, c.file, google.ServiceAccount, Scope)
	} else {
		creds, err = google.FindDefaultCredentials(bg, Scope)
	}
	if err != nil {
		return nil, fmt.Errorf("google credentials: %w", err)
	}
	c.client = oauth2.NewClient(bg, creds.TokenSource)
	return c.client, nil
}

// instance is the part of a Compute Engine instance resource the
// attestor reads.
type instance struct {
	Tags struct {
		Items []string `json:"items"`
	} `json:"tags"`
	Labels   map[string]string `json:"labels"`
	Metadata struct {
		Items []struct {
			Key   string  `json:"key"`
			Value *string `json:"value"`
		} `json:"items"`
	} `json:"metadata"`
}

// Instance implements gcpiit.Compute: instances.get.
func (c *Client) Instance(ctx context.Context, project, zone, name string) (*gcpiit.Instance, error) {
	hc, err := c.httpClient(ctx)
	if err != nil {
		return nil, err
	}
	u := c.endpoint + "projects/" + url.PathEscape(project) + "/zones/" + url.PathEscape(zone) + "/instances/" + url.PathEscape(name)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("compute API instances.get: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, fmt.Errorf("compute API instances.get: %w", err)
	}
	if resp.StatusCode == http.StatusNotFound && instanceNotFound(body, name) {
		return nil, fmt.Errorf("%w: Compute API instances.get: 404 %s", gcpiit.ErrNoSuchInstance, errorMessage(body))
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("compute API instances.get: %s: %s", resp.Status, errorMessage(body))
	}
	var in instance
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, fmt.Errorf("compute API instances.get: %s", clip.Cut(err.Error(), 100))
	}
	out := &gcpiit.Instance{Tags: in.Tags.Items, Labels: in.Labels}
	for _, m := range in.Metadata.Items {
		v := ""
		if m.Value != nil {
			v = *m.Value
		}
		out.Metadata = append(out.Metadata, gcpiit.MetadataItem{Key: m.Key, Value: v})
	}
	return out, nil
}

// instanceNotFound tells Google's answer that the instance does not exist
// (reason notFound, naming the instance) from another 404 (a wrong
// compute_endpoint), which is the server's failure.
func instanceNotFound(body []byte, name string) bool {
	var e struct {
		Error struct {
			Message string `json:"message"`
			Errors  []struct {
				Reason string `json:"reason"`
			} `json:"errors"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || len(e.Error.Errors) == 0 || e.Error.Errors[0].Reason != "notFound" {
		return false
	}
	return strings.Contains(e.Error.Message, "/instances/"+name+"'")
}

// errorMessage is the message of a Google API error answer.
func errorMessage(body []byte) string {
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
		return clip.Quote(e.Error.Message)
	}
	return clip.Quote(string(body))
}
