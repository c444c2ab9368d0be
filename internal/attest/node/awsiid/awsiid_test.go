package awsiid_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/agentpath"
	"github.com/sigil-spiffe/sigil/internal/attest/node/awsiid"
	"github.com/sigil-spiffe/sigil/internal/attest/node/awsiid/awsapi"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func parseTemplate(text string) (awsiid.PathTemplate, error) { return agentpath.Parse(text) }

// newServer builds the server half with the real SDK client (awsapi)
// against the fake's API endpoint.
func newServer(t *testing.T, cfg awsiid.ServerConfig) *awsiid.Server {
	t.Helper()
	api, err := awsapi.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := awsiid.NewServer(cfg, awsiid.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, EC2: api})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fakeConfig is a server configuration for the fake AWS (its credentials,
// endpoints and certificates), parsed from plugin_data as a configuration
// file would be.
func fakeConfig(t *testing.T, aws *cloudfake.AWS, extra map[string]any) awsiid.ServerConfig {
	t.Helper()
	data := aws.ServerPluginData(t, t.TempDir())
	for k, v := range extra {
		data[k] = v
	}
	c, err := awsiid.ParseServerConfig(config.NewPlugin("NodeAttestor", awsiid.Type, data).Data(), parseTemplate)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// payload runs the agent half against an instance's metadata service.
func payload(t *testing.T, inst *cloudfake.Instance) []byte {
	t.Helper()
	a, err := awsiid.NewAgent(awsiid.AgentConfig{MetadataEndpoint: inst.IMDSURL()})
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return s.Payload()
}

func attest(s *awsiid.Server, p []byte) (*node.Result, error) {
	return s.Attest(context.Background(), p, func(context.Context, []byte) ([]byte, error) {
		return nil, errors.New("aws_iid sent a challenge")
	})
}

func values(sels []selector.Selector) []string {
	var out []string
	for _, s := range sels {
		out = append(out, s.String())
	}
	slices.Sort(out)
	return out
}

// TestAttest: an instance attests with the document its IMDSv2 serves,
// verified with the signing certificates, and the server's SDK client asks
// EC2 and IAM (Query API, SigV4) for its tags, security groups and roles.
func TestAttest(t *testing.T) {
	aws := cloudfake.NewAWS(t)
	inst := aws.AddInstance(&cloudfake.Instance{
		ID:              "i-0123456789abcdef0",
		Tags:            map[string]string{"Name": "web-1", "env": "prod"},
		SecurityGroups:  map[string]string{"sg-0a1b2c3d": "web"},
		InstanceProfile: "web-profile",
		Roles:           []string{"web-role"},
	})
	s := newServer(t, fakeConfig(t, aws, nil))
	p := payload(t, inst)
	res, err := attest(s, p)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://example.org/spire/agent/aws_iid/111122223333/us-east-1/i-0123456789abcdef0"; res.AgentID.String() != want || res.CanReattest {
		t.Fatalf("agent ID %s (reattest %v), want %s (trust on first use)", res.AgentID, res.CanReattest, want)
	}
	want := []string{
		"aws_iid:account_id:111122223333", "aws_iid:az:us-east-1a",
		"aws_iid:iamrole:arn:aws:iam::111122223333:role/web-role",
		"aws_iid:image:id:ami-0123456789abcdef0", "aws_iid:instance:id:i-0123456789abcdef0",
		"aws_iid:region:us-east-1", "aws_iid:sg:id:sg-0a1b2c3d", "aws_iid:sg:name:web",
		"aws_iid:tag:Name:web-1", "aws_iid:tag:env:prod",
	}
	if got := values(res.Selectors); !slices.Equal(got, want) {
		t.Fatalf("selectors\n got %q\nwant %q", got, want)
	}
	kind := awsiid.SelectorKind()
	for _, sel := range res.Selectors {
		if err := kind.Check(sel.Value); err != nil {
			t.Errorf("the attestor produced %s, which its own selector check refuses: %v", sel, err)
		}
	}
	if n := aws.Calls("DescribeInstances"); n != 1 {
		t.Errorf("DescribeInstances called %d times", n)
	}
	// Both signature forms are accepted on their own.
	var data map[string]string
	if err := json.Unmarshal(p, &data); err != nil {
		t.Fatal(err)
	}
	for _, drop := range []string{"rsa2048", "signature"} {
		d := map[string]string{"document": data["document"], "signature": data["signature"], "rsa2048": data["rsa2048"]}
		delete(d, drop)
		b, _ := json.Marshal(d)
		if _, err := attest(s, b); err != nil {
			t.Errorf("without %s: %v", drop, err)
		}
	}

	// disable_instance_profile_selectors: no iamrole, no IAM call.
	before := aws.Calls("GetInstanceProfile")
	res, err = attest(newServer(t, fakeConfig(t, aws, map[string]any{"disable_instance_profile_selectors": true})), p)
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(res.Selectors, func(s selector.Selector) bool { return strings.HasPrefix(s.Value, "iamrole:") }) || aws.Calls("GetInstanceProfile") != before {
		t.Errorf("disable_instance_profile_selectors: selectors %q, %d IAM calls", values(res.Selectors), aws.Calls("GetInstanceProfile")-before)
	}

	// agent_path_template, with the instance's tags.
	res, err = attest(newServer(t, fakeConfig(t, aws, map[string]any{"agent_path_template": "/aws/{{ .AccountID }}/{{ .Tags.Name }}"})), p)
	if err != nil || res.AgentID.String() != "spiffe://example.org/spire/agent/aws/111122223333/web-1" {
		t.Fatalf("agent_path_template: %v, %v", res, err)
	}
	_, err = attest(newServer(t, fakeConfig(t, aws, map[string]any{"agent_path_template": "/aws/{{ .Tags.Team }}"})), p)
	if !errors.Is(err, awsiid.ErrUnusableInstance) || !errors.Is(err, node.ErrRefused) {
		t.Fatalf("a template naming a missing tag: %v", err)
	}
}

// TestRefusals: forged, swapped and foreign documents, instances EC2 does
// not list as running, other accounts, a swapped root volume: each is
// refused with its own error.
func TestRefusals(t *testing.T) {
	aws := cloudfake.NewAWS(t)
	good := aws.AddInstance(&cloudfake.Instance{ID: "i-00000000000000001"})
	other := aws.AddInstance(&cloudfake.Instance{ID: "i-00000000000000002"})
	forger := aws.AddInstance(&cloudfake.Instance{ID: "i-00000000000000003", Signer: cloudfake.NewAWSSigner(t, "forger")})
	stopped := aws.AddInstance(&cloudfake.Instance{ID: "i-00000000000000004", State: "stopped"})
	foreign := aws.AddInstance(&cloudfake.Instance{ID: "i-00000000000000005", Account: "444455556666"})
	swapped := aws.AddInstance(&cloudfake.Instance{ID: "i-00000000000000006", RootAttachSkew: 10 * time.Minute})
	store := aws.AddInstance(&cloudfake.Instance{ID: "i-00000000000000007", RootAttachSkew: 10 * time.Minute, InstanceStore: true})
	euSigner := cloudfake.NewAWSSigner(t, "eu", "eu-west-1")
	eu := aws.AddInstance(&cloudfake.Instance{ID: "i-00000000000000008", Region: "eu-west-1", Signer: euSigner})
	cn := aws.AddInstance(&cloudfake.Instance{ID: "i-00000000000000009", Region: "cn-north-1"})

	s := newServer(t, fakeConfig(t, aws, nil))
	field := func(p []byte, k string) string {
		var m map[string]string
		if err := json.Unmarshal(p, &m); err != nil {
			t.Fatal(err)
		}
		return m[k]
	}
	mix := func(doc, sig, rsa2048 string) []byte {
		b, _ := json.Marshal(map[string]string{"document": doc, "signature": sig, "rsa2048": rsa2048})
		return b
	}
	gp, op := payload(t, good), payload(t, other)
	altered := strings.Replace(field(gp, "document"), "i-00000000000000001", "i-00000000000000002", 1)
	for _, tc := range []struct {
		name    string
		payload []byte
		is      error
		want    string
	}{
		{"signed by another key", payload(t, forger), awsiid.ErrBadSignature, "does not verify with the AWS certificate"},
		{"another instance's document with this one's PKCS #7", mix(field(op, "document"), "", field(gp, "rsa2048")), awsiid.ErrBadSignature, "not the content the rsa2048 signature signs"},
		{"altered document, RSA-SHA256", mix(altered, field(gp, "signature"), ""), awsiid.ErrBadSignature, "RSA-SHA256 signature does not verify"},
		{"stopped", payload(t, stopped), awsiid.ErrNoSuchInstance, "no pending or running instance i-00000000000000004"},
		{"another account", payload(t, foreign), awsiid.ErrNoSuchInstance, "InvalidInstanceID.NotFound"},
		{"root volume swapped", payload(t, swapped), awsiid.ErrRootVolumeSwapped, "attached 10m0s apart"},
		{"signed with another region's key", payload(t, eu), awsiid.ErrBadSignature, "does not verify with the AWS certificate"},
		{"another partition", payload(t, cn), awsiid.ErrNoCertificate, "partition aws-cn, but this server is configured for partition aws"},
		{"not JSON", []byte("{"), node.ErrInvalid, "not JSON"},
		{"no signature", mix(field(gp, "document"), "", ""), node.ErrInvalid, "neither an rsa2048 nor an RSA-SHA256 signature"},
		{"PKCS #7 garbage", mix(field(gp, "document"), "", base64.StdEncoding.EncodeToString([]byte("\x30\x03\x02\x01\x01"))), node.ErrInvalid, "not a PKCS #7 SignedData"},
		{"bad instance ID", mix(strings.Replace(field(gp, "document"), "i-00000000000000001", "i-../../x", 1), field(gp, "signature"), ""), node.ErrInvalid, `invalid instanceId "i-../../x"`},
		{"oversized", make([]byte, awsiid.MaxPayloadSize+1), node.ErrInvalid, "more than 32768"},
	} {
		_, err := attest(s, tc.payload)
		t.Logf("%s: %v", tc.name, err)
		if !errors.Is(err, tc.is) || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %v containing %q", tc.name, err, tc.is, tc.want)
		}
	}
	// The root volume check does not apply to instance-store roots, with
	// skip_block_device, nor to accounts in account_ids_for_local_validation.
	if _, err := attest(s, payload(t, store)); err != nil {
		t.Errorf("instance-store root: %v", err)
	}
	for _, extra := range []map[string]any{{"skip_block_device": true}, {"account_ids_for_local_validation": []string{cloudfake.HomeAccount}}} {
		if _, err := attest(newServer(t, fakeConfig(t, aws, extra)), payload(t, swapped)); err != nil {
			t.Errorf("%v: %v", extra, err)
		}
	}
	// A server trusting the eu-west-1 signer for that region (its own
	// certificates in the file beside the default ones) attests it; the
	// default signer's certificates, which cover every region, do not
	// verify the eu document.
	cfg := fakeConfig(t, aws, nil)
	cfg.CertificatesPath = cloudfake.WriteCertificates(t, filepath.Join(t.TempDir(), "certs.pem"), aws.Signer, euSigner)
	if _, err := attest(newServer(t, cfg), payload(t, eu)); err != nil {
		t.Errorf("eu-west-1 with its certificate: %v", err)
	}
	// A server with certificates for us-east-1 only has none for eu-west-1.
	cfg.CertificatesPath = cloudfake.WriteCertificates(t, filepath.Join(t.TempDir(), "certs.pem"), cloudfake.NewAWSSigner(t, "aws-test", "us-east-1"))
	if _, err := attest(newServer(t, cfg), payload(t, eu)); !errors.Is(err, awsiid.ErrNoCertificate) || !strings.Contains(err.Error(), "no RSA-2048 certificate for region eu-west-1") {
		t.Errorf("a region without certificate: %v", err)
	}
	if _, err := attest(newServer(t, cfg), payload(t, good)); err != nil {
		t.Errorf("us-east-1 with its certificate: %v", err)
	}
}

// TestAssumeRole: with assume_role the server asks STS for the role in the
// document's account and calls EC2 with those credentials; an account
// whose role it may not assume is refused.
func TestAssumeRole(t *testing.T) {
	aws := cloudfake.NewAWS(t)
	aws.AllowAssumeRole("444455556666", "sigil-attestor")
	ok := aws.AddInstance(&cloudfake.Instance{ID: "i-0000000000000000a", Account: "444455556666", InstanceProfile: "p", Roles: []string{"app"}})
	denied := aws.AddInstance(&cloudfake.Instance{ID: "i-0000000000000000b", Account: "777788889999"})
	s := newServer(t, fakeConfig(t, aws, map[string]any{"assume_role": "sigil-attestor"}))
	res, err := attest(s, payload(t, ok))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(values(res.Selectors), "aws_iid:iamrole:arn:aws:iam::444455556666:role/app") || aws.Calls("AssumeRole") != 1 {
		t.Fatalf("selectors %q after %d AssumeRole calls", values(res.Selectors), aws.Calls("AssumeRole"))
	}
	_, err = attest(s, payload(t, denied))
	if !errors.Is(err, awsiid.ErrAccountDenied) || !strings.Contains(err.Error(), `role "sigil-attestor" of account 777788889999 cannot be assumed`) {
		t.Fatalf("an account whose role cannot be assumed: %v", err)
	}
	// Without assume_role, the server's own credentials do not see the
	// other account's instances.
	if _, err := attest(newServer(t, fakeConfig(t, aws, nil)), payload(t, ok)); !errors.Is(err, awsiid.ErrNoSuchInstance) {
		t.Fatalf("another account without assume_role: %v", err)
	}
	// Wrong credentials are the server's problem, not a refusal.
	cfg := fakeConfig(t, aws, nil)
	cfg.SecretAccessKey = "wrong"
	_, err = attest(newServer(t, cfg), payload(t, ok))
	if err == nil || errors.Is(err, node.ErrRefused) || errors.Is(err, node.ErrInvalid) || !strings.Contains(err.Error(), "SignatureDoesNotMatch") {
		t.Fatalf("wrong secret access key: %v", err)
	}
}

// realPayload is a real instance's document and signatures
// (testdata/README.md).
func realPayload(t testing.TB) (doc, sig, rsa2048 string) {
	t.Helper()
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join("testdata", "real-ap-southeast-2."+name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	return read("document"), read("signature"), read("rsa2048")
}

// TestRealDocument: what AWS really signs (a BER-encoded PKCS #7 with
// signed attributes, and the RSA-SHA256 form) verifies with the built-in
// certificates of its region; a byte changed anywhere does not.
func TestRealDocument(t *testing.T) {
	doc, sig, rsa2048 := realPayload(t)
	s, err := awsiid.NewServer(awsiid.ServerConfig{}, awsiid.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, EC2: noEC2{}})
	if err != nil {
		t.Fatal(err)
	}
	enc := func(doc, sig, rsa2048 string) []byte {
		b, _ := json.Marshal(map[string]string{"document": doc, "signature": sig, "rsa2048": rsa2048})
		return b
	}
	for name, p := range map[string][]byte{"both": enc(doc, sig, rsa2048), "rsa2048": enc(doc, "", rsa2048), "signature": enc(doc, sig, "")} {
		d, err := s.Verify(p)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if d.InstanceID != "i-0c5541936caf78c12" || d.AccountID != "189292791360" || d.Region != "ap-southeast-2" || d.AvailabilityZone != "ap-southeast-2a" {
			t.Fatalf("%s: %+v", name, d)
		}
	}
	der, _ := base64.StdEncoding.DecodeString(rsa2048)
	for _, i := range []int{40, len(der) / 2, len(der) - 200, len(der) - 30} {
		bad := slices.Clone(der)
		bad[i] ^= 0x01
		if _, err := s.Verify(enc(doc, "", base64.StdEncoding.EncodeToString(bad))); err == nil {
			t.Errorf("PKCS #7 with byte %d flipped: accepted", i)
		}
	}
	// The document another partition's server would not check.
	cn, err := awsiid.NewServer(awsiid.ServerConfig{Partition: "aws-cn"}, awsiid.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, EC2: noEC2{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cn.Verify(enc(doc, sig, rsa2048)); !errors.Is(err, awsiid.ErrNoCertificate) {
		t.Fatalf("aws-cn server: %v", err)
	}
	// Every built-in certificate parses, per partition, and every region
	// has both forms.
	for _, p := range awsiid.Partitions {
		c, err := awsiid.BuiltInCertificates(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Regions(awsiid.FormPKCS7)) == 0 || !slices.Equal(c.Regions(awsiid.FormPKCS7), c.Regions(awsiid.FormRSASHA256)) && p != "aws" {
			t.Errorf("%s: pkcs7 regions %q, rsa-sha256 regions %q", p, c.Regions(awsiid.FormPKCS7), c.Regions(awsiid.FormRSASHA256))
		}
		for _, r := range c.Regions(awsiid.FormPKCS7) {
			if awsiid.PartitionOf(r) != p {
				t.Errorf("%s holds region %s of partition %s", p, r, awsiid.PartitionOf(r))
			}
		}
	}
}

type noEC2 struct{}

func (noEC2) DescribeInstance(context.Context, string, string, string) (*awsiid.Instance, error) {
	return nil, errors.New("no EC2 here")
}
func (noEC2) InstanceProfileRoles(context.Context, string, string, string) ([]string, error) {
	return nil, errors.New("no IAM here")
}

// TestAgentMetadata: the agent speaks IMDSv2 (a session token first), falls
// back to IMDSv1 where the service issues no tokens, accepts SPIRE's
// documented endpoint with /latest, and reports the service's errors.
func TestAgentMetadata(t *testing.T) {
	aws := cloudfake.NewAWS(t)
	inst := aws.AddInstance(&cloudfake.Instance{ID: "i-0123456789abcdef0"})
	a, err := awsiid.NewAgent(awsiid.AgentConfig{MetadataEndpoint: inst.IMDSURL() + "/latest/"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var data map[string]string
	if err := json.Unmarshal(s.Payload(), &data); err != nil || data["document"] != string(inst.Document()) || data["signature"] == "" || data["rsa2048"] == "" {
		t.Fatalf("payload %s: %v", s.Payload(), err)
	}
	if n := inst.IMDSRequests.Load(); n != 4 {
		t.Errorf("%d metadata requests, want 4 (token, document, two signatures)", n)
	}
	if _, err := s.Respond(context.Background(), []byte("x")); err == nil {
		t.Error("aws_iid answered a challenge")
	}

	// IMDSv1: no token (404 on PUT), GETs without one.
	var sawToken bool
	v1 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			http.NotFound(w, r)
			return
		}
		sawToken = sawToken || r.Header.Get("X-aws-ec2-metadata-token") != ""
		_, _ = w.Write([]byte("v1:" + r.URL.Path))
	}))
	defer v1.Close()
	a, _ = awsiid.NewAgent(awsiid.AgentConfig{MetadataEndpoint: v1.URL})
	if s, err := a.Begin(context.Background()); err != nil || sawToken || !strings.Contains(string(s.Payload()), "v1:/latest/dynamic/instance-identity/rsa2048") {
		t.Fatalf("IMDSv1: %v (token sent %v)", err, sawToken)
	}

	// A service that refuses: the error names the path and status.
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			_, _ = w.Write([]byte("tok"))
			return
		}
		http.Error(w, "throttled", http.StatusServiceUnavailable)
	}))
	defer down.Close()
	a, _ = awsiid.NewAgent(awsiid.AgentConfig{MetadataEndpoint: down.URL})
	if _, err := a.Begin(context.Background()); err == nil || !strings.Contains(err.Error(), "GET /latest/dynamic/instance-identity/document: 503") {
		t.Fatalf("unavailable service: %v", err)
	}
}

func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	certs := cloudfake.WriteCertificates(t, filepath.Join(dir, "certs.pem"), cloudfake.NewAWSSigner(t, "cfg"))
	notCerts := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(notCerts, []byte("nothing"), 0o600); err != nil {
		t.Fatal(err)
	}
	parse := func(data map[string]any) (awsiid.ServerConfig, error) {
		return awsiid.ParseServerConfig(config.NewPlugin("NodeAttestor", awsiid.Type, data).Data(), parseTemplate)
	}
	c, err := parse(map[string]any{
		"access_key_id": "AKIA", "secret_access_key": "s", "assume_role": "r", "partition": "aws-us-gov",
		"skip_block_device": true, "disable_instance_profile_selectors": true,
		"account_ids_for_local_validation": []string{"123456789012"}, "agent_path_template": "/x/{{ .InstanceID }}",
		"signing_certificates_path": certs, "ec2_endpoint": "http://127.0.0.1:1", "iam_endpoint": "https://iam.example", "sts_endpoint": "http://127.0.0.1:2/",
	})
	if err != nil || c.AccessKeyID != "AKIA" || c.AssumeRole != "r" || c.PartitionOrDefault() != "aws-us-gov" || !c.SkipBlockDevice ||
		!c.DisableInstanceProfileSelectors || len(c.LocalValidAccountIDs) != 1 || c.CertificatesPath != certs || c.EC2Endpoint != "http://127.0.0.1:1" {
		t.Fatalf("%+v, %v", c, err)
	}
	if c, err := parse(map[string]any{}); err != nil || c.PartitionOrDefault() != "aws" {
		t.Fatalf("empty plugin_data: %+v, %v", c, err)
	}
	for _, tc := range []struct {
		data map[string]any
		want string
	}{
		{map[string]any{"access_key_id": "AKIA"}, "access_key_id is set but secret_access_key is not"},
		{map[string]any{"secret_access_key": "s"}, "secret_access_key is set but access_key_id is not"},
		{map[string]any{"partition": "aws-moon"}, `partition "aws-moon" is not one of aws, aws-cn, aws-us-gov, aws-eusc`},
		{map[string]any{"assume_role": "arn:aws:iam::1:role/x"}, "is not an IAM role name"},
		{map[string]any{"account_ids_for_local_validation": []string{"12"}}, `"12" is not a 12-digit account ID`},
		{map[string]any{"agent_path_template": "/{{ .X"}, "unclosed action"},
		{map[string]any{"ec2_endpoint": "ftp://x"}, "ec2_endpoint: \"ftp://x\" is not an http:// or https:// URL"},
		{map[string]any{"signing_certificates_path": filepath.Join(dir, "missing.pem")}, "signing certificates: open "},
		{map[string]any{"signing_certificates_path": notCerts}, "no PEM CERTIFICATE block"},
		{map[string]any{"verify_organization": map[string]any{"management_account_id": "1"}}, "verify_organization"},
		{map[string]any{"validate_eks_cluster_membership": map[string]any{}}, "validate_eks_cluster_membership"},
		{map[string]any{"skip_block_devices": true}, "skip_block_devices"},
	} {
		_, err := parse(tc.data)
		t.Logf("%v: %v", tc.data, err)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error containing %q", tc.data, err, tc.want)
		}
	}

	agent := func(data map[string]any) (awsiid.AgentConfig, error) {
		return awsiid.ParseAgentConfig(config.NewPlugin("NodeAttestor", awsiid.Type, data).Data())
	}
	if c, err := agent(map[string]any{"ec2_metadata_endpoint": "http://169.254.169.254/latest"}); err != nil || c.MetadataEndpoint == "" {
		t.Fatalf("%+v, %v", c, err)
	}
	for _, tc := range []struct {
		data map[string]any
		want string
	}{
		{map[string]any{"ec2_metadata_endpoint": "169.254.169.254"}, "is not an http:// or https:// URL with a host"},
		{map[string]any{"ec2_metadata_endpoint_url": "x"}, "ec2_metadata_endpoint_url"},
	} {
		if _, err := agent(tc.data); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.data, err, tc.want)
		}
	}
}

func TestSelectorKind(t *testing.T) {
	k := awsiid.SelectorKind()
	for _, v := range []string{"account_id:123456789012", "region:us-gov-west-1", "az:us-east-1a", "instance:id:i-0123456789abcdef0",
		"image:id:ami-5fb8c835", "tag:Name:web", "tag:aws:autoscaling:groupName:g", "sg:id:sg-01234567", "sg:name:web",
		"iamrole:arn:aws:iam::123456789012:role/Blog"} {
		if err := k.Check(v); err != nil {
			t.Errorf("%s: %v", v, err)
		}
	}
	for _, v := range []string{"account_id:12", "instance_id:i-1", "instance:i-0123456789abcdef0", "image:ami-5fb8c835",
		"sg:group:x", "sg:id:web", "tag:", "tag:noValueSeparator", "iamrole:Blog", "region:US"} {
		if err := k.Check(v); err == nil {
			t.Errorf("%s: accepted", v)
		}
	}
}
