package selector

import (
	"errors"
	"strings"
	"testing"
)

func TestRegistry(t *testing.T) {
	if _, err := NewRegistry(Kind{Type: "a", Producer: "one"}, Kind{Type: "a", Producer: "two"}); err == nil || !strings.Contains(err.Error(), "registered by one and two") {
		t.Errorf("duplicate type: %v", err)
	}
	if _, err := NewRegistry(Kind{Type: "a:b"}); err == nil {
		t.Error("type with a colon accepted")
	}
	keyed := Kind{Type: "k", Producer: "P", Check: func(v string) error {
		return CheckKeyed(v, map[string]func(string) error{"n": nil, "even": func(s string) error {
			if len(s)%2 != 0 {
				return errors.New("odd")
			}
			return nil
		}})
	}}
	r, err := NewRegistry(keyed, Kind{Type: "free", Producer: "Q"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.Types(), ","); got != "free,k" {
		t.Errorf("Types = %s", got)
	}
	for _, tc := range []struct {
		sel     Selector
		want    string // "" = accepted
		unknown bool
	}{
		{Selector{"k", "n:x"}, "", false},
		{Selector{"k", "even:xy"}, "", false},
		{Selector{"free", "anything:at:all"}, "", false},
		{Selector{"k", "even:x"}, `P never produces "k:even:x": even: odd`, false},
		{Selector{"k", "m:x"}, "must start with one of even:, n:", false},
		{Selector{"k", "n:"}, `needs a value after "n:"`, false},
		{Selector{"other", "x"}, `unknown selector type "other" (known types: free, k)`, true},
		{Selector{"k", ""}, "empty value", false},
	} {
		err := r.Check(tc.sel)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s refused: %v", tc.sel, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want %q", tc.sel, err, tc.want)
		case errors.Is(err, ErrUnknownType) != tc.unknown:
			t.Errorf("%s: ErrUnknownType = %v, want %v", tc.sel, errors.Is(err, ErrUnknownType), tc.unknown)
		}
	}
}
