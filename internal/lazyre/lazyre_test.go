package lazyre

import (
	"regexp"
	"sync"
	"testing"
)

func TestCompiledOnFirstUse(t *testing.T) {
	r := New(`^[a-z]{1,512}$`)
	if r.compiled() {
		t.Fatal("compiled by New")
	}
	if r.String() != `^[a-z]{1,512}$` {
		t.Fatalf("String = %q", r.String())
	}
	if r.compiled() {
		t.Fatal("compiled by String")
	}
	if !r.MatchString("abc") || r.MatchString("ABC") {
		t.Fatal("MatchString disagrees with the expression")
	}
	if !r.compiled() {
		t.Fatal("not compiled after a match")
	}
	first := r.Regexp()
	if again := r.Regexp(); again != first {
		t.Fatal("compiled twice")
	}
}

func TestSameAnswersAsRegexp(t *testing.T) {
	const expr = `\bpod([[:xdigit:]]{8})[-_](\d+)\b`
	r, want := New(expr), regexp.MustCompile(expr)
	for _, s := range []string{"", "pod0123abcd_42", "x/pod0123abcd-7/y", "pod0123abc_1", "podzzzzzzzz_1"} {
		if got, w := r.MatchString(s), want.MatchString(s); got != w {
			t.Errorf("MatchString(%q) = %v, want %v", s, got, w)
		}
		if got, w := r.FindStringSubmatch(s), want.FindStringSubmatch(s); len(got) != len(w) || (len(w) > 0 && got[1] != w[1]) {
			t.Errorf("FindStringSubmatch(%q) = %q, want %q", s, got, w)
		}
		if got, w := r.FindStringIndex(s), want.FindStringIndex(s); len(got) != len(w) || (len(w) > 0 && (got[0] != w[0] || got[1] != w[1])) {
			t.Errorf("FindStringIndex(%q) = %v, want %v", s, got, w)
		}
	}
}

func TestConcurrentFirstUse(t *testing.T) {
	r := New(`^a+$`)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if !r.MatchString("aaa") {
				t.Error("no match")
			}
		})
	}
	wg.Wait()
}

func TestBadExpressionPanicsOnFirstUse(t *testing.T) {
	r := New(`(`)
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for an expression that does not compile")
		}
	}()
	r.MatchString("x")
}
