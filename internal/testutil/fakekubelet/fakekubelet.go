// Package fakekubelet is a kubelet for tests: GET /pods on an HTTPS port
// (the secure port: a bearer token or a client certificate, its serving
// certificate issued by a test CA) or on a plain-HTTP read-only port,
// answering with the real wire format, a v1.PodList encoded from
// k8s.io/api's types as the kubelet encodes it. There is no kubelet on the
// test machines; everything else of Kubernetes in tests is the real API
// server (internal/testutil/kubetest).
//
// Import it only from tests (it links k8s.io/api, which the agent does
// not).
package fakekubelet

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"

	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// Options configure a kubelet.
type Options struct {
	// ReadOnly serves plain HTTP with no authentication (the read-only
	// port).
	ReadOnly bool
	// Token is the bearer token the secure port accepts ("" accepts none).
	Token string
	// Authenticate, when set, decides on bearer tokens instead of Token,
	// as the kubelet's webhook authentication asks the API server's
	// TokenReview.
	Authenticate func(token string) bool
	// ClientCA, when set, is the CA of the client certificates the secure
	// port accepts.
	ClientCA *x509.Certificate
	// Anonymous lets requests without credentials through (the kubelet's
	// --anonymous-auth with an authorizer allowing system:anonymous).
	Anonymous bool
	// DNSName is put in the serving certificate beside 127.0.0.1
	// ("localhost" when empty).
	DNSName string
}

// Kubelet is a running fake kubelet.
type Kubelet struct {
	// URL is the base URL (https://127.0.0.1:<port>); Port its port.
	URL  string
	Port int
	// CA is the CA of the serving certificate; CAPath holds it in PEM.
	CA     *testca.CA
	CAPath string

	opts Options
	mu   sync.Mutex
	pods []corev1.Pod
	hook func(n int, pods []corev1.Pod) []corev1.Pod
	n    int
	fail int
	auth []string // what each request authenticated with: "token", "cert", "anonymous", "refused"
}

// Start serves a kubelet on a free loopback port until the test ends.
func Start(t testing.TB, opts Options) *Kubelet {
	t.Helper()
	k := &Kubelet{opts: opts}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(k.serve))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what some tests expect
	if opts.ReadOnly {
		srv.Start()
	} else {
		k.CA = testca.New(t)
		name := opts.DNSName
		if name == "" {
			name = "localhost"
		}
		cert, key := k.CA.Leaf(t, testca.Subject(name), testca.DNSNames(name),
			testca.ExtKeyUsage(x509.ExtKeyUsageServerAuth),
			testca.Template(func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)} }))
		tc := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}},
			MinVersion: tls.VersionTLS12}
		if opts.ClientCA != nil {
			pool := x509.NewCertPool()
			pool.AddCert(opts.ClientCA)
			tc.ClientCAs = pool
			tc.ClientAuth = tls.VerifyClientCertIfGiven
		}
		srv.TLS = tc
		srv.StartTLS()
		k.CAPath = filepath.Join(t.TempDir(), "kubelet-ca.crt")
		if err := os.WriteFile(k.CAPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.CA.Cert.Raw}), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(srv.Close)
	k.URL = srv.URL
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	k.Port, _ = strconv.Atoi(port)
	return k
}

// SetPods replaces the pods the kubelet lists.
func (k *Kubelet) SetPods(pods ...corev1.Pod) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.pods = append([]corev1.Pod(nil), pods...)
}

// OnRequest sets a hook run for every GET /pods (n counts them from 1)
// with the pods about to be listed; what it returns is listed and kept
// (e.g. a container status appearing at the third request).
func (k *Kubelet) OnRequest(hook func(n int, pods []corev1.Pod) []corev1.Pod) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.hook = hook
}

// SetToken changes the bearer token the secure port accepts (a rotated
// service-account token).
func (k *Kubelet) SetToken(token string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.opts.Token = token
}

// FailNext answers the next n requests with 500.
func (k *Kubelet) FailNext(n int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fail = n
}

// Requests is how many GET /pods were answered (or refused).
func (k *Kubelet) Requests() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.n
}

// Auth is how each request authenticated: "token", "cert", "anonymous",
// or "refused" (401).
func (k *Kubelet) Auth() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.auth...)
}

func (k *Kubelet) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || r.URL.Path != "/pods" {
		http.NotFound(w, r)
		return
	}
	how := k.authenticate(r)
	k.mu.Lock()
	k.n++
	k.auth = append(k.auth, how)
	if how == "refused" {
		k.mu.Unlock()
		// The kubelet's authentication filter answers 401 "Unauthorized".
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	if k.fail > 0 {
		k.fail--
		k.mu.Unlock()
		http.Error(w, "Internal Server Error", http.StatusInternalServerError)
		return
	}
	if k.hook != nil {
		k.pods = k.hook(k.n, k.pods)
	}
	list := corev1.PodList{
		TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
		Items:    append([]corev1.Pod(nil), k.pods...),
	}
	k.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&list)
}

// authenticate is the kubelet's authentication of a secure-port request.
func (k *Kubelet) authenticate(r *http.Request) string {
	k.mu.Lock()
	opts := k.opts
	k.mu.Unlock()
	if opts.ReadOnly {
		return "anonymous"
	}
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		switch {
		case ok && opts.Authenticate != nil && opts.Authenticate(tok):
			return "token"
		case ok && opts.Authenticate == nil && opts.Token != "" && tok == opts.Token:
			return "token"
		}
		return "refused"
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && opts.ClientCA != nil {
		return "cert"
	}
	if opts.Anonymous {
		return "anonymous"
	}
	return "refused"
}

// Pod is a running pod as the kubelet lists it: its containers' statuses
// carry "containerd://<id>" IDs, images and image IDs.
func Pod(namespace, name, uid, node, serviceAccount string, containers ...corev1.ContainerStatus) corev1.Pod {
	p := corev1.Pod{
		TypeMeta:   metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: k8stypes.UID(uid)},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: serviceAccount},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: containers},
	}
	for _, c := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c.Name, Image: c.Image})
	}
	return p
}

// Running is the status of a running container.
func Running(name, image, imageID, containerID string) corev1.ContainerStatus {
	return corev1.ContainerStatus{
		Name: name, Image: image, ImageID: imageID, ContainerID: "containerd://" + containerID,
		Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
	}
}
