// Package clip shortens text that came from a client (a workload, an agent,
// an admin's request) before an error message or a log line quotes it, so
// that no message echoes more than a short prefix of what was sent.
package clip

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Max is how many bytes of a client's text Quote keeps. An error that
// quotes two inputs stays within the ~128 bytes of client input a message
// may echo.
const Max = 64

// Quote returns s quoted as %q would, cut to its first Max bytes (on a rune
// boundary) and followed by "..." when it was longer.
func Quote(s string) string {
	if len(s) <= Max {
		return strconv.Quote(s)
	}
	n := Max
	for n > Max-utf8.UTFMax && !utf8.RuneStart(s[n]) {
		n--
	}
	return strconv.Quote(s[:n]) + "..."
}

// Cut returns s cut to its first n bytes (on a rune boundary, invalid
// UTF-8 replaced) followed by "..." when it was longer. It bounds a whole
// message that may embed client input deep inside (a wrapped error's
// text), where Quote could not be applied to the input itself.
func Cut(s string, n int) string {
	n = max(n, 0)
	if len(s) <= n {
		return strings.ToValidUTF8(s, "\uFFFD")
	}
	m := n
	for m > n-utf8.UTFMax && m > 0 && !utf8.RuneStart(s[m]) {
		m--
	}
	if !utf8.RuneStart(s[m]) {
		m = n
	}
	return strings.ToValidUTF8(s[:m], "\uFFFD") + "..."
}
