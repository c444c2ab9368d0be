package testutil

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// WaitHTTP polls url (e.g. an agent's /ready) until it answers code with
// a body starting with prefix, and returns the last answer ("<code>
// <quoted body>"); it fails the test after timeout.
func WaitHTTP(t testing.TB, url string, code int, prefix string, timeout time.Duration) string {
	t.Helper()
	var last string
	err := Poll(timeout, 50*time.Millisecond, func() (bool, error) {
		resp, err := http.Get(url)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		last = fmt.Sprintf("%d %q", resp.StatusCode, b)
		return err == nil && resp.StatusCode == code && strings.HasPrefix(string(b), prefix), nil
	})
	if err != nil {
		t.Fatalf("%s never answered %d %s...: last %s", url, code, prefix, last)
	}
	return last
}

// Get fetches url with c (http.DefaultClient when nil) and returns the
// status code and body; a failed request or read fails the test.
func Get(t testing.TB, c *http.Client, url string) (int, []byte) {
	t.Helper()
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}
