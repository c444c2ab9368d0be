// Package swtpm runs software TPM 2.0s (swtpm, from the swtpm and
// swtpm-tools packages) for tests: a TPM is "manufactured" once with
// swtpm_setup (an RSA-2048 EK whose certificate, in NV, chains to a local
// manufacturer CA the test owns) and then started as often as needed from
// copies of that state, one swtpm process per TPM, serving the raw TPM
// command protocol on a unix socket (what tpmdev opens). Every swtpm dies
// with its test (t.Cleanup, and SIGKILL if the test binary dies first).
//
// Copies of one Image are the same TPM: same EK, same seeds, so a key
// wrapped by one loads in another. A different device is a different Image
// (Manufacture again), optionally with the same manufacturer CA.
//
// Tests that need swtpm call Require, which skips the test when swtpm is
// not installed, except in CI (the CI environment variable set, as .ci/run
// does), where a missing swtpm fails the test: TPM tests never skip in CI.
//
// Import it only from _test.go files.
package swtpm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/tpmdev"
)

// Require skips t when swtpm or swtpm_setup is missing, or fails it when
// the CI environment variable is set (and not "false").
func Require(t testing.TB) {
	t.Helper()
	if err := available(); err != nil {
		if ci := os.Getenv("CI"); ci != "" && ci != "false" {
			t.Fatalf("%v (CI is set: TPM tests must run; install the swtpm and swtpm-tools packages)", err)
		}
		t.Skipf("%v (install the swtpm and swtpm-tools packages)", err)
	}
}

func available() error {
	for _, tool := range []string{"swtpm", "swtpm_setup", "swtpm_localca"} {
		if _, err := exec.LookPath(tool); err != nil {
			if tool == "swtpm_localca" {
				if _, err := os.Stat("/usr/bin/swtpm_localca"); err == nil {
					continue
				}
			}
			return fmt.Errorf("%s not found", tool)
		}
	}
	return nil
}

// Image is a manufactured TPM state and the CA that issued its EK
// certificate.
type Image struct {
	// Dir holds ca/ (unless the CA directory was given) and state/.
	Dir string
	// CADir is the manufacturer CA's directory: swtpm-localca-rootca-cert.pem
	// (the root a server trusts), issuercert.pem (the intermediate that
	// signed the EK certificate) and their keys.
	CADir string

	state string
}

// RootCertPath is the manufacturer root certificate (PEM): put it (or its
// directory) in the server's ek_ca_path.
func (im *Image) RootCertPath() string {
	return filepath.Join(im.CADir, "swtpm-localca-rootca-cert.pem")
}

// IssuerCertPath is the intermediate CA certificate that signed the EK
// certificate (PEM).
func (im *Image) IssuerCertPath() string { return filepath.Join(im.CADir, "issuercert.pem") }

// CACerts returns the root and the intermediate certificate.
func (im *Image) CACerts(t testing.TB) (root, issuer *x509.Certificate) {
	t.Helper()
	read := func(path string) *x509.Certificate {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(data)
		if b == nil {
			t.Fatalf("%s: no PEM", path)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return c
	}
	return read(im.RootCertPath()), read(im.IssuerCertPath())
}

// Options tune Manufacture.
type Options struct {
	// CADir is an existing manufacturer CA directory to issue the EK
	// certificate with (another Image's CADir: two devices of one
	// manufacturer); "" creates a new CA in dir/ca.
	CADir string
	// NoEK manufactures a TPM with no EK provisioned: no persistent EK and
	// no EK certificate (as many firmware and virtual TPMs).
	NoEK bool
}

// manufactureMu serializes swtpm_setup runs sharing a CA directory (its
// serial-number file).
var manufactureMu sync.Mutex

// Manufacture creates a TPM state in dir (which must exist) with an EK
// certificate. It takes 1-2 s.
func Manufacture(dir string, opts Options) (*Image, error) {
	if err := available(); err != nil {
		return nil, err
	}
	im := &Image{Dir: dir, CADir: opts.CADir, state: filepath.Join(dir, "state")}
	if im.CADir == "" {
		im.CADir = filepath.Join(dir, "ca")
		if err := os.MkdirAll(im.CADir, 0o700); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(im.state, 0o700); err != nil {
		return nil, err
	}
	localca := "/usr/bin/swtpm_localca"
	if p, err := exec.LookPath("swtpm_localca"); err == nil {
		localca = p
	}
	files := map[string]string{
		"swtpm-localca.conf":    fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", im.CADir),
		"swtpm-localca.options": "--platform-manufacturer Sigil\n--platform-version 2.1\n--platform-model TestTPM\n",
		"swtpm_setup.conf": fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\n",
			localca, filepath.Join(im.CADir, "swtpm-localca.conf"), filepath.Join(im.CADir, "swtpm-localca.options")),
	}
	manufactureMu.Lock()
	defer manufactureMu.Unlock()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(im.CADir, name), []byte(content), 0o600); err != nil {
			return nil, err
		}
	}
	args := []string{"--tpm2", "--tpmstate", im.state, "--config", filepath.Join(im.CADir, "swtpm_setup.conf"),
		"--lock-nvram", "--pcr-banks", "sha256"}
	if !opts.NoEK {
		args = append(args, "--create-ek-cert")
	}
	cmd := exec.Command("swtpm_setup", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("swtpm_setup: %v: %s", err, out)
	}
	return im, nil
}

// NewImage manufactures a TPM in a temporary directory removed after t.
func NewImage(t testing.TB, opts Options) *Image {
	t.Helper()
	Require(t)
	im, err := Manufacture(testutil.ShortTempDir(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// shared is the image Main manufactures lazily for Shared.
var shared struct {
	root string
	once sync.Once
	im   *Image
	err  error
}

// Main runs a test binary's tests with a process-wide directory for the
// image Shared returns, and removes it afterwards; then it runs after
// (e.g. testutil.Cleanup). Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(swtpm.Main(m)) }
func Main(m *testing.M, after ...func()) int {
	root, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	shared.root = root
	code := m.Run()
	_ = os.RemoveAll(root)
	for _, f := range after {
		f()
	}
	return code
}

// Shared returns one image for the whole test binary (manufactured on
// first use) when TestMain uses Main, else a new image for t. Start it as
// often as needed: each TPM is a copy.
func Shared(t testing.TB) *Image {
	t.Helper()
	Require(t)
	if shared.root == "" {
		return NewImage(t, Options{})
	}
	shared.once.Do(func() {
		dir := filepath.Join(shared.root, "image")
		if shared.err = os.Mkdir(dir, 0o700); shared.err == nil {
			shared.im, shared.err = Manufacture(dir, Options{})
		}
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.im
}

// devices are the images SharedDevices manufactured, by index.
var devices struct {
	mu  sync.Mutex
	ims []*Image
}

// SharedDevices returns n distinct devices (n images with their own EKs
// and seeds, all issued by the CA of Shared's image) for the whole test
// binary when TestMain uses Main, manufactured on first use (1-2 s each);
// else n new images for t.
func SharedDevices(t testing.TB, n int) []*Image {
	t.Helper()
	first := Shared(t)
	if shared.root == "" {
		ims := []*Image{first}
		for len(ims) < n {
			ims = append(ims, NewImage(t, Options{CADir: first.CADir}))
		}
		return ims[:n]
	}
	devices.mu.Lock()
	defer devices.mu.Unlock()
	if len(devices.ims) == 0 {
		devices.ims = []*Image{first}
	}
	for len(devices.ims) < n {
		dir := filepath.Join(shared.root, fmt.Sprintf("device-%d", len(devices.ims)))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		im, err := Manufacture(dir, Options{CADir: first.CADir})
		if err != nil {
			t.Fatal(err)
		}
		devices.ims = append(devices.ims, im)
	}
	return devices.ims[:n]
}

// TPM is a running swtpm.
type TPM struct {
	// Socket is the TPM command socket (tpmdev.New(Socket)).
	Socket string
	// StateDir holds the TPM's state (NV, seeds, PCRs are volatile).
	StateDir string
	Image    *Image

	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// Start starts a swtpm on a copy of the image's state; it is stopped when
// t ends.
func (im *Image) Start(t testing.TB) *TPM {
	t.Helper()
	Require(t)
	dir := testutil.ShortTempDir(t)
	tp := &TPM{Socket: filepath.Join(dir, "tpm.sock"), StateDir: filepath.Join(dir, "state"), Image: im,
		log: filepath.Join(dir, "swtpm.log"), done: make(chan struct{})}
	if err := os.Mkdir(tp.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(filepath.Join(im.state, "tpm2-00.permall"), filepath.Join(tp.StateDir, "tpm2-00.permall")); err != nil {
		t.Fatal(err)
	}
	tp.start(t)
	return tp
}

func (tp *TPM) start(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(tp.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	_ = os.Remove(tp.Socket)
	tp.cmd = exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+tp.StateDir,
		"--server", "type=unixio,path="+tp.Socket,
		"--ctrl", "type=unixio,path="+tp.Socket+".ctrl",
		"--flags", "not-need-init,startup-clear")
	tp.cmd.Stdout, tp.cmd.Stderr = logf, logf
	tp.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := tp.cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	tp.done = make(chan struct{})
	cmd, done := tp.cmd, tp.done
	go func() {
		tp.err = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		tp.Stop()
		if t.Failed() {
			if out, err := os.ReadFile(tp.log); err == nil && len(out) > 0 {
				t.Logf("swtpm log (%s):\n%s", tp.StateDir, out)
			}
		}
	})
	// Ready once the socket answers a command.
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-done:
			out, _ := os.ReadFile(tp.log)
			t.Fatalf("swtpm exited: %v: %s", tp.err, out)
		default:
		}
		if _, err := os.Stat(tp.Socket); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = tpmdev.New(tp.Socket).Do(ctx, func(t transport.TPM) error {
				_, err := tpm2.GetRandom{BytesRequested: 8}.Execute(t)
				return err
			})
			cancel()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("swtpm does not answer on %s: %v", tp.Socket, err)
			}
		} else if time.Now().After(deadline) {
			t.Fatalf("swtpm did not create %s", tp.Socket)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop stops the swtpm (its state stays in StateDir; PCRs are lost).
func (tp *TPM) Stop() {
	if tp.cmd == nil || tp.cmd.Process == nil {
		return
	}
	select {
	case <-tp.done:
		return
	default:
	}
	_ = tp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-tp.done:
	case <-time.After(10 * time.Second):
		_ = tp.cmd.Process.Kill()
		<-tp.done
	}
}

// Restart stops and starts the swtpm on the same state: a reboot (PCRs
// back to their initial values, keys and NV kept).
func (tp *TPM) Restart(t testing.TB) {
	t.Helper()
	tp.Stop()
	tp.start(t)
}

// Device returns the TPM as the agent opens it.
func (tp *TPM) Device() *tpmdev.Device { return tpmdev.New(tp.Socket) }

// Do runs op on the TPM, failing t on error.
func (tp *TPM) Do(t testing.TB, op func(transport.TPM) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tp.Device().Do(ctx, op); err != nil {
		t.Fatal(err)
	}
}

// ExtendPCR extends the SHA-256 bank's PCR index with SHA-256(data), as
// firmware measuring a boot component does.
func (tp *TPM) ExtendPCR(t testing.TB, index int, data []byte) {
	t.Helper()
	d := sha256.Sum256(data)
	tp.Do(t, func(tpm transport.TPM) error {
		_, err := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(index), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
		}.Execute(tpm)
		return err
	})
}

// PCR reads the SHA-256 bank's PCR index.
func (tp *TPM) PCR(t testing.TB, index int) []byte {
	t.Helper()
	var v []byte
	tp.Do(t, func(tpm transport.TPM) error {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
			{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(uint(index))},
		}}}.Execute(tpm)
		if err != nil {
			return err
		}
		if len(rsp.PCRValues.Digests) != 1 {
			return fmt.Errorf("PCR_Read returned %d values", len(rsp.PCRValues.Digests))
		}
		v = rsp.PCRValues.Digests[0].Buffer
		return nil
	})
	return v
}

// EKCertificate reads the RSA EK certificate from NV (index 0x01c00002).
func (tp *TPM) EKCertificate(t testing.TB) *x509.Certificate {
	t.Helper()
	var der []byte
	tp.Do(t, func(tpm transport.TPM) error {
		idx := tpm2.TPMHandle(0x01c00002)
		pub, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(tpm)
		if err != nil {
			return err
		}
		nv, err := pub.NVPublic.Contents()
		if err != nil {
			return err
		}
		for off := uint16(0); off < nv.DataSize; {
			n := min(nv.DataSize-off, 512)
			rsp, err := tpm2.NVRead{
				AuthHandle: tpm2.AuthHandle{Handle: idx, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)},
				NVIndex:    tpm2.NamedHandle{Handle: idx, Name: pub.NVName},
				Size:       n, Offset: off,
			}.Execute(tpm)
			if err != nil {
				return err
			}
			der = append(der, rsp.Data.Buffer...)
			off += n
		}
		return nil
	})
	// The NV area may be padded after the DER.
	c, err := x509.ParseCertificate(trimDER(der))
	if err != nil {
		t.Fatalf("EK certificate: %v", err)
	}
	return c
}

func trimDER(b []byte) []byte {
	if len(b) < 4 || b[0] != 0x30 || b[1] != 0x82 {
		return b
	}
	n := int(b[2])<<8 | int(b[3]) + 4
	if n <= len(b) {
		return b[:n]
	}
	return b
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

// Log returns the swtpm's log so far (for test failure messages).
func (tp *TPM) Log() string {
	out, _ := os.ReadFile(tp.log)
	return string(bytes.TrimSpace(out))
}

// EKCADir returns a new directory holding the image's manufacturer CA
// certificates (the issuer of the EK certificate and its root): what a
// server's ek_ca_path names.
func (im *Image) EKCADir(t testing.TB) string {
	t.Helper()
	dir := testutil.ShortTempDir(t)
	for _, f := range []string{im.IssuerCertPath(), im.RootCertPath()} {
		if err := copyFile(f, filepath.Join(dir, filepath.Base(f))); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// ServerPlugin is a server's NodeAttestor "tpm" block trusting the image's
// manufacturer CA, with more plugin_data (pcr_selection, pcr_allowed...).
func (im *Image) ServerPlugin(t testing.TB, data map[string]any) testutil.Plugin {
	t.Helper()
	d := map[string]any{"ek_ca_path": im.EKCADir(t)}
	for k, v := range data {
		d[k] = v
	}
	return testutil.Plugin{Type: "NodeAttestor", Name: "tpm", Data: d}
}

// AgentPlugins are an agent's NodeAttestor "tpm" and KeyManager "tpm"
// blocks for this TPM, the keys kept in keyDir.
func (tp *TPM) AgentPlugins(keyDir string) (nodeAttestor, keyManager *testutil.Plugin) {
	return &testutil.Plugin{Type: "NodeAttestor", Name: "tpm", Data: map[string]any{"tpm_path": tp.Socket}},
		&testutil.Plugin{Type: "KeyManager", Name: "tpm", Data: map[string]any{"tpm_path": tp.Socket, "directory": keyDir}}
}

// EKPubHash is the TPM's EK public key hash as the tpm attestor (and the
// community SPIRE plugin) computes it: hex SHA-256 of the EK
// certificate's public key in PKIX DER.
func (tp *TPM) EKPubHash(t testing.TB) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(tp.EKCertificate(t).PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}
