package oidc_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	oidcapp "github.com/sigil-spiffe/sigil/internal/app/oidc"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// writeBundle writes a SPIFFE bundle holding the JWT keys to path.
func writeBundle(t *testing.T, path string, keys ...*testca.JWTKey) {
	t.Helper()
	b := spiffebundle.New(td)
	for _, k := range keys {
		k.AddTo(t, b)
	}
	raw, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// logs records the messages logged.
type logs struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Message)
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }

func (l *logs) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// start parses conf as a file would be, builds the provider and runs it
// until the test ends.
func start(t *testing.T, conf string, log *logs) *oidcapp.Provider {
	t.Helper()
	cfg, err := config.ParseOIDC("oidc.conf", []byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	p, err := oidcapp.New(context.Background(), cfg, slog.New(log), oidcapp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return p
}

// TestUnixSocketAndFileSource: behind a proxy on a unix socket (0777),
// with keys from a SPIFFE bundle file: discovery answers for the
// configured domain, /keys serves the file's keys and follows the file;
// the health checks say ready once keys were read; a second provider on
// the same live socket is refused.
// fetch is testutil.Get with the body as text.
func fetch(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	code, b := testutil.Get(t, c, url)
	return code, string(b)
}

func TestUnixSocketAndFileSource(t *testing.T) {
	dir := testutil.ShortTempDir(t)
	sock := filepath.Join(dir, "run", "oidc.sock")
	bundle := filepath.Join(dir, "bundle.json")
	k1 := testca.NewJWTKey(t, "key-1")
	writeBundle(t, bundle, k1)
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`domains = ["oidc.example.org"]
listen_socket_path = %q
file {
    path = %q
    poll_interval = "20ms"
}
health_checks {
    bind_port = %d
}
`, sock, bundle, port)
	log := &logs{}
	start(t, conf, log)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o777 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %s: %v %v, want a 0777 socket", sock, fi.Mode(), err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}

	testutil.WaitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/ready", port), 200, "", 10*time.Second)
	if code, body := fetch(t, c, "http://oidc.example.org/.well-known/openid-configuration"); code != 200 ||
		!strings.Contains(body, `"issuer": "https://oidc.example.org"`) || !strings.Contains(body, `"jwks_uri": "https://oidc.example.org/keys"`) {
		t.Fatalf("discovery: %d %s", code, body)
	}
	if code, body := fetch(t, c, "http://other.example.org/.well-known/openid-configuration"); code != 400 {
		t.Fatalf("discovery for another domain: %d %s", code, body)
	}
	if code, body := fetch(t, c, "http://oidc.example.org/keys"); code != 200 || !strings.Contains(body, `"kid": "key-1"`) || !strings.Contains(body, `"alg": "ES256"`) {
		t.Fatalf("keys: %d %s", code, body)
	}

	k2 := testca.NewJWTKey(t, "key-2")
	writeBundle(t, bundle, k1, k2)
	if err := testutil.Poll(10*time.Second, 20*time.Millisecond, func() (bool, error) {
		_, body := fetch(t, c, "http://oidc.example.org/keys")
		return strings.Contains(body, `"kid": "key-2"`), nil
	}); err != nil {
		t.Fatal("the key added to the file is not served")
	}
	// A file that no longer loads keeps the last keys.
	if err := os.WriteFile(bundle, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Poll(10*time.Second, 20*time.Millisecond, func() (bool, error) {
		return log.count("Failed to load the SPIFFE bundle file") > 0, nil
	}); err != nil {
		t.Fatal("the broken file was never read")
	}
	if code, body := fetch(t, c, "http://oidc.example.org/keys"); code != 200 || !strings.Contains(body, `"kid": "key-2"`) {
		t.Fatalf("keys after the file broke: %d %s", code, body)
	}

	// Another provider on the same live socket is refused.
	other := strings.Replace(conf, fmt.Sprint(port), "0", 1)
	other = strings.Replace(other, "health_checks {\n    bind_port = 0\n}\n", "", 1)
	cfg, err := config.ParseOIDC("oidc.conf", []byte(other))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oidcapp.New(context.Background(), cfg, slog.New(slog.DiscardHandler), oidcapp.Options{}); err == nil {
		t.Fatal("a second provider took over the live socket")
	}
}
