package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// minAPIVersion is the oldest Engine API this client speaks (Docker 1.12,
// 2016); every field it reads exists since then.
const minAPIVersion = "1.24"

// maxBody bounds an Engine API answer: a container's inspect document is
// a few KiB, more with very many labels or variables.
const maxBody = 4 << 20

// engine speaks the Docker Engine API (or Podman's Docker-compatible one)
// over a unix socket, with net/http.
type engine struct {
	socket  string // file path
	timeout time.Duration
	// tr sends the requests (http.Client's redirects and cookies are of no
	// use on the daemon's socket, and would cost the agent their code).
	tr    *http.Transport
	fixed string // docker_version; "" negotiates

	mu         sync.Mutex
	negotiated string // from /_ping, until a call says the daemon changed
}

func newEngine(socket, version string, timeout time.Duration) *engine {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:        4,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	return &engine{socket: socket, timeout: timeout, fixed: version, tr: tr}
}

func (e *engine) close() { e.tr.CloseIdleConnections() }

// containerJSON is what the attestor reads of GET /containers/{id}/json
// (Engine API ContainerInspectResponse).
type containerJSON struct {
	ID    string `json:"Id"`
	Image string `json:"Image"` // the image's ID, as when the container was created
	State *struct {
		Running bool `json:"Running"`
		Pid     int  `json:"Pid"`
	} `json:"State"`
	Config *struct {
		Image  string            `json:"Image"` // as given to docker run
		Env    []string          `json:"Env"`
		Labels map[string]string `json:"Labels"`
	} `json:"Config"`
}

// apiError is an Engine API error answer.
type apiError struct {
	status  int
	message string
}

func (e *apiError) Error() string {
	if e.message == "" {
		return fmt.Sprintf("HTTP %d", e.status)
	}
	return fmt.Sprintf("HTTP %d: %s", e.status, e.message)
}

// errNoSuchContainer: the engine does not know the container (404).
var errNoSuchContainer = errors.New("no such container")

// inspect returns GET /v<version>/containers/{id}/json.
func (e *engine) inspect(ctx context.Context, id string) (*containerJSON, error) {
	v, err := e.version(ctx)
	if err != nil {
		return nil, err
	}
	var c containerJSON
	err = e.get(ctx, "/v"+v+"/containers/"+url.PathEscape(id)+"/json", &c)
	var ae *apiError
	switch {
	case errors.As(err, &ae) && ae.status == http.StatusNotFound:
		return nil, fmt.Errorf("%w %s", errNoSuchContainer, id)
	case errors.As(err, &ae) && ae.status == http.StatusBadRequest && strings.Contains(ae.message, "API version"):
		// The daemon was replaced by one that no longer speaks the
		// negotiated version: negotiate again on the next call.
		e.mu.Lock()
		e.negotiated = ""
		e.mu.Unlock()
		return nil, err
	case err != nil:
		return nil, err
	}
	if c.Config == nil || c.State == nil {
		return nil, fmt.Errorf("container %s: the answer has no Config or State", id)
	}
	return &c, nil
}

// version is docker_version, or the version negotiated with GET /_ping:
// the daemon's own (its API-Version header), since what this client reads
// has not changed since minAPIVersion.
func (e *engine) version(ctx context.Context) (string, error) {
	if e.fixed != "" {
		return e.fixed, nil
	}
	e.mu.Lock()
	v := e.negotiated
	e.mu.Unlock()
	if v != "" {
		return v, nil
	}
	resp, err := e.do(ctx, "/_ping")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /_ping: %w", &apiError{status: resp.StatusCode})
	}
	v = resp.Header.Get("Api-Version")
	if !validVersion(v) {
		return "", fmt.Errorf("GET /_ping: the daemon's API-Version header %s is not an API version", clip.Quote(v))
	}
	if versionLess(v, minAPIVersion) {
		return "", fmt.Errorf("the daemon speaks Engine API %s, older than %s (Docker 1.12), the oldest this attestor speaks", v, minAPIVersion)
	}
	e.mu.Lock()
	e.negotiated = v
	e.mu.Unlock()
	return v, nil
}

// get decodes the JSON answer of GET path into dst; an error status
// becomes an *apiError with the daemon's message.
func (e *engine) get(ctx context.Context, path string, dst any) error {
	resp, err := e.do(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return fmt.Errorf("GET %s: read answer: %w", path, err)
	}
	if len(body) > maxBody {
		return fmt.Errorf("GET %s: answer larger than %d bytes", path, maxBody)
	}
	if resp.StatusCode != http.StatusOK {
		var m struct {
			Message string `json:"message"`
		}
		_ = json.Unmarshal(body, &m)
		return &apiError{status: resp.StatusCode, message: clip.Cut(m.Message, 128)}
	}
	if err := json.Unmarshal(body, dst); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// do sends GET path with the per-request timeout; a daemon that does not
// answer in time gives an error that says so.
func (e *engine) do(ctx context.Context, path string) (*http.Response, error) {
	rctx, cancel := context.WithTimeout(ctx, e.timeout)
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, "http://docker"+path, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	resp, err := e.tr.RoundTrip(req)
	if err != nil {
		timedOut := ctx.Err() == nil && errors.Is(rctx.Err(), context.DeadlineExceeded)
		cancel()
		if timedOut {
			return nil, fmt.Errorf("GET %s: no answer from the Engine API at %s within %s", path, e.socket, e.timeout)
		}
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelBody releases the request's timeout when the body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// validVersion accepts "1.41": two dot-separated decimal numbers.
func validVersion(v string) bool {
	major, minor, ok := strings.Cut(v, ".")
	_, err1 := strconv.ParseUint(major, 10, 16)
	_, err2 := strconv.ParseUint(minor, 10, 16)
	return ok && err1 == nil && err2 == nil
}

// versionLess compares two valid versions.
func versionLess(a, b string) bool {
	am, an, _ := strings.Cut(a, ".")
	bm, bn, _ := strings.Cut(b, ".")
	x, _ := strconv.Atoi(am)
	y, _ := strconv.Atoi(bm)
	if x != y {
		return x < y
	}
	x, _ = strconv.Atoi(an)
	y, _ = strconv.Atoi(bn)
	return x < y
}
