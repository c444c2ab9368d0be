// Package kubetest runs a real Kubernetes API server for tests: etcd and
// kube-apiserver as children of the test binary, on free ports of
// 127.0.0.1, with an admin identity (a static bearer token in
// system:masters, and a client certificate), a service-account issuer
// whose tokens TokenRequest issues and TokenReview checks, and RBAC.
// There is no kubelet, scheduler or controller-manager: pods are created
// with their node name set and stay Pending, nodes are created by the
// test, namespaces get no "default" service account.
//
// The binaries are built once per machine, outside the checkout, by
// tools/kube/build.sh (.ci/run runs it when they are missing) into
//
//	${SIGIL_KUBE_ASSETS:-${SIGIL_CACHE:-$HOME/.cache/sigil}/kube/<Version>}
//
// which holds kube-apiserver and etcd: it is also what controller-runtime's
// envtest wants as KUBEBUILDER_ASSETS (Assets). Tests that need the server
// call Require (Shared and Start do), which skips the test with the reason
// when the binaries are missing, except in CI (the CI environment
// variable set and not "false", as .ci/run does), where it fails it.
//
// One server serves a whole test binary when its TestMain uses Main
// (started on first use, about 3 s, ~350 MB of memory); without Main
// every test that asks gets its own. Tests sharing a server keep apart by
// creating their objects in their own namespace (Namespace) and giving
// cluster-scoped ones unique names (Name).
//
// The package speaks the API with net/http and encoding/json (Do, Create,
// and helpers for the objects Sigil's tests need), so a test binary using
// it links no client-go. A test that has client-go builds its rest.Config
// from URL, CAPEM and Token, or loads AdminKubeconfig.
//
// Import it only from _test.go files (and test helpers).
package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// Version is the Kubernetes release tools/kube builds (its go.mod's
// k8s.io/kubernetes version, which a test of this package checks).
const Version = "v1.37.2"

// Issuer is the service-account token issuer (--service-account-issuer),
// also the API server's default audience.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// AssetsDir returns the folder that should hold kube-apiserver and etcd:
// $SIGIL_KUBE_ASSETS, else ${SIGIL_CACHE:-$HOME/.cache/sigil}/kube/<Version>
// (the same rule as tools/kube/build.sh).
func AssetsDir() string {
	if d := os.Getenv("SIGIL_KUBE_ASSETS"); d != "" {
		return d
	}
	cache := os.Getenv("SIGIL_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil || home == "" {
			home = "/root"
		}
		cache = filepath.Join(home, ".cache", "sigil")
	}
	return filepath.Join(cache, "kube", Version)
}

// findAssets checks that AssetsDir holds both binaries.
func findAssets() (string, error) {
	dir := AssetsDir()
	for _, b := range []string{"kube-apiserver", "etcd"} {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("kubetest: no %s in %s (build the binaries once per machine with tools/kube/build.sh: ~6.5 min cold)", b, dir)
		}
	}
	return dir, nil
}

func inCI() bool {
	ci := os.Getenv("CI")
	return ci != "" && ci != "false"
}

// Require skips t when kube-apiserver or etcd is missing, or fails it
// when the CI environment variable is set (and not "false").
func Require(t testing.TB) {
	t.Helper()
	if _, err := findAssets(); err != nil {
		if inCI() {
			t.Fatalf("%v (CI is set: the Kubernetes tests must run; .ci/run builds them)", err)
		}
		t.Skip(err.Error())
	}
}

// Assets returns the folder holding kube-apiserver and etcd, for
// controller-runtime's envtest (Environment.BinaryAssetsDirectory or
// KUBEBUILDER_ASSETS), after Require.
func Assets(t testing.TB) string {
	t.Helper()
	Require(t)
	dir, _ := findAssets()
	return dir
}

// Server is a running etcd + kube-apiserver.
type Server struct {
	// URL is the API server's address, https://127.0.0.1:<port>.
	URL string
	// CAPEM is the PEM of the CA of the API server's serving certificate
	// (CAFile holds it).
	CAPEM  []byte
	CAFile string
	// Token is the admin's bearer token (user "admin", group
	// system:masters).
	Token string
	// AdminCertFile and AdminKeyFile are a client certificate of the
	// same admin, signed by the API server's --client-ca-file.
	AdminCertFile, AdminKeyFile string
	// AdminKubeconfig is a kubeconfig file for the admin (bearer token).
	AdminKubeconfig string
	// Dir holds the configuration, certificates and logs.
	Dir string

	clientCA    *issuer
	client      *http.Client
	etcd, kapi  *proc
	etcdURL     string
	etcdDataDir string
}

// proc is a child process with its log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// shared is the server Main starts lazily for Shared.
var shared struct {
	enabled bool
	once    sync.Once
	s       *Server
	err     error
}

// Main runs a test binary's tests with one API server shared by all of
// them (started on first use) and stops it afterwards; then it runs after.
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }
func Main(m *testing.M, after ...func()) int {
	shared.enabled = true
	code := m.Run()
	if shared.s != nil {
		if err := shared.s.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	for _, f := range after {
		f()
	}
	return code
}

// Shared returns the test binary's API server when TestMain uses Main
// (started on first use), else a new server for t.
func Shared(t testing.TB) *Server {
	t.Helper()
	Require(t)
	if !shared.enabled {
		return Start(t)
	}
	shared.once.Do(func() { shared.s, shared.err = StartServer() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.s
}

// Start starts a server that is stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	Require(t)
	s, err := StartServer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// StartServer starts etcd and kube-apiserver and waits until the API
// server is ready; the caller stops it.
func StartServer() (s *Server, err error) {
	assets, err := findAssets()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kube")
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	s = &Server{Dir: dir}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()
	if err := s.writeCredentials(); err != nil {
		return nil, err
	}
	if err := s.startEtcd(assets); err != nil {
		return nil, err
	}
	if err := s.startAPIServer(assets); err != nil {
		return nil, err
	}
	return s, nil
}

// writeCredentials creates the serving CA and certificate, the client CA
// and the admin's certificate, the service-account signing key, the
// static token file and the admin kubeconfig.
func (s *Server) writeCredentials() error {
	servingCA, err := newIssuer("kubetest serving CA")
	if err != nil {
		return err
	}
	serving, servingKey, err := servingCA.issue(pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	s.clientCA, err = newIssuer("kubetest client CA")
	if err != nil {
		return err
	}
	admin, adminKey, err := s.clientCA.issue(pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}}, x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		return err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	tok := make([]byte, 24)
	if _, err := rand.Read(tok); err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	s.Token = hex.EncodeToString(tok)
	s.CAPEM = servingCA.certPEM
	s.CAFile = filepath.Join(s.Dir, "ca.crt")
	s.AdminCertFile = filepath.Join(s.Dir, "admin.crt")
	s.AdminKeyFile = filepath.Join(s.Dir, "admin.key")
	files := map[string][]byte{
		"ca.crt":        s.CAPEM,
		"serving.crt":   serving,
		"serving.key":   servingKey,
		"client-ca.crt": s.clientCA.certPEM,
		"admin.crt":     admin,
		"admin.key":     adminKey,
		"sa.key":        pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		"sa.pub":        pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
		"tokens.csv":    []byte(s.Token + ",admin,admin-uid,system:masters\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(s.Dir, name), data, 0o600); err != nil {
			return fmt.Errorf("kubetest: %w", err)
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CAPEM)
	s.client = &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 16,
	}, Timeout: 60 * time.Second}
	return nil
}

// startEtcd starts etcd on free ports, its data in memory (/dev/shm) when
// possible: etcd 3.4 has no --unsafe-no-fsync.
func (s *Server) startEtcd(assets string) error {
	s.etcdDataDir = filepath.Join(s.Dir, "etcd")
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "kubetest-etcd"); err == nil {
			s.etcdDataDir = d
		}
	}
	for attempt := 0; ; attempt++ {
		client, err1 := testutil.FreePort()
		peer, err2 := testutil.FreePort()
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		clientURL := "http://127.0.0.1:" + strconv.Itoa(client)
		peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
		_ = os.RemoveAll(filepath.Join(s.etcdDataDir, "member"))
		p, err := s.spawn("etcd", filepath.Join(assets, "etcd"),
			"--name=kubetest",
			"--data-dir="+s.etcdDataDir,
			"--listen-client-urls="+clientURL, "--advertise-client-urls="+clientURL,
			"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
			"--initial-cluster=kubetest="+peerURL,
			"--listen-metrics-urls=",
		)
		if err != nil {
			return err
		}
		s.etcd = p
		err = p.waitReady(60*time.Second, func() bool {
			resp, err := http.Get(clientURL + "/health")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode == http.StatusOK && bytes.Contains(b, []byte(`"true"`))
		})
		if err == nil {
			s.etcdURL = clientURL
			return nil
		}
		p.stop(10 * time.Second)
		if attempt == 4 || !strings.Contains(p.logs(), "address already in use") {
			return err
		}
	}
}

// startAPIServer starts kube-apiserver on a free port and waits for
// /readyz.
func (s *Server) startAPIServer(assets string) error {
	for attempt := 0; ; attempt++ {
		port, err := testutil.FreePort()
		if err != nil {
			return err
		}
		f := func(name string) string { return filepath.Join(s.Dir, name) }
		p, err := s.spawn("kube-apiserver", filepath.Join(assets, "kube-apiserver"),
			"--etcd-servers="+s.etcdURL,
			"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
			"--secure-port="+strconv.Itoa(port),
			"--endpoint-reconciler-type=none",
			"--cert-dir="+f("certs"),
			"--tls-cert-file="+f("serving.crt"), "--tls-private-key-file="+f("serving.key"),
			"--client-ca-file="+f("client-ca.crt"),
			"--token-auth-file="+f("tokens.csv"),
			"--service-account-issuer="+Issuer,
			"--service-account-key-file="+f("sa.pub"),
			"--service-account-signing-key-file="+f("sa.key"),
			"--authorization-mode=RBAC",
			"--service-cluster-ip-range=10.0.0.0/24",
			"--allow-privileged=true",
		)
		if err != nil {
			return err
		}
		s.kapi = p
		s.URL = "https://127.0.0.1:" + strconv.Itoa(port)
		err = p.waitReady(120*time.Second, func() bool {
			req, _ := http.NewRequest(http.MethodGet, s.URL+"/readyz", nil)
			req.Header.Set("Authorization", "Bearer "+s.Token)
			resp, err := s.client.Do(req)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			_, _ = io.Copy(io.Discard, resp.Body)
			return resp.StatusCode == http.StatusOK
		})
		if err == nil {
			break
		}
		p.stop(10 * time.Second)
		if attempt == 4 || !strings.Contains(p.logs(), "address already in use") {
			return err
		}
	}
	s.AdminKubeconfig = filepath.Join(s.Dir, "admin.kubeconfig")
	return os.WriteFile(s.AdminKubeconfig, []byte(s.KubeconfigToken(s.Token)), 0o600)
}

// spawn starts a child process that dies with the test binary, its
// output in Dir/<name>.log.
func (s *Server) spawn(name, path string, args ...string) (*proc, error) {
	p := &proc{name: name, log: filepath.Join(s.Dir, name+".log"), done: make(chan struct{})}
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	defer logf.Close()
	p.cmd = exec.Command(path, args...)
	p.cmd.Dir = s.Dir
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("kubetest: start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// waitReady polls ready until it holds, the process exits or timeout.
func (p *proc) waitReady(timeout time.Duration, ready func() bool) error {
	deadline := time.After(timeout)
	for !ready() {
		select {
		case <-p.done:
			return fmt.Errorf("kubetest: %s exited during start-up: %v\n%s", p.name, p.err, p.tail())
		case <-deadline:
			return fmt.Errorf("kubetest: %s not ready after %s\n%s", p.name, timeout, p.tail())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func (p *proc) logs() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// tail is the end of the log, for error messages.
func (p *proc) tail() string {
	l := p.logs()
	if len(l) > 4000 {
		l = "..." + l[len(l)-4000:]
	}
	return l
}

// stop sends SIGTERM and, after grace, SIGKILL; it reports whether the
// process had to be killed.
func (p *proc) stop(grace time.Duration) bool {
	if p == nil || p.cmd.Process == nil {
		return false
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return false
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return true
	}
}

// Stop stops the API server and etcd and removes their files.
func (s *Server) Stop() error {
	var errs []error
	if s.kapi.stop(30 * time.Second) {
		errs = append(errs, errors.New("kubetest: kube-apiserver did not stop within 30s; killed"))
	}
	if s.etcd.stop(30 * time.Second) {
		errs = append(errs, errors.New("kubetest: etcd did not stop within 30s; killed"))
	}
	if s.client != nil {
		s.client.CloseIdleConnections()
	}
	if s.etcdDataDir != "" {
		errs = append(errs, os.RemoveAll(s.etcdDataDir))
	}
	errs = append(errs, os.RemoveAll(s.Dir))
	return errors.Join(errs...)
}

// Logs returns the API server's log so far (for a failing test).
func (s *Server) Logs() string { return s.kapi.logs() }

// HTTPClient returns a client trusting the API server's certificate (it
// sends no credentials: Do adds the admin's token).
func (s *Server) HTTPClient() *http.Client { return s.client }

// KubeconfigToken returns a kubeconfig authenticating with a bearer token.
func (s *Server) KubeconfigToken(token string) string {
	return s.kubeconfig(fmt.Sprintf("    token: %s\n", token))
}

// KubeconfigCert returns a kubeconfig authenticating with a client
// certificate and key (files).
func (s *Server) KubeconfigCert(certFile, keyFile string) string {
	return s.kubeconfig(fmt.Sprintf("    client-certificate: %s\n    client-key: %s\n", certFile, keyFile))
}

func (s *Server) kubeconfig(user string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: %s
    certificate-authority: %s
contexts:
- name: kubetest
  context:
    cluster: kubetest
    user: kubetest
current-context: kubetest
users:
- name: kubetest
  user:
%s`, s.URL, s.CAFile, user)
}

// ClientCert issues a client certificate for user in groups, signed by
// the API server's client CA, and writes it and its key into dir; it
// returns the two files.
func (s *Server) ClientCert(t testing.TB, dir, user string, groups ...string) (certFile, keyFile string) {
	t.Helper()
	cert, key, err := s.clientCA.issue(pkix.Name{CommonName: user, Organization: groups}, x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, user+".crt"), filepath.Join(dir, user+".key")
	for f, data := range map[string][]byte{certFile: cert, keyFile: key} {
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// issuer is a CA that issues certificates.
type issuer struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

func newIssuer(cn string) (*issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	return &issuer{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// issue returns a certificate (PEM) and its new key (PEM).
func (i *issuer) issue(subject pkix.Name, eku x509.ExtKeyUsage, dns []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("kubetest: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, fmt.Errorf("kubetest: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{eku},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.cert, &key.PublicKey, i.key)
	if err != nil {
		return nil, nil, fmt.Errorf("kubetest: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("kubetest: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// StatusError is a non-2xx answer of the API server: Code is the HTTP
// status, Reason and Message those of its Status object.
type StatusError struct {
	Code    int
	Reason  string
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("kubetest: API server answered %d %s: %s", e.Code, e.Reason, e.Message)
}

// IsNotFound reports whether err is a 404 of the API server.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// Do sends a request as the admin: in (if not nil) as the JSON body, the
// JSON answer decoded into out (if not nil). A non-2xx answer is a
// *StatusError.
func (s *Server) Do(ctx context.Context, method, path string, in, out any) error {
	return s.DoAs(ctx, s.Token, method, path, in, out)
}

// DoAs is Do with another bearer token.
func (s *Server) DoAs(ctx context.Context, token, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("kubetest: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.URL+path, body)
	if err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		ct := "application/json"
		if method == http.MethodPatch {
			ct = "application/merge-patch+json"
		}
		req.Header.Set("Content-Type", ct)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("kubetest: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("kubetest: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var st struct{ Reason, Message string }
		_ = json.Unmarshal(b, &st)
		if st.Message == "" {
			st.Message = string(b)
		}
		return &StatusError{Code: resp.StatusCode, Reason: st.Reason, Message: st.Message}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("kubetest: %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// Create POSTs obj to path as the admin and returns the created object.
func (s *Server) Create(t testing.TB, path string, obj any) Object {
	t.Helper()
	var out Object
	if err := s.Do(context.Background(), http.MethodPost, path, obj, &out); err != nil {
		t.Fatalf("create %s: %v", path, err)
	}
	return out
}

// Delete deletes the object at path as the admin, with a grace period of
// 0: there is no kubelet to confirm a pod's graceful deletion.
func (s *Server) Delete(t testing.TB, path string) {
	t.Helper()
	if err := s.Do(context.Background(), http.MethodDelete, path, Object{"gracePeriodSeconds": 0}, nil); err != nil {
		t.Fatalf("delete %s: %v", path, err)
	}
}

// Object is an API object as JSON, with accessors for the metadata tests
// use.
type Object map[string]any

// Meta is the object's metadata.
func (o Object) Meta() map[string]any {
	m, _ := o["metadata"].(map[string]any)
	return m
}

// Name is metadata.name.
func (o Object) Name() string { s, _ := o.Meta()["name"].(string); return s }

// UID is metadata.uid.
func (o Object) UID() string { s, _ := o.Meta()["uid"].(string); return s }

// Name returns prefix followed by a random suffix: a name unique on the
// shared server, for namespaces and cluster-scoped objects.
func Name(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// Namespace creates a namespace with a unique name for t (left behind
// when t ends: there is no namespace controller to finalize a deletion)
// and returns its name.
func (s *Server) Namespace(t testing.TB) string {
	t.Helper()
	name := Name("t")
	s.Create(t, "/api/v1/namespaces", Object{"metadata": Object{"name": name}})
	return name
}

// ServiceAccount creates a service account and returns it.
func (s *Server) ServiceAccount(t testing.TB, ns, name string) Object {
	t.Helper()
	return s.Create(t, "/api/v1/namespaces/"+ns+"/serviceaccounts", Object{"metadata": Object{"name": name}})
}

// NodeSpec describes a node to create.
type NodeSpec struct {
	Name   string            // Name("node") when empty
	Labels map[string]string // metadata.labels
	// InternalIP is written to status.addresses (optional).
	InternalIP string
}

// Node creates a node (deleted when t ends) and returns it.
func (s *Server) Node(t testing.TB, spec NodeSpec) Object {
	t.Helper()
	if spec.Name == "" {
		spec.Name = Name("node")
	}
	meta := Object{"name": spec.Name}
	if spec.Labels != nil {
		meta["labels"] = spec.Labels
	}
	n := s.Create(t, "/api/v1/nodes", Object{"metadata": meta})
	t.Cleanup(func() { _ = s.Do(context.Background(), http.MethodDelete, "/api/v1/nodes/"+spec.Name, nil, nil) })
	if spec.InternalIP != "" {
		var out Object
		patch := Object{"status": Object{"addresses": []Object{{"type": "InternalIP", "address": spec.InternalIP}}}}
		if err := s.Do(context.Background(), http.MethodPatch, "/api/v1/nodes/"+spec.Name+"/status", patch, &out); err != nil {
			t.Fatal(err)
		}
		n = out
	}
	return n
}

// PodSpec describes a pod to create.
type PodSpec struct {
	Namespace      string
	Name           string // Name("pod") when empty
	ServiceAccount string // required: namespaces have no "default" one here
	NodeName       string // spec.nodeName (no scheduler runs)
	Labels         map[string]string
	// HostIP is written to status.hostIP (as a kubelet would).
	HostIP string
}

// Pod creates a pod (it stays Pending: no kubelet runs) and returns it.
func (s *Server) Pod(t testing.TB, spec PodSpec) Object {
	t.Helper()
	if spec.Name == "" {
		spec.Name = Name("pod")
	}
	meta := Object{"name": spec.Name}
	if spec.Labels != nil {
		meta["labels"] = spec.Labels
	}
	pod := Object{
		"metadata": meta,
		"spec": Object{
			"serviceAccountName":           spec.ServiceAccount,
			"automountServiceAccountToken": false,
			"nodeName":                     spec.NodeName,
			"containers":                   []Object{{"name": "main", "image": "registry.invalid/none:1"}},
		},
	}
	base := "/api/v1/namespaces/" + spec.Namespace + "/pods"
	p := s.Create(t, base, pod)
	if spec.HostIP != "" {
		var out Object
		patch := Object{"status": Object{"hostIP": spec.HostIP, "hostIPs": []Object{{"ip": spec.HostIP}}}}
		if err := s.Do(context.Background(), http.MethodPatch, base+"/"+spec.Name+"/status", patch, &out); err != nil {
			t.Fatal(err)
		}
		p = out
	}
	return p
}

// TokenOptions shape a TokenRequest.
type TokenOptions struct {
	// Audiences of the token; empty is the API server's (Issuer).
	Audiences []string
	// ExpirationSeconds: 0 is one hour; the API server's minimum is 600.
	ExpirationSeconds int64
	// Pod binds the token to a pod (name and UID, as a projected
	// service-account token of a pod's volume is); nil binds it to
	// nothing.
	Pod Object
}

// TokenRequest asks the API server for a token of the service account
// ns/sa (the TokenRequest API, as the kubelet does for projected volumes)
// and returns it.
func (s *Server) TokenRequest(t testing.TB, ns, sa string, o TokenOptions) string {
	t.Helper()
	tok, err := s.RequestToken(context.Background(), ns, sa, o)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// RequestToken is TokenRequest returning its error.
func (s *Server) RequestToken(ctx context.Context, ns, sa string, o TokenOptions) (string, error) {
	spec := Object{}
	if len(o.Audiences) > 0 {
		spec["audiences"] = o.Audiences
	}
	exp := o.ExpirationSeconds
	if exp == 0 {
		exp = 3600
	}
	spec["expirationSeconds"] = exp
	if o.Pod != nil {
		spec["boundObjectRef"] = Object{"kind": "Pod", "apiVersion": "v1", "name": o.Pod.Name(), "uid": o.Pod.UID()}
	}
	var out struct {
		Status struct {
			Token string `json:"token"`
		} `json:"status"`
	}
	path := "/api/v1/namespaces/" + ns + "/serviceaccounts/" + sa + "/token"
	if err := s.Do(ctx, http.MethodPost, path, Object{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}, &out); err != nil {
		return "", err
	}
	if out.Status.Token == "" {
		return "", fmt.Errorf("kubetest: TokenRequest for %s/%s returned no token", ns, sa)
	}
	return out.Status.Token, nil
}

// TokenReview is the status of a TokenReview.
type TokenReview struct {
	Authenticated bool     `json:"authenticated"`
	Audiences     []string `json:"audiences"`
	Error         string   `json:"error"`
	User          struct {
		Username string              `json:"username"`
		UID      string              `json:"uid"`
		Groups   []string            `json:"groups"`
		Extra    map[string][]string `json:"extra"`
	} `json:"user"`
}

// ReviewToken asks the TokenReview API about token, as the admin.
func (s *Server) ReviewToken(ctx context.Context, token string, audiences []string) (*TokenReview, error) {
	spec := Object{"token": token}
	if len(audiences) > 0 {
		spec["audiences"] = audiences
	}
	var out struct {
		Status TokenReview `json:"status"`
	}
	if err := s.Do(ctx, http.MethodPost, "/apis/authentication.k8s.io/v1/tokenreviews",
		Object{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}, &out); err != nil {
		return nil, err
	}
	return &out.Status, nil
}

// Grant creates a ClusterRole with rules and binds it to the service
// account ns/sa (both removed when t ends), and waits until the API
// server's authorizer allows what the rules allow.
func (s *Server) Grant(t testing.TB, ns, sa string, rules ...Object) {
	t.Helper()
	s.grant(t, Object{"kind": "ServiceAccount", "name": sa, "namespace": ns}, "system:serviceaccount:"+ns+":"+sa, rules)
}

// GrantUser is Grant for a user (a client certificate's common name).
func (s *Server) GrantUser(t testing.TB, user string, rules ...Object) {
	t.Helper()
	s.grant(t, Object{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}, user, rules)
}

func (s *Server) grant(t testing.TB, subject Object, user string, rules []Object) {
	t.Helper()
	name := Name("kubetest")
	s.Create(t, "/apis/rbac.authorization.k8s.io/v1/clusterroles", Object{"metadata": Object{"name": name}, "rules": rules})
	s.Create(t, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", Object{
		"metadata": Object{"name": name},
		"roleRef":  Object{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
		"subjects": []Object{subject},
	})
	t.Cleanup(func() {
		ctx := context.Background()
		_ = s.Do(ctx, http.MethodDelete, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/"+name, nil, nil)
		_ = s.Do(ctx, http.MethodDelete, "/apis/rbac.authorization.k8s.io/v1/clusterroles/"+name, nil, nil)
	})
	// The authorizer learns of new bindings through a watch: ask it
	// (SubjectAccessReview) until it allows the first verb of every rule.
	for _, r := range rules {
		groups, _ := r["apiGroups"].([]string)
		resources, _ := r["resources"].([]string)
		verbs, _ := r["verbs"].([]string)
		if len(groups) == 0 || len(resources) == 0 || len(verbs) == 0 {
			continue
		}
		sar := Object{"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": Object{
			"user":               user,
			"resourceAttributes": Object{"group": groups[0], "resource": resources[0], "verb": verbs[0]},
		}}
		if strings.HasPrefix(user, "system:serviceaccount:") {
			sar["spec"].(Object)["groups"] = []string{"system:serviceaccounts", "system:authenticated"}
		}
		err := testutil.Poll(30*time.Second, 20*time.Millisecond, func() (bool, error) {
			var out struct {
				Status struct {
					Allowed bool `json:"allowed"`
				} `json:"status"`
			}
			if err := s.Do(context.Background(), http.MethodPost, "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar, &out); err != nil {
				return false, err
			}
			return out.Status.Allowed, nil
		})
		if err != nil {
			t.Fatalf("kubetest: %s is still not allowed to %s %s: %v", user, verbs[0], resources[0], err)
		}
	}
}

// Rule is an RBAC policy rule.
func Rule(group, resource string, verbs ...string) Object {
	return Object{"apiGroups": []string{group}, "resources": []string{resource}, "verbs": verbs}
}
