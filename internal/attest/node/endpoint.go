package node

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// ParseEndpoint checks the URL of a metadata service or cloud API endpoint
// (an attestor's *_endpoint setting: http or https, a host, no query or
// fragment) and returns it without a trailing "/".
func ParseEndpoint(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%s is not an http:// or https:// URL with a host", clip.Quote(s))
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}
