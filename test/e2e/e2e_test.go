// Package e2e runs real sigil-server and sigil-agent processes from
// configuration files and talks to them the way workloads and operators
// do: go-spiffe over the Workload API socket, spire-api-sdk over the
// admin socket.
package e2e

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// deadline is a generous bound for things that normally take
// milliseconds; tests never assert on timing.
const deadline = 20 * time.Second

var uidSelector = "unix:uid:" + strconv.Itoa(os.Getuid())

// stack is a server and one attested agent whose workloads are this test
// process.
type stack struct {
	srv     *testutil.Server
	agent   *testutil.Agent
	agentID spiffeid.ID
}

func newStack(t *testing.T) *stack {
	t.Helper()
	srv := testutil.StartServer(t, testutil.ServerConfig{})
	cfg := testutil.AgentFor(t, srv, "/agent/edge-1", "")
	a := testutil.StartAgent(t, cfg)
	return &stack{srv: srv, agent: a, agentID: srv.ID("/agent/edge-1")}
}

func (s *stack) register(t *testing.T, path string, selectors ...string) spiffeid.ID {
	t.Helper()
	id := s.srv.ID(path)
	s.srv.Admin(t).CreateEntry(t, id, s.agentID, selectors...)
	return id
}

// TestMTLSBetweenWorkloads: two identities served by the agent secure an
// HTTP exchange with go-spiffe's mTLS configs, each side authorizing the
// other's exact SPIFFE ID; a client expecting another ID is refused.
func TestMTLSBetweenWorkloads(t *testing.T) {
	s := newStack(t)
	webID := s.register(t, "/web", uidSelector)
	dbID := s.register(t, "/db", uidSelector)

	// Both entries match this process's uid, so each source picks its own
	// identity among the SVIDs the agent serves.
	testutil.RequireSVID(t, s.agent.SocketAddr(), webID, deadline)
	testutil.RequireSVID(t, s.agent.SocketAddr(), dbID, deadline)
	dbSrc := testutil.NewX509Source(t, s.agent.SocketAddr(), testutil.PickID(dbID))
	webSrc := testutil.NewX509Source(t, s.agent.SocketAddr(), testutil.PickID(webID))

	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(dbSrc, dbSrc, tlsconfig.AuthorizeID(webID)))
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, err := spiffeIDOf(r.TLS)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, "hello "+peer.String())
	})}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	url := "https://" + ln.Addr().String() + "/"

	client := &http.Client{Timeout: deadline, Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(webSrc, webSrc, tlsconfig.AuthorizeID(dbID))}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("mTLS request web -> db: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "hello " + webID.String(); string(body) != want {
		t.Fatalf("db answered %q, want %q", body, want)
	}

	// A client that expects a different server identity must refuse db.
	wrong := &http.Client{Timeout: deadline, Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(webSrc, webSrc, tlsconfig.AuthorizeID(s.srv.ID("/not-db")))}}
	if resp, err := wrong.Get(url); err == nil {
		resp.Body.Close()
		t.Fatal("client authorizing /not-db accepted the db server")
	}
	// And db refuses a client that is not web (db presenting its own SVID).
	notWeb := &http.Client{Timeout: deadline, Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(dbSrc, dbSrc, tlsconfig.AuthorizeID(dbID))}}
	if resp, err := notWeb.Get(url); err == nil {
		resp.Body.Close()
		t.Fatal("db server accepted a client presenting the db identity")
	}
}

func spiffeIDOf(cs *tls.ConnectionState) (spiffeid.ID, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, net.ErrClosed
	}
	return spiffeid.FromURI(cs.PeerCertificates[0].URIs[0])
}

// TestEntryCreatedWhileRunning: an entry registered while server, agent
// and workload all run reaches the workload's already open Workload API
// stream without restarting anything.
func TestEntryCreatedWhileRunning(t *testing.T) {
	s := newStack(t)
	first := s.register(t, "/first", uidSelector)
	updates := testutil.WatchIDs(t, s.agent.SocketAddr())
	testutil.WaitForID(t, updates, first, deadline)

	second := s.register(t, "/second", uidSelector)
	testutil.WaitForID(t, updates, second, deadline)
}
