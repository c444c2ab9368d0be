// Package clip shortens text that came from a client (a workload, an agent,
// an admin's request) before an error message or a log line quotes it, so
// that no message echoes more than a short prefix of what was sent.
package clip

import (
	"strconv"
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
