// Package lazyre holds regular expressions that are compiled the first time
// they are used instead of when their package is initialised.
//
// A package-level regexp.MustCompile runs in every binary that links the
// package, whether or not the code using it ever runs: the sigil-agent
// links every plugin of its catalog, and a device that configures none of
// the cloud attestors paid for their compiled patterns (a bounded
// repetition such as {1,512} compiles to hundreds of instructions) in heap
// and resident memory. A Regexp declared with New costs a few words until
// its first match.
//
// The expressions are constants of the program, as with MustCompile: one
// that does not compile panics, at its first use rather than at start-up;
// the tests of the package declaring it must use it (they do, since they
// test what it validates).
package lazyre

import (
	"regexp"
	"sync"
)

// Regexp is a regular expression compiled on first use; safe for
// concurrent use.
type Regexp struct {
	expr string
	once sync.Once
	re   *regexp.Regexp
}

// New returns the expression expr, not compiled yet.
func New(expr string) *Regexp {
	return &Regexp{expr: expr}
}

// Regexp returns the compiled expression, compiling it on the first call;
// it panics if the expression does not compile.
func (r *Regexp) Regexp() *regexp.Regexp {
	r.once.Do(func() { r.re = regexp.MustCompile(r.expr) })
	return r.re
}

// compiled reports whether the expression has been compiled (for tests).
func (r *Regexp) compiled() bool {
	return r.re != nil
}

// String returns the source text of the expression.
func (r *Regexp) String() string { return r.expr }

// MatchString is regexp.Regexp.MatchString.
func (r *Regexp) MatchString(s string) bool { return r.Regexp().MatchString(s) }

// FindStringSubmatch is regexp.Regexp.FindStringSubmatch.
func (r *Regexp) FindStringSubmatch(s string) []string { return r.Regexp().FindStringSubmatch(s) }

// FindStringIndex is regexp.Regexp.FindStringIndex.
func (r *Regexp) FindStringIndex(s string) []int { return r.Regexp().FindStringIndex(s) }
