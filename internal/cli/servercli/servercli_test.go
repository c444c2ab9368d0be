package servercli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// run invokes Run with a socket path that does not exist, so that any
// command that gets past validation fails at the dial with a known message.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func noSocket(t *testing.T) string {
	return filepath.Join(t.TempDir(), "missing.sock")
}

func TestPrintEntry(t *testing.T) {
	tests := []struct {
		name  string
		entry *types.Entry
		want  string
	}{
		{
			name: "defaults",
			entry: &types.Entry{
				Id:        "e1",
				SpiffeId:  &types.SPIFFEID{TrustDomain: "example.org", Path: "/web"},
				ParentId:  &types.SPIFFEID{TrustDomain: "example.org", Path: "/node"},
				Selectors: []*types.Selector{{Type: "unix", Value: "uid:1000"}},
			},
			want: "" +
				"Entry ID         : e1\n" +
				"SPIFFE ID        : spiffe://example.org/web\n" +
				"Parent ID        : spiffe://example.org/node\n" +
				"Revision         : 0\n" +
				"X509-SVID TTL    : default\n" +
				"JWT-SVID TTL     : default\n" +
				"Selector         : unix:uid:1000\n" +
				"\n",
		},
		{
			name: "every field",
			entry: &types.Entry{
				Id:             "e2",
				SpiffeId:       &types.SPIFFEID{TrustDomain: "example.org", Path: "/db"},
				ParentId:       &types.SPIFFEID{TrustDomain: "example.org", Path: "/spire/server"},
				Selectors:      []*types.Selector{{Type: "k8s", Value: "ns:db"}, {Type: "k8s", Value: "sa:db"}},
				X509SvidTtl:    3600,
				JwtSvidTtl:     300,
				FederatesWith:  []string{"other.org"},
				Admin:          true,
				Downstream:     true,
				ExpiresAt:      1700000000,
				DnsNames:       []string{"db.local"},
				RevisionNumber: 7,
				StoreSvid:      true,
				Hint:           "primary",
				CreatedAt:      1600000000,
			},
			want: "" +
				"Entry ID         : e2\n" +
				"SPIFFE ID        : spiffe://example.org/db\n" +
				"Parent ID        : spiffe://example.org/spire/server\n" +
				"Revision         : 7\n" +
				"Downstream       : true\n" +
				"X509-SVID TTL    : 3600\n" +
				"JWT-SVID TTL     : 300\n" +
				"Expiration time  : 2023-11-14 22:13:20 +0000 UTC\n" +
				"Selector         : k8s:ns:db\n" +
				"Selector         : k8s:sa:db\n" +
				"FederatesWith    : other.org\n" +
				"DNS name         : db.local\n" +
				"Admin            : true\n" +
				"StoreSvid        : true\n" +
				"Hint             : primary\n" +
				"Created At       : 2020-09-13 12:26:40 +0000 UTC\n" +
				"\n",
		},
		{
			name:  "no id (failed create)",
			entry: &types.Entry{SpiffeId: &types.SPIFFEID{TrustDomain: "example.org", Path: "/x"}},
			want: "" +
				"Entry ID         : (none)\n" +
				"SPIFFE ID        : spiffe://example.org/x\n" +
				"Parent ID        : \n" +
				"Revision         : 0\n" +
				"X509-SVID TTL    : default\n" +
				"JWT-SVID TTL     : default\n" +
				"\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			printEntry(&b, tt.entry)
			if b.String() != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", b.String(), tt.want)
			}
		})
	}
}

func TestPrintEntriesCountsAndSorts(t *testing.T) {
	mk := func(id, path string) *types.Entry {
		return &types.Entry{Id: id, SpiffeId: &types.SPIFFEID{TrustDomain: "example.org", Path: path}, ParentId: &types.SPIFFEID{TrustDomain: "example.org", Path: "/n"}}
	}
	entries := []*types.Entry{mk("b", "/zeta"), mk("a", "/alpha")}
	sortEntries(entries)
	var b bytes.Buffer
	printEntries(&b, entries)
	out := b.String()
	if !strings.HasPrefix(out, "Found 2 entries\n") {
		t.Errorf("missing count header:\n%s", out)
	}
	if strings.Index(out, "/alpha") > strings.Index(out, "/zeta") {
		t.Errorf("entries not sorted by SPIFFE ID:\n%s", out)
	}
	b.Reset()
	printEntries(&b, entries[:1])
	if !strings.HasPrefix(b.String(), "Found 1 entry\n") {
		t.Errorf("singular header wrong:\n%s", b.String())
	}
}

func TestPrintAgents(t *testing.T) {
	a := &types.Agent{
		Id:                   &types.SPIFFEID{TrustDomain: "example.org", Path: "/spire/agent/join_token/abc"},
		AttestationType:      "join_token",
		X509SvidSerialNumber: "1234",
		X509SvidExpiresAt:    1700000000,
		Selectors:            []*types.Selector{{Type: "join_token", Value: "abc"}},
		CanReattest:          false,
		Banned:               true,
	}
	var b bytes.Buffer
	printAgentList(&b, []*types.Agent{a})
	want := "" +
		"Found 1 attested agent:\n\n" +
		"SPIFFE ID         : spiffe://example.org/spire/agent/join_token/abc\n" +
		"Attestation type  : join_token\n" +
		"Expiration time   : 2023-11-14 22:13:20 +0000 UTC\n" +
		"Serial number     : 1234\n" +
		"Can re-attest     : false\n" +
		"Banned            : true\n\n"
	if b.String() != want {
		t.Errorf("list got:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	printAgentShow(&b, a)
	if !strings.HasPrefix(b.String(), "Found an attested agent given its SPIFFE ID\n\n") ||
		!strings.HasSuffix(b.String(), "Selectors         : join_token:abc\n") {
		t.Errorf("show output:\n%s", b.String())
	}
	b.Reset()
	printAgentList(&b, nil)
	if b.String() != "Found 0 attested agents:\n\n" {
		t.Errorf("empty list: %q", b.String())
	}
}

func TestDispatch(t *testing.T) {
	tests := []struct {
		args       []string
		wantCode   int
		wantStderr string
		wantStdout string
	}{
		{args: nil, wantCode: ExitError, wantStderr: "Available commands are:"},
		{args: []string{"-h"}, wantCode: ExitOK, wantStdout: "entry create"},
		{args: []string{"frobnicate"}, wantCode: ExitUnknownCommand, wantStderr: `unknown command "frobnicate"`},
		{args: []string{"frobnicate"}, wantCode: ExitUnknownCommand, wantStderr: "agent, bundle, dev, entry, federation, healthcheck, jwt, run, token, validate, version, x509"},
		{args: []string{"entry", "frob"}, wantCode: ExitUnknownCommand, wantStderr: "count, create, delete, show, update"},
		{args: []string{"entry"}, wantCode: ExitError, wantStderr: "Subcommands:"},
		{args: []string{"entry", "create", "-h"}, wantCode: ExitOK, wantStdout: "-spiffeID"},
		{args: []string{"entry", "-h"}, wantCode: ExitOK, wantStdout: "Subcommands:"},
		{args: []string{"entry", "create", "-nope"}, wantCode: ExitError, wantStderr: "flag provided but not defined: -nope"},
		{args: []string{"entry", "show", "stray"}, wantCode: ExitError, wantStderr: `unexpected argument "stray"`},
		{args: []string{"entry", "show", "-output", "xml"}, wantCode: ExitError, wantStderr: `unknown -output "xml"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := run(t, tt.args...)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tt.wantCode, errOut)
			}
			if !strings.Contains(errOut, tt.wantStderr) {
				t.Errorf("stderr %q does not contain %q", errOut, tt.wantStderr)
			}
			if !strings.Contains(out, tt.wantStdout) {
				t.Errorf("stdout %q does not contain %q", out, tt.wantStdout)
			}
		})
	}
}

func TestValidationErrors(t *testing.T) {
	sock := noSocket(t)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"entry", "create", "-parentID", "spiffe://example.org/n", "-selector", "unix:uid:1"}, "a SPIFFE ID is required"},
		{[]string{"entry", "create", "-spiffeID", "spiffe://example.org/w", "-parentID", "spiffe://example.org/n"}, "at least one selector is required"},
		{[]string{"entry", "create", "-spiffeID", "spiffe://example.org/w", "-selector", "unix:uid:1"}, "a parent ID is required if the node flag is not set"},
		{[]string{"entry", "create", "-node", "-spiffeID", "spiffe://example.org/w", "-selector", "x:y", "-federatesWith", "spiffe://o.org"}, "node entries can not federate"},
		{[]string{"entry", "create", "-spiffeID", "spiffe://example.org/w", "-parentID", "spiffe://example.org/n", "-selector", "nocolon"}, `selector "nocolon" must be formatted as type:value`},
		{[]string{"entry", "create", "-spiffeID", "http://example.org/w", "-parentID", "spiffe://example.org/n", "-selector", "a:b"}, "invalid -spiffeID"},
		{[]string{"entry", "create", "-spiffeID", "spiffe://example.org/w", "-parentID", "spiffe://example.org/n", "-selector", "a:b", "-x509SVIDTTL", "-5"}, `invalid value "-5" for flag -x509SVIDTTL: "-5": must not be negative`},
		// Integers beyond the API's int32 seconds were wrapped (99999999999 was stored as 1215752191, 4294967296 as 0).
		{[]string{"entry", "create", "-spiffeID", "spiffe://example.org/w", "-parentID", "spiffe://example.org/n", "-selector", "unix:uid:1", "-x509SVIDTTL", "99999999999"}, `invalid value "99999999999" for flag -x509SVIDTTL: "99999999999" is too long: at most 2147483647 seconds`},
		{[]string{"entry", "create", "-spiffeID", "spiffe://example.org/w", "-parentID", "spiffe://example.org/n", "-selector", "unix:uid:1", "-jwtSVIDTTL", "4294967296"}, `invalid value "4294967296" for flag -jwtSVIDTTL: "4294967296" is too long`},
		{[]string{"entry", "update", "-entryID", "x", "-spiffeID", "spiffe://example.org/w", "-parentID", "spiffe://example.org/n", "-selector", "unix:uid:1", "-x509SVIDTTL", "100000000h"}, `invalid value "100000000h" for flag -x509SVIDTTL`},
		{[]string{"entry", "create", "-spiffeID", "spiffe://example.org/w", "-parentID", "spiffe://example.org/n", "-selector", "unix:uid:1", "-entryExpiry", "1600000000"}, "-entryExpiry 1600000000 (2020-09-13T12:26:40Z) is in the past"},
		{[]string{"entry", "update", "-entryID", "x", "-spiffeID", "spiffe://example.org/w", "-parentID", "spiffe://example.org/n", "-selector", "unix:uid:1", "-entryExpiry", "1700000000000"}, "is after the year 9999: give seconds since the Unix epoch, not milliseconds"},
		{[]string{"entry", "create", "-spiffeID", "spiffe://example.org/w", "-parentID", "spiffe://example.org/n", "-selector", "unix:uidd:5"}, `-selector can never match: WorkloadAttestor "unix" never produces "unix:uidd:5": the value must start with one of gid:, group:, path:, sha256:, supplementary_gid:, supplementary_group:, uid:, user:`},
		{[]string{"entry", "create", "-spiffeID", "spiffe://example.org/w", "-parentID", "spiffe://example.org/n", "-selector", "unix:uid:abc"}, `uid: "abc" is not a numeric id`},
		{[]string{"entry", "update", "-entryID", "x", "-spiffeID", "spiffe://example.org/w", "-parentID", "spiffe://example.org/n", "-selector", "unix:gid:-1"}, `gid: "-1" is not a numeric id`},
		{[]string{"entry", "create", "-node", "-spiffeID", "spiffe://example.org/w", "-selector", "join_token:abc"}, "join-token attestation gives an agent no selectors"},
		{[]string{"entry", "update", "-spiffeID", "spiffe://example.org/w"}, "an entry ID is required"},
		{[]string{"entry", "update", "-entryID", "x", "-spiffeID", "spiffe://example.org/w", "-selector", "a:b"}, "a parent ID is required"},
		{[]string{"entry", "delete"}, "an entry ID is required"},
		{[]string{"entry", "show", "-entryID", "x", "-spiffeID", "spiffe://example.org/w"}, "the -entryID flag can't be combined with others"},
		{[]string{"entry", "show", "-matchSelectorsOn", "most"}, `match behavior "most" unknown`},
		{[]string{"entry", "count", "-federatesWith", "not a domain"}, "invalid -federatesWith"},
		{[]string{"agent", "show"}, "a SPIFFE ID is required"},
		{[]string{"agent", "ban", "-spiffeID", "nope"}, "invalid -spiffeID"},
		{[]string{"agent", "list", "-expiresBefore", "tomorrow"}, "-expiresBefore"},
		{[]string{"bundle", "delete"}, "id is required"},
		{[]string{"bundle", "delete", "-id", "o.org", "-mode", "nuke"}, `unsupported -mode "nuke"`},
		{[]string{"bundle", "show", "-format", "der"}, `unknown -format "der"`},
		{[]string{"bundle", "set", "-id", "o.org", "-path", "/nonexistent/bundle.pem"}, "reading bundle data"},
		{[]string{"token", "generate", "-ttl", "soon"}, `invalid value "soon" for flag -ttl`},
		{[]string{"token", "generate", "-spiffeID", "spiffe://"}, "invalid -spiffeID"},
		{[]string{"x509", "mint"}, "spiffeID must be specified"},
		{[]string{"jwt", "mint", "-spiffeID", "spiffe://example.org/w"}, "at least one audience must be specified"},
		{[]string{"entry", "create", "-data", "/nonexistent/data.json"}, "reading -data file"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			args := append(append([]string{}, tt.args...), "-socketPath", sock)
			code, out, errOut := run(t, args...)
			if code != ExitError {
				t.Errorf("exit code %d, want %d", code, ExitError)
			}
			if !strings.Contains(errOut, tt.want) {
				t.Errorf("stderr %q does not contain %q", errOut, tt.want)
			}
			if strings.Contains(errOut, "is the server running") {
				t.Errorf("validation should fail before dialing: %q", errOut)
			}
			if out != "" {
				t.Errorf("unexpected stdout %q", out)
			}
		})
	}
}

func TestMissingSocketSaysWhatToDo(t *testing.T) {
	sock := noSocket(t)
	for _, args := range [][]string{
		{"entry", "show"},
		{"healthcheck", "-verbose"},
		{"token", "generate"},
	} {
		code, _, errOut := run(t, append(args, "-socketPath", sock)...)
		if code != ExitError {
			t.Errorf("%v: exit %d", args, code)
		}
		if args[0] == "healthcheck" {
			if !strings.Contains(errOut, "server is unhealthy") || !strings.Contains(errOut, sock) {
				t.Errorf("%v: stderr %q", args, errOut)
			}
			continue
		}
		if !strings.Contains(errOut, "is the server running") || !strings.Contains(errOut, sock) {
			t.Errorf("%v: stderr %q", args, errOut)
		}
	}
}

func TestDescribeStatusErrors(t *testing.T) {
	s := &session{socketPath: "/x.sock"}
	wrapped := fmt.Errorf("error fetching entry ID abc: %w", status.Error(codes.NotFound, "entry not found"))
	if got, want := s.describe(wrapped), "error fetching entry ID abc: entry not found (code: NotFound)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := s.describe(status.Error(codes.Unavailable, "connection refused")); !strings.Contains(got, `server unavailable at "/x.sock"`) {
		t.Errorf("unavailable: %q", got)
	}
	if got := s.describe(errors.New("plain")); got != "plain" {
		t.Errorf("plain: %q", got)
	}
}

func TestParseEntryData(t *testing.T) {
	good := `{"entries": [
		{"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/n",
		 "selectors": [{"type": "unix", "value": "uid:1"}], "x509_svid_ttl": 60, "jwt_svid_ttl": 30,
		 "admin": true, "dns_names": ["a.local"], "federates_with": ["other.org"], "entryExpiry": 99, "hint": "h"},
		{"entry_id": "fixed", "spiffe_id": "spiffe://example.org/b", "parent_id": "spiffe://example.org/n",
		 "selectors": [{"type": "unix", "value": "uid:2"}]}
	]}`
	entries, err := parseEntryData(strings.NewReader(good), "data.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("got %d entries", len(entries))
	}
	a := entries[0]
	if idString(a.SpiffeId) != "spiffe://example.org/a" || a.X509SvidTtl != 60 || a.JwtSvidTtl != 30 || !a.Admin ||
		a.ExpiresAt != 99 || a.Hint != "h" || a.DnsNames[0] != "a.local" || a.FederatesWith[0] != "other.org" ||
		a.Selectors[0].Type != "unix" || a.Selectors[0].Value != "uid:1" {
		t.Errorf("entry a parsed wrong: %v", a)
	}
	if entries[1].Id != "fixed" {
		t.Errorf("entry_id not kept: %v", entries[1])
	}

	for name, bad := range map[string]string{
		"unknown field":  `{"entries": [{"spiffeID": "spiffe://example.org/a"}]}`,
		"no selectors":   `{"entries": [{"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/n"}]}`,
		"bad parent":     `{"entries": [{"spiffe_id": "spiffe://example.org/a", "parent_id": "n", "selectors": [{"type":"a","value":"b"}]}]}`,
		"empty":          `{"entries": []}`,
		"not json":       `entries:`,
		"empty selector": `{"entries": [{"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/n", "selectors": [{"type":"a"}]}]}`,
	} {
		if _, err := parseEntryData(strings.NewReader(bad), "data.json"); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestTTLFlag(t *testing.T) {
	for in, want := range map[string]int32{"600": 600, "10m": 600, "1h30m": 5400, "1500ms": 2, "0": 0, "2147483647": 2147483647, "1h": 3600} {
		var f ttlFlag
		if err := f.Set(in); err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if got := f.seconds(); got != want {
			t.Errorf("%q: %d seconds, want %d", in, got, want)
		}
	}
	for _, bad := range []string{"-1", "-5m", "soon", "", "2147483648", "4294967296", "99999999999", "99999999999999999999999", "596524h", "3000000000h", "+5"} {
		var f ttlFlag
		if err := f.Set(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// testCert makes a self-signed CA certificate for trust domain td.
func testCert(t *testing.T, td string) *x509.Certificate {
	t.Helper()
	return testca.SelfSigned(t, testca.TrustDomain(spiffeid.RequireTrustDomainFromString(td)), testca.Subject(td), testca.Serial(1),
		testca.Validity(time.Unix(1600000000, 0), time.Unix(1900000000, 0)))
}

func TestBundleFormats(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("other.org")
	c1, c2 := testCert(t, "other.org"), testCert(t, "other.org")
	pemData := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c1.Raw}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c2.Raw})...)

	b, err := parseBundleData(td, pemData, formatPEM)
	if err != nil {
		t.Fatal(err)
	}
	if b.TrustDomain != "other.org" || len(b.X509Authorities) != 2 {
		t.Fatalf("parsed bundle: %v", b)
	}
	var out bytes.Buffer
	if err := writeBundle(&out, b, formatPEM); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), pemData) {
		t.Errorf("pem round trip changed the data:\n%s", out.String())
	}

	// Add a JWT key and go through the SPIFFE bundle format both ways.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	b.JwtAuthorities = []*types.JWTKey{{KeyId: "kid1", PublicKey: pub}}
	b.RefreshHint = 300
	b.SequenceNumber = 4
	out.Reset()
	if err := writeBundle(&out, b, formatSPIFFE); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"kid": "kid1"`, `"use": "x509-svid"`, `"spiffe_refresh_hint": 300`, `"spiffe_sequence": 4`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("spiffe bundle lacks %s:\n%s", want, out.String())
		}
	}
	back, err := parseBundleData(td, out.Bytes(), formatSPIFFE)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.X509Authorities) != 2 || len(back.JwtAuthorities) != 1 || back.JwtAuthorities[0].KeyId != "kid1" ||
		!bytes.Equal(back.JwtAuthorities[0].PublicKey, pub) || back.RefreshHint != 300 || back.SequenceNumber != 4 {
		t.Errorf("spiffe round trip: %v", back)
	}

	// A bundle without a sequence number (spire-server keeps 0 for a
	// federated bundle set from PEM) prints none, as SPIRE's CLI.
	b.SequenceNumber = 0
	out.Reset()
	if err := writeBundle(&out, b, formatSPIFFE); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "spiffe_sequence") {
		t.Errorf("a bundle with sequence number 0 prints one:\n%s", out.String())
	}

	if _, err := parseBundleData(td, []byte("not pem"), formatPEM); err == nil || !strings.Contains(err.Error(), "no PEM certificates") {
		t.Errorf("garbage pem: %v", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})
	if _, err := parseBundleData(td, keyPEM, formatPEM); err == nil {
		t.Error("private key accepted as bundle")
	}

	out.Reset()
	if err := printBundleList(&out, []*types.Bundle{{TrustDomain: "a.org"}, {TrustDomain: "b.org"}}, formatPEM); err != nil {
		t.Fatal(err)
	}
	wantList := "****************************************\n* spiffe://a.org\n****************************************\n\n" +
		"****************************************\n* spiffe://b.org\n****************************************\n"
	if out.String() != wantList {
		t.Errorf("list output:\n%q\nwant\n%q", out.String(), wantList)
	}
}

// TestSortEntriesSortsSelectors: spire-server returns an entry's selectors
// in the order they were created, sigil-server sorted; the CLI prints them
// sorted (as SPIRE's), so its output does not depend on the server.
func TestSortEntriesSortsSelectors(t *testing.T) {
	e := &types.Entry{Id: "a", SpiffeId: &types.SPIFFEID{TrustDomain: "example.org", Path: "/w"},
		Selectors: []*types.Selector{{Type: "unix", Value: "uid:1"}, {Type: "k8s", Value: "ns:x"}, {Type: "unix", Value: "gid:1"}}}
	sortEntries([]*types.Entry{e})
	var got []string
	for _, s := range e.GetSelectors() {
		got = append(got, s.GetType()+":"+s.GetValue())
	}
	if want := "k8s:ns:x unix:gid:1 unix:uid:1"; strings.Join(got, " ") != want {
		t.Errorf("selectors %v, want %s", got, want)
	}
}
