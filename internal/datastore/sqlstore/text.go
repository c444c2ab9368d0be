package sqlstore

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Text columns hold valid UTF-8 without NUL bytes on every dialect
// (PostgreSQL's text type cannot hold anything else; SQLite would). A write
// naming other text is refused with its own error before any statement
// runs, and a lookup by such a key finds nothing: no stored key can equal
// it.

// errNotText is wrapped by the error of a write with text that is not
// storable; it matches datastore.ErrInvalid.
var errNotText = fmt.Errorf("is not UTF-8 text without NUL bytes (%w)", datastore.ErrInvalid)

// isText reports whether s can be stored in a text column.
func isText(s string) bool {
	return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

// checkText returns an error naming what when a value is not text. The
// value is not repeated (it is a client's).
func checkText(what string, vals ...string) error {
	for _, v := range vals {
		if !isText(v) {
			return fmt.Errorf("%s %w", what, errNotText)
		}
	}
	return nil
}

// checkSelectorsText checks selectors' types and values.
func checkSelectorsText(sels []selector.Selector) error {
	for _, s := range sels {
		if !isText(s.Type) || !isText(s.Value) {
			return fmt.Errorf("a selector %w", errNotText)
		}
	}
	return nil
}
