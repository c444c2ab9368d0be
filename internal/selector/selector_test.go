package selector

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Selector
		wantErr string
	}{
		{in: "unix:uid:1000", want: Selector{"unix", "uid:1000"}},
		{in: "k8s:ns:default", want: Selector{"k8s", "ns:default"}},
		{in: "spiffe_id:spiffe://example.org/a", want: Selector{"spiffe_id", "spiffe://example.org/a"}},
		{in: "unix", wantErr: "type:value"},
		{in: ":uid:0", wantErr: "type is empty"},
		{in: "unix:", wantErr: "empty value"},
		{in: "unix:uid\x00:0", wantErr: "control character"},
		{in: "unix:" + strings.Repeat("a", MaxLen), wantErr: "longer than"},
	} {
		got, err := Parse(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Parse(%q) error = %v, want it to mention %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if got.String() != tc.in {
			t.Errorf("String() = %q, want %q", got.String(), tc.in)
		}
	}
}

func TestDedupeSorts(t *testing.T) {
	in := []Selector{{"unix", "uid:1"}, {"k8s", "ns:a"}, {"unix", "uid:1"}, {"unix", "gid:0"}}
	got := Dedupe(in)
	want := []Selector{{"k8s", "ns:a"}, {"unix", "gid:0"}, {"unix", "uid:1"}}
	if len(got) != len(want) {
		t.Fatalf("Dedupe = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Dedupe = %v, want %v", got, want)
		}
	}
	if in[0] != (Selector{"unix", "uid:1"}) {
		t.Error("Dedupe modified its input")
	}
}

func TestSetMatching(t *testing.T) {
	workload := NewSet(Selector{"unix", "uid:1000"}, Selector{"unix", "gid:1000"}, Selector{"unix", "user:app"})
	for _, tc := range []struct {
		entry   []Selector
		all     bool
		any     bool
		comment string
	}{
		{[]Selector{{"unix", "uid:1000"}}, true, true, "one of the workload's"},
		{[]Selector{{"unix", "uid:1000"}, {"unix", "gid:1000"}}, true, true, "subset"},
		{[]Selector{{"unix", "uid:1000"}, {"unix", "gid:0"}}, false, true, "one missing"},
		{[]Selector{{"unix", "uid:0"}}, false, false, "none"},
		{nil, false, false, "an entry without selectors matches nothing"},
	} {
		if got := workload.ContainsAll(tc.entry); got != tc.all {
			t.Errorf("%s: ContainsAll = %v", tc.comment, got)
		}
		if got := workload.ContainsAny(tc.entry); got != tc.any {
			t.Errorf("%s: ContainsAny = %v", tc.comment, got)
		}
	}
}
