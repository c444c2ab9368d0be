package cgroup

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// Tokens of SPIRE's matcher grammar: a whole path segment each.
const (
	idToken       = "<id>"
	wildcardToken = "*"
)

// Matchers find a container ID in a cgroup path with patterns, SPIRE's
// container_id_cgroup_matchers. Each pattern is one of:
//
//   - SPIRE's grammar: a "/"-separated path whose segments are literal,
//     "*" (any one segment) or "<id>" (the ID: exactly one such segment),
//     such as "/docker/<id>" or "/my.slice/*/<id>/*". These must not be
//     ambiguous: two patterns that could match one path are refused.
//   - A regular expression (Go syntax, RE2) with exactly one capture
//     group, the ID, such as the edge seed's "/system.slice/docker-([^.]+).scope"
//     (a Sigil extension: SPIRE refuses these).
//
// Either way a pattern must match the whole path. The first pattern (in
// configuration order) that matches a path gives its ID.
type Matchers struct {
	res []*regexp.Regexp
}

// CompileMatchers compiles patterns; the error names the first bad one.
func CompileMatchers(patterns []string) (*Matchers, error) {
	if len(patterns) == 0 {
		return nil, errors.New("at least one pattern is required")
	}
	m := &Matchers{}
	var spire []string
	for _, p := range patterns {
		var re *regexp.Regexp
		var err error
		if slices.Contains(strings.Split(p, "/"), idToken) {
			spire = append(spire, p)
			re, err = compileSPIREPattern(p)
		} else {
			re, err = compileRegexpPattern(p)
		}
		if err != nil {
			return nil, err
		}
		m.res = append(m.res, re)
	}
	for i, a := range spire {
		for _, b := range spire[i+1:] {
			if overlap(a, b) {
				return nil, fmt.Errorf("patterns %s and %s are ambiguous: both can match one cgroup path", clip.Quote(a), clip.Quote(b))
			}
		}
	}
	return m, nil
}

func compileSPIREPattern(p string) (*regexp.Regexp, error) {
	segs := strings.Split(p, "/")
	ids := 0
	for i, s := range segs {
		switch s {
		case idToken:
			ids++
			segs[i] = `([^/]*)`
		case wildcardToken:
			segs[i] = `[^/]*`
		default:
			segs[i] = regexp.QuoteMeta(s)
		}
	}
	if ids != 1 {
		return nil, fmt.Errorf("pattern %s must contain the segment %s exactly once", clip.Quote(p), idToken)
	}
	return regexp.Compile("^" + strings.Join(segs, "/") + "$")
}

func compileRegexpPattern(p string) (*regexp.Regexp, error) {
	re, err := regexp.Compile("^(?:" + p + ")$")
	if err != nil {
		return nil, fmt.Errorf("pattern %s has no %s segment and is not a regular expression: %v", clip.Quote(p), idToken, err)
	}
	if re.NumSubexp() != 1 {
		return nil, fmt.Errorf("pattern %s: a pattern is SPIRE's (a %s segment, e.g. \"/docker/%s\") or a regular expression with exactly one capture group, the ID (e.g. \"/docker/([^/]+)\"); this one has %d groups",
			clip.Quote(p), idToken, idToken, re.NumSubexp())
	}
	return re, nil
}

// overlap: two SPIRE patterns of as many segments whose segments pairwise
// are equal or a token can match one path.
func overlap(a, b string) bool {
	as, bs := strings.Split(a, "/"), strings.Split(b, "/")
	if len(as) != len(bs) {
		return false
	}
	for i := range as {
		x, y := as[i], bs[i]
		if x != y && x != wildcardToken && y != wildcardToken && x != idToken && y != idToken {
			return false
		}
	}
	return true
}

// Match returns the ID the first matching pattern captures from path,
// and the scope (path cut after the segment holding the ID's end).
func (m *Matchers) Match(path string) (id, scope string, ok bool) {
	for _, re := range m.res {
		loc := re.FindStringSubmatchIndex(path)
		if loc == nil {
			continue
		}
		if loc[2] < 0 {
			return "", path, true // the group did not take part
		}
		end := loc[3]
		if i := strings.IndexByte(path[end:], '/'); i >= 0 {
			end += i
		} else {
			end = len(path)
		}
		return path[loc[2]:loc[3]], path[:end], true
	}
	return "", "", false
}

// locate applies the matchers to every entry: the IDs found must agree; a
// pattern that matched but captured nothing is an error.
func (m *Matchers) locate(entries []Entry) (Container, error) {
	var c Container
	matched := false
	for _, e := range entries {
		id, scope, ok := m.Match(e.Path)
		if !ok {
			continue
		}
		matched = true
		if c.ID != "" && id != c.ID {
			return Container{}, fmt.Errorf("%w: cgroups name containers %s and %s", ErrConflict, clip.Quote(c.ID), clip.Quote(id))
		}
		if id != "" {
			c.ID = id
			if !slices.Contains(c.Scopes, scope) {
				c.Scopes = append(c.Scopes, scope)
			}
		}
	}
	if matched && c.ID == "" {
		return Container{}, errors.New("a container_id_cgroup_matchers pattern matched, but captured an empty container ID")
	}
	slices.Sort(c.Scopes)
	return c, nil
}
