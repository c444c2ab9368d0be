package tpmkey_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/keys"
	"github.com/sigil-spiffe/sigil/internal/keys/tpmkey"
	"github.com/sigil-spiffe/sigil/internal/testutil/swtpm"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

func TestMain(m *testing.M) { os.Exit(swtpm.Main(m)) }

func newManager(t testing.TB, tp *swtpm.TPM, dir string) *tpmkey.Manager {
	t.Helper()
	m, err := tpmkey.New(tpmkey.Config{TPMPath: tp.Socket, Directory: dir})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestTPMKeyManagerSigns: keys of both curves sign in the TPM, the
// signatures verify with the public key, and a CSR made with the key is
// valid.
func TestTPMKeyManagerSigns(t *testing.T) {
	tp := swtpm.Shared(t).Start(t)
	m := newManager(t, tp, filepath.Join(t.TempDir(), "keys"))
	ctx := context.Background()
	for _, c := range []struct {
		typ  keys.Type
		hash crypto.Hash
	}{{keys.ECP256, crypto.SHA256}, {keys.ECP384, crypto.SHA384}, {keys.ECP256, crypto.SHA512}} {
		k, err := m.GenerateKey(ctx, "k-"+string(c.typ), c.typ)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := keys.TypeOf(k.Public()); got != c.typ {
			t.Fatalf("key type %s, want %s", got, c.typ)
		}
		h := c.hash.New()
		h.Write([]byte("message"))
		digest := h.Sum(nil)
		sig, err := k.Sign(rand.Reader, digest, c.hash)
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), digest, sig) {
			t.Fatalf("%s/%v: signature does not verify", c.typ, c.hash)
		}
		csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(csrDER)
		if err != nil {
			t.Fatal(err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("CSR signature: %v", err)
		}
	}
	if _, err := m.GenerateKey(ctx, "rsa", keys.RSA2048); err == nil {
		t.Fatal("an RSA key was generated")
	}
	k, _ := m.GetKey(ctx, "k-"+string(keys.ECP256))
	if _, err := k.Sign(rand.Reader, []byte("short"), crypto.SHA256); err == nil {
		t.Fatal("signed a digest of the wrong size")
	}
}

// TestTPMKeyManagerPersists: a key is found again by a new manager on the
// same directory and TPM (as after an agent restart); the file is 0600 in
// a 0700 directory and holds no usable private key; a deleted key is gone.
func TestTPMKeyManagerPersists(t *testing.T) {
	tp := swtpm.Shared(t).Start(t)
	dir := filepath.Join(t.TempDir(), "keys")
	ctx := context.Background()
	k1, err := newManager(t, tp, dir).GenerateKey(ctx, "agent-svid-a", keys.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	tp.Restart(t) // a reboot: nothing of the key is kept in the TPM
	m2 := newManager(t, tp, dir)
	k2, err := m2.GetKey(ctx, "agent-svid-a")
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Public().(*ecdsa.PublicKey).Equal(k2.Public()) {
		t.Fatal("another key was loaded")
	}
	digest := sha256.Sum256([]byte("after restart"))
	sig, err := k2.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(k1.Public().(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatalf("sign after restart: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, "agent-svid-a.tpmkey"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode())
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Fatalf("key directory mode %v", di.Mode())
	}
	if err := m2.DeleteKey(ctx, "agent-svid-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := newManager(t, tp, dir).GetKey(ctx, "agent-svid-a"); !errors.Is(err, keys.ErrNotFound) {
		t.Fatalf("GetKey after delete: %v", err)
	}
	if err := m2.DeleteKey(ctx, "agent-svid-a"); err != nil {
		t.Fatalf("deleting a missing key: %v", err)
	}
}

// TestTPMKeyManagerOtherTPMCannotLoad: the key directory copied to another
// device (another TPM) is useless there; on a copy of the same TPM it
// works (the key is bound to the TPM, not to the files).
func TestTPMKeyManagerOtherTPMCannotLoad(t *testing.T) {
	im := swtpm.Shared(t)
	tp := im.Start(t)
	dir := filepath.Join(t.TempDir(), "keys")
	ctx := context.Background()
	if _, err := newManager(t, tp, dir).GenerateKey(ctx, "agent-svid-a", keys.ECP256); err != nil {
		t.Fatal(err)
	}
	other := swtpm.NewImage(t, swtpm.Options{}).Start(t)
	_, err := newManager(t, other, dir).GetKey(ctx, "agent-svid-a")
	if !errors.Is(err, tpmkey.ErrOtherTPM) {
		t.Fatalf("GetKey on another TPM: %v, want ErrOtherTPM", err)
	}
	if _, err := newManager(t, im.Start(t), dir).GetKey(ctx, "agent-svid-a"); err != nil {
		t.Fatalf("GetKey on the same TPM (a copy of its state): %v", err)
	}
}

// TestTPMKeyManagerTLS: a TPM key authenticates a TLS 1.3 client.
func TestTPMKeyManagerTLS(t *testing.T) {
	tp := swtpm.Shared(t).Start(t)
	k, err := newManager(t, tp, t.TempDir()).GenerateKey(context.Background(), "tls", keys.ECP256)
	if err != nil {
		t.Fatal(err)
	}
	ca := testca.New(t, testca.Serial(1), testca.Subject("ca"), testca.Validity(time.Now().Add(-time.Hour), time.Now().Add(time.Hour)),
		testca.KeyUsage(x509.KeyUsageCertSign|x509.KeyUsageDigitalSignature))
	leaf, _ := ca.Leaf(t, testca.Key(k), testca.Serial(2), testca.Subject("device"), testca.Validity(ca.Cert.NotBefore, ca.Cert.NotAfter),
		testca.ExtKeyUsage(x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth),
		testca.Template(func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)} }))
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cert := tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: k}
	srvCfg := &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	cliCfg := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13, ServerName: "127.0.0.1"}
	c1, c2 := net.Pipe()
	errc := make(chan error, 1)
	go func() { errc <- tls.Server(c1, srvCfg).Handshake() }()
	if err := tls.Client(c2, cliCfg).Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
}

// TestTPMKeyManagerParseConfig: directory is required, tpm_path optional,
// other keys are errors.
func TestTPMKeyManagerParseConfig(t *testing.T) {
	c, err := tpmkey.ParseConfig(config.NewPlugin("KeyManager", "tpm", map[string]any{"directory": "/d", "tpm_path": "/dev/tpm0"}).Data())
	if err != nil || c != (tpmkey.Config{Directory: "/d", TPMPath: "/dev/tpm0"}) {
		t.Fatalf("%+v, %v", c, err)
	}
	for data, want := range map[string]map[string]any{
		"directory must be configured": {"tpm_path": "/dev/tpm0"},
		`unknown key "keys_path"`:      {"directory": "/d", "keys_path": "/k"},
	} {
		if _, err := tpmkey.ParseConfig(config.NewPlugin("KeyManager", "tpm", want).Data()); err == nil || !strings.Contains(err.Error(), data) {
			t.Errorf("%v: %v, want %q", want, err, data)
		}
	}
}
