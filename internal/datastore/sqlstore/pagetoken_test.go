package sqlstore

import (
	"errors"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

func TestDecodePageToken(t *testing.T) {
	for _, key := range []string{"a", "spiffe://example.org/spire/agent/x", "0192-é", strings.Repeat("k", maxPageKeyLen)} {
		got, err := decodePageToken(encodePageToken(key))
		if err != nil || got != key {
			t.Errorf("round trip of %.40q: %.40q, %v", key, got, err)
		}
	}
	if got, err := decodePageToken(""); got != "" || err != nil {
		t.Errorf("empty token: %q, %v", got, err)
	}
	for name, tok := range map[string]string{
		"not base64url":     strings.Repeat("~", 1<<20),
		"padded":            encodePageToken("ab") + "=",
		"line break":        encodePageToken("ab")[:1] + "\r\n" + encodePageToken("ab")[1:],
		"std alphabet":      "a+b/",
		"non-zero pad bits": "QR", // "A" is "QQ"
		"too long":          encodePageToken(strings.Repeat("k", maxPageKeyLen+1)),
	} {
		_, err := decodePageToken(tok)
		if !errors.Is(err, datastore.ErrInvalidPage) {
			t.Errorf("%s: %v, want ErrInvalidPage", name, err)
			continue
		}
		if len(tok) > 8 && strings.Contains(err.Error(), tok[:8]) {
			t.Errorf("%s: the error repeats the token: %.200s", name, err)
		}
	}
}

// FuzzDecodePageToken: any client text either decodes to a key whose token
// is exactly that text (tokens are canonical) or is ErrInvalidPage with an
// error that does not repeat it; nothing panics.
func FuzzDecodePageToken(f *testing.F) {
	f.Add("")
	f.Add(encodePageToken("spiffe://example.org/spire/agent/join_token/x"))
	f.Add("~~~~")
	f.Add("QR")
	f.Fuzz(func(t *testing.T, tok string) {
		key, err := decodePageToken(tok)
		if err != nil {
			if !errors.Is(err, datastore.ErrInvalidPage) {
				t.Fatalf("decodePageToken(%q): %v, want ErrInvalidPage", tok, err)
			}
			if len(tok) >= 12 && strings.Contains(err.Error(), tok) {
				t.Fatalf("decodePageToken(%q): error repeats the token: %v", tok, err)
			}
			return
		}
		if tok == "" {
			if key != "" {
				t.Fatalf("empty token decoded to %q", key)
			}
			return
		}
		if key == "" || len(key) > maxPageKeyLen {
			t.Fatalf("decodePageToken(%q) = %d-byte key", tok, len(key))
		}
		if again := encodePageToken(key); again != tok {
			t.Fatalf("decodePageToken(%q) = %q, which encodes as %q", tok, key, again)
		}
	})
}
