package k8s

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// The kubelet's v1.PodList, only the fields the selectors use.
type podListJSON struct {
	Items []pod `json:"items"`
}

type pod struct {
	Metadata struct {
		Name            string            `json:"name"`
		Namespace       string            `json:"namespace"`
		UID             string            `json:"uid"`
		Labels          map[string]string `json:"labels"`
		OwnerReferences []struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"ownerReferences"`
	} `json:"metadata"`
	Spec struct {
		ServiceAccountName string `json:"serviceAccountName"`
		NodeName           string `json:"nodeName"`
	} `json:"spec"`
	Status struct {
		ContainerStatuses     []containerStatus `json:"containerStatuses"`
		InitContainerStatuses []containerStatus `json:"initContainerStatuses"`
	} `json:"status"`
}

type containerStatus struct {
	Name    string `json:"name"`
	Image   string `json:"image"`
	ImageID string `json:"imageID"`
	// ContainerID is "<runtime>://<id>" ("containerd://4f...", "cri-o://…");
	// "" until the runtime has created the container.
	ContainerID string `json:"containerID"`
}

// container returns the status of the pod's (or init) container id.
func (p *pod) container(id string) *containerStatus {
	for _, list := range [][]containerStatus{p.Status.ContainerStatuses, p.Status.InitContainerStatuses} {
		for i := range list {
			if _, cid, ok := strings.Cut(list[i].ContainerID, "://"); ok && cid == id {
				return &list[i]
			}
		}
	}
	return nil
}

// maxPodList bounds a GET /pods answer: 110 pods (the kubelet's default
// maximum) of ~20 KiB each are ~2 MiB.
const maxPodList = 64 << 20

// kubelet asks the kubelet for its pods.
type kubelet struct {
	cfg Config
	url string

	mu       sync.Mutex
	loadedAt time.Time
	material []byte // the CA and key pair the transport was built from
	client   *http.Client
	token    string
}

func newKubelet(cfg Config) (*kubelet, error) {
	k := &kubelet{cfg: cfg}
	if cfg.ReadOnly {
		// As SPIRE: the read-only port is the node's own, on loopback.
		k.url = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Port)) + "/pods"
		k.client = &http.Client{Transport: &http.Transport{MaxIdleConns: 2, IdleConnTimeout: time.Minute}}
		return k, nil
	}
	host := cfg.NodeName
	if host == "" {
		host = "127.0.0.1"
	}
	k.url = "https://" + net.JoinHostPort(host, strconv.Itoa(cfg.Port)) + "/pods"
	if err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

// load (re-)reads the credentials; the transport is rebuilt only when the
// CA or the key pair changed. Called with k.mu held, or before k is shared.
func (k *kubelet) load() error {
	var material bytes.Buffer
	var pool *x509.CertPool
	if !k.cfg.SkipKubeletVerification {
		ca, err := os.ReadFile(k.cfg.KubeletCAPath)
		if err != nil {
			return fmt.Errorf("kubelet CA (kubelet_ca_path): %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return fmt.Errorf("kubelet CA (kubelet_ca_path) %s: no PEM certificate", k.cfg.KubeletCAPath)
		}
		material.Write(ca)
	}
	var token string
	var pair *tls.Certificate
	switch {
	case k.cfg.Anonymous:
	case k.cfg.CertificatePath != "":
		certPEM, err := os.ReadFile(k.cfg.CertificatePath)
		if err != nil {
			return fmt.Errorf("kubelet client certificate (certificate_path): %w", err)
		}
		keyPEM, err := os.ReadFile(k.cfg.PrivateKeyPath)
		if err != nil {
			return fmt.Errorf("kubelet client key (private_key_path): %w", err)
		}
		p, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return fmt.Errorf("kubelet client key pair (certificate_path, private_key_path): %w", err)
		}
		pair = &p
		material.Write(certPEM)
		material.Write(keyPEM)
	default:
		b, err := os.ReadFile(k.cfg.TokenPath)
		if err != nil {
			return fmt.Errorf("kubelet token (token_path): %w", err)
		}
		if token = strings.TrimSpace(string(b)); token == "" {
			return fmt.Errorf("kubelet token (token_path) %s is empty", k.cfg.TokenPath)
		}
	}
	k.token = token
	k.loadedAt = time.Now()
	if k.client != nil && bytes.Equal(material.Bytes(), k.material) {
		return nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case k.cfg.SkipKubeletVerification:
		tc.InsecureSkipVerify = true //nolint:gosec // skip_kubelet_verification
	case k.cfg.NodeName == "":
		// 127.0.0.1 is not among a kubelet certificate's names: check the
		// chain only, as SPIRE does.
		tc.InsecureSkipVerify = true //nolint:gosec // verified below
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the kubelet presented no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter})
			return err
		}
	default:
		tc.RootCAs = pool
	}
	if pair != nil {
		tc.Certificates = []tls.Certificate{*pair}
	}
	if k.client != nil {
		k.client.CloseIdleConnections()
	}
	k.client = &http.Client{Transport: &http.Transport{TLSClientConfig: tc, MaxIdleConns: 2, IdleConnTimeout: time.Minute,
		TLSHandshakeTimeout: k.cfg.RequestTimeout}}
	k.material = material.Bytes()
	return nil
}

// podList is GET /pods, decoded.
func (k *kubelet) podList(ctx context.Context) ([]pod, error) {
	k.mu.Lock()
	if !k.cfg.ReadOnly && time.Since(k.loadedAt) >= k.cfg.ReloadInterval {
		if err := k.load(); err != nil {
			k.mu.Unlock()
			return nil, err
		}
	}
	client, token := k.client, k.token
	k.mu.Unlock()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, fmt.Errorf("kubelet: %w", err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("kubelet GET %s: %w", k.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("kubelet GET %s: %s: %s", k.url, resp.Status, clip.Quote(strings.TrimSpace(string(body))))
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxPodList+1))
	if err != nil {
		return nil, fmt.Errorf("kubelet GET %s: reading the answer: %w", k.url, err)
	}
	if len(data) > maxPodList {
		return nil, fmt.Errorf("kubelet GET %s: the pod list is larger than %d bytes", k.url, maxPodList)
	}
	var list podListJSON
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("kubelet GET %s: the answer is not a PodList: %w", k.url, err)
	}
	return list.Items, nil
}

// podList is one answer of the kubelet.
type podList struct {
	version uint64
	started time.Time
	pods    []pod
	byUID   map[string]*pod
}

// newPodList indexes pods by UID (a pod without one is only found by
// searching all).
func newPodList(version uint64, started time.Time, pods []pod) *podList {
	list := &podList{version: version, started: started, pods: pods, byUID: make(map[string]*pod, len(pods))}
	for i := range pods {
		if uid := pods[i].Metadata.UID; uid != "" {
			list.byUID[uid] = &list.pods[i]
		}
	}
	return list
}

// call is one GET /pods in flight.
type call struct {
	done chan struct{}
	list *podList
	err  error
}

// lister shares the kubelet's answers between callers: one request at a
// time, at most one per interval, and a list fetched less than interval
// ago is reused by a caller that has not seen it.
type lister struct {
	fetch    func(context.Context) ([]pod, error)
	interval time.Duration
	timeout  time.Duration
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	mu        sync.Mutex
	cur       *podList
	lastStart time.Time
	inflight  *call
}

func newLister(fetch func(context.Context) ([]pod, error), interval, timeout time.Duration) *lister {
	ctx, cancel := context.WithCancel(context.Background())
	return &lister{fetch: fetch, interval: interval, timeout: timeout, ctx: ctx, cancel: cancel}
}

func (l *lister) close() {
	l.cancel()
	l.wg.Wait()
}

// next returns a pod list newer than version after (0: any), waiting for
// the kubelet when the freshest one is not.
func (l *lister) next(ctx context.Context, after uint64) (*podList, error) {
	for {
		l.mu.Lock()
		if c := l.cur; c != nil && c.version > after && time.Since(c.started) < l.interval {
			l.mu.Unlock()
			return c, nil
		}
		c := l.inflight
		if c == nil {
			if wait := l.interval - time.Since(l.lastStart); !l.lastStart.IsZero() && wait > 0 {
				l.mu.Unlock()
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return nil, ctx.Err()
				case <-t.C:
				}
				continue
			}
			if err := l.ctx.Err(); err != nil {
				l.mu.Unlock()
				return nil, errors.New("k8s attestor closed")
			}
			c = &call{done: make(chan struct{})}
			l.inflight = c
			l.lastStart = time.Now()
			l.wg.Add(1)
			go l.run(c, l.lastStart)
		}
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.done:
			return c.list, c.err
		}
	}
}

// run makes one request and hands its answer to every waiter.
func (l *lister) run(c *call, started time.Time) {
	defer l.wg.Done()
	ctx, cancel := context.WithTimeout(l.ctx, l.timeout)
	pods, err := l.fetch(ctx)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("no answer from the kubelet within %s: %w", l.timeout, err)
	}
	cancel()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inflight = nil
	if err != nil {
		c.err = err
	} else {
		var v uint64 = 1
		if l.cur != nil {
			v = l.cur.version + 1
		}
		list := newPodList(v, started, pods)
		l.cur, c.list = list, list
	}
	close(c.done)
}
