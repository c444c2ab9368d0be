package agentpath

import (
	"strings"
	"testing"
)

func TestTemplate(t *testing.T) {
	data := map[string]any{
		"PluginName": "x509pop",
		"Subject":    map[string]string{"CommonName": "Device-1"},
	}
	for text, want := range map[string]string{
		"/{{ .PluginName }}/{{ .Subject.CommonName }}":                       "/x509pop/Device-1",
		"/{{ .Subject.CommonName | lower }}":                                 "/device-1",
		`/{{ .Subject.CommonName | trimPrefix "Device-" }}`:                  "/1",
		`/{{ regexReplaceAll "[^a-z0-9]" (lower .Subject.CommonName) "_" }}`: "/device_1",
		`/{{ sha256sum .Subject.CommonName | trunc 8 }}`:                     "/7f999db4",
	} {
		tmpl, err := Parse(text)
		if err != nil {
			t.Fatalf("%s: %v", text, err)
		}
		got, err := tmpl.Execute(data)
		if err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", text, got, err, want)
		}
		if tmpl.String() != text {
			t.Errorf("String() = %q", tmpl.String())
		}
	}
	// A missing key is an error, not "<no value>".
	tmpl, err := Parse("/{{ .Nope }}")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tmpl.Execute(data); err == nil {
		t.Errorf("missing key rendered %q", got)
	}
	// Functions SPIRE does not offer are unknown (env would read the
	// server's environment).
	for _, text := range []string{"/{{ env \"HOME\" }}", "/{{ now }}", "/{{ .X"} {
		if _, err := Parse(text); err == nil || !strings.HasPrefix(err.Error(), "agent_path_template: ") {
			t.Errorf("%s: %v", text, err)
		}
	}
	if n := len(funcs()); n != len(funcNames) || n < 118 {
		t.Errorf("%d functions of %d names", n, len(funcNames))
	}
}
