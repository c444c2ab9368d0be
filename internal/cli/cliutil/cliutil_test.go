package cliutil

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestMatchCommandFirstPrefixWins(t *testing.T) {
	names := []string{"api fetch x509", "api fetch", "healthcheck"}
	for _, tc := range []struct {
		args     []string
		want     int
		wantRest []string
	}{
		{[]string{"api", "fetch", "x509", "-write", "/tmp"}, 0, []string{"-write", "/tmp"}},
		{[]string{"api", "fetch", "-socketPath", "x"}, 1, []string{"-socketPath", "x"}},
		{[]string{"healthcheck"}, 2, []string{}},
		{[]string{"api"}, -1, []string{"api"}},
		{[]string{"api", "watch"}, -1, []string{"api", "watch"}},
	} {
		got, rest := MatchCommand(names, tc.args)
		if got != tc.want || strings.Join(rest, " ") != strings.Join(tc.wantRest, " ") {
			t.Errorf("MatchCommand(%q) = %d, %q; want %d, %q", tc.args, got, rest, tc.want, tc.wantRest)
		}
	}
}

func TestDescribeErrorRewritesWrappedStatus(t *testing.T) {
	hint := func(st *status.Status) string {
		if st.Code() == codes.Unavailable {
			return "down: " + st.Message()
		}
		return ""
	}
	wrapped := fmt.Errorf("fetching x: %w", status.Error(codes.NotFound, "no such x"))
	if got, want := DescribeError(wrapped, hint), "fetching x: no such x (code: NotFound)"; got != want {
		t.Errorf("default rendering = %q, want %q", got, want)
	}
	if got, want := DescribeError(status.Error(codes.Unavailable, "refused"), hint), "down: refused"; got != want {
		t.Errorf("hinted rendering = %q, want %q", got, want)
	}
	if got := DescribeError(errors.New("plain"), hint); got != "plain" {
		t.Errorf("plain error = %q, want %q", got, "plain")
	}
}

func TestExecuteExitCodes(t *testing.T) {
	run := func(args []string, runErr error) (int, string, string, bool) {
		var stdout, stderr bytes.Buffer
		fs := NewFlagSet("thing do", "Does the thing")
		fs.Bool("x", false, "an x")
		ran := false
		code := Execute(fs, args, &stdout, &stderr, func() error { ran = true; return runErr }, func(err error) string { return "described " + err.Error() })
		return code, stdout.String(), stderr.String(), ran
	}
	if code, _, _, ran := run([]string{"-x"}, nil); code != ExitOK || !ran {
		t.Errorf("success: code %d ran %v, want %d true", code, ran, ExitOK)
	}
	for _, h := range []string{"-h", "-help", "--help"} {
		if code, out, errOut, ran := run([]string{h}, nil); code != ExitOK || ran || !strings.Contains(out, "Usage of thing do:\n  Does the thing") || !strings.Contains(out, "-x") || errOut != "" {
			t.Errorf("%s: code %d ran %v stdout %q stderr %q; want the usage on stdout only", h, code, ran, out, errOut)
		}
	}
	if code, out, errOut, ran := run([]string{"-nope"}, nil); code != ExitError || ran || out != "" || !strings.Contains(errOut, "flag provided but not defined: -nope") || !strings.Contains(errOut, "Usage of thing do") {
		t.Errorf("unknown flag: code %d ran %v stdout %q stderr %q", code, ran, out, errOut)
	}
	if code, _, errOut, ran := run([]string{"extra"}, nil); code != ExitError || ran || !strings.Contains(errOut, `unexpected argument "extra"`) {
		t.Errorf("positional: code %d ran %v stderr %q", code, ran, errOut)
	}
	if code, _, errOut, _ := run(nil, errors.New("boom")); code != ExitError || errOut != "Error: described boom\n" {
		t.Errorf("failure: code %d stderr %q", code, errOut)
	}
	if err := CheckOutput("yaml"); err == nil {
		t.Error("CheckOutput accepted yaml")
	}
	if err := CheckOutput("json"); err != nil {
		t.Errorf("CheckOutput(json): %v", err)
	}
}

func TestVersionCommand(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Version("sigil-x", "v1.2.3", nil, &stdout, &stderr); code != ExitOK || stdout.String() != "v1.2.3\n" || stderr.Len() != 0 {
		t.Errorf("version: code %d stdout %q stderr %q", code, stdout.String(), stderr.String())
	}
	stdout.Reset()
	if code := Version("sigil-x", "v1.2.3", []string{"-h"}, &stdout, &stderr); code != ExitOK || !strings.Contains(stdout.String(), "Usage of sigil-x version") {
		t.Errorf("version -h: code %d stdout %q", code, stdout.String())
	}
	for _, s := range []string{"version", "-version", "--version"} {
		if !IsVersion(s) {
			t.Errorf("IsVersion(%q) = false", s)
		}
	}
}

func TestWriteFileTightensExistingMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, []byte("old, longer content"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %o, want 600", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(p); string(b) != "new" {
		t.Errorf("content %q, want %q", b, "new")
	}
}

func TestPrintUsageSortsAllLists(t *testing.T) {
	var b bytes.Buffer
	PrintUsage(&b, "sigil-x", 6, []CommandInfo{{Name: "run", Synopsis: "Runs"}}, []CommandInfo{{Name: "api", Synopsis: "API"}})
	out := b.String()
	if !strings.HasPrefix(out, "Usage: sigil-x <command>") || !strings.Contains(out, "    api    API\n    run    Runs\n") {
		t.Errorf("usage:\n%s", out)
	}
}

// SPIRE's -output json leaves unset message fields out (its printer drops
// nulls): a relationship without a bundle has no trust_domain_bundle key.
func TestMarshalJSONDropsNulls(t *testing.T) {
	b, err := MarshalJSON(&types.FederationRelationship{TrustDomain: "web.org", BundleEndpointUrl: "https://web.org",
		BundleEndpointProfile: &types.FederationRelationship_HttpsWeb{HttpsWeb: &types.HTTPSWebProfile{}}})
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"bundle_endpoint_url":"https://web.org","https_web":{},"trust_domain":"web.org"}`
	if string(b) != want {
		t.Fatalf("MarshalJSON = %s, want %s", b, want)
	}
	// Unpopulated scalars and lists stay, as in SPIRE's.
	b, err = MarshalJSON(&types.Bundle{TrustDomain: "x.org"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"x509_authorities":[]`) || !strings.Contains(string(b), `"refresh_hint":"0"`) {
		t.Fatalf("MarshalJSON = %s", b)
	}
}
