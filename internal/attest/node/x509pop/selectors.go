package x509pop

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// SelectorKind describes the node selectors of x509pop attestation, so an
// entry with a value Attest can never produce (x509pop:cn:x,
// x509pop:ca:fingerprint:ABC) is refused when it is written:
//
//   - subject:cn:<common name of the device certificate>
//   - ca:fingerprint:<SHA-1 of a CA certificate of the chain, 40 lowercase hex>
//   - serialnumber:<serial of the device certificate, lowercase hex, even length>
//   - san:<key>:<value> for a URI SAN x509pop://<trust domain>/<key>/<value>
func SelectorKind() selector.Kind {
	keys := map[string]func(string) error{
		"subject": func(v string) error {
			if cn, ok := strings.CutPrefix(v, "cn:"); !ok || cn == "" {
				return errors.New(`the only subject selector is "subject:cn:<common name>"`)
			}
			return nil
		},
		"ca": func(v string) error {
			fp, ok := strings.CutPrefix(v, "fingerprint:")
			if !ok {
				return errors.New(`the only ca selector is "ca:fingerprint:<SHA-1, 40 lowercase hex digits>"`)
			}
			if len(fp) != 40 || !isLowerHex(fp) {
				return fmt.Errorf("%s is not a SHA-1 fingerprint (40 lowercase hex digits)", clip.Quote(fp))
			}
			return nil
		},
		"serialnumber": func(v string) error {
			if len(v)%2 != 0 || !isLowerHex(v) {
				return fmt.Errorf("%s is not a serial number as lowercase hex with an even number of digits", clip.Quote(v))
			}
			return nil
		},
		"san": func(v string) error {
			key, value, ok := strings.Cut(v, ":")
			if !ok || key == "" || value == "" || strings.Contains(key, "/") {
				return fmt.Errorf("%s is not <key>:<value> (from a URI SAN x509pop://<trust domain>/<key>/<value>)", clip.Quote(v))
			}
			return nil
		},
	}
	return selector.Kind{
		Type:     Type,
		Producer: `NodeAttestor "x509pop"`,
		Check:    func(v string) error { return selector.CheckKeyed(v, keys) },
	}
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != ""
}
