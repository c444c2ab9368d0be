// Package testattestor is a challenge/response node attestor for tests,
// with both halves as internal/attest/node/<name> packages have them. It
// exercises what a real attestor with challenges (x509pop, tpm) does over
// agent/v1 AttestAgent, without devices:
//
//	agent   AttestationData{"test_challenge", <node name>} + CSR
//	server  challenge: 32 random bytes
//	agent   HMAC-SHA256(secret, challenge || node name)
//	server  agent ID spiffe://<td>/spire/agent/test_challenge/<node name>,
//	        selector test_challenge:node:<node name>, can re-attest
//
// The server refuses (node.ErrRefused) a wrong answer and a node the test
// denied (Server.Deny: a revoked device certificate, a changed PCR), and
// answers node.ErrInvalid for a malformed name. Import it only from tests.
package testattestor

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Name is the attestation data type (and plugin name).
const Name = "test_challenge"

// AgentID is the agent ID a node attests as.
func AgentID(td spiffeid.TrustDomain, nodeName string) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "spire", "agent", Name, nodeName)
}

func answer(secret []byte, challenge []byte, nodeName string) []byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write(challenge)
	mac.Write([]byte(nodeName))
	return mac.Sum(nil)
}

func validName(n string) error {
	if n == "" || len(n) > 64 {
		return fmt.Errorf("%w: node name must be 1 to 64 bytes", node.ErrInvalid)
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("%w: node name may hold only a-z, 0-9 and '-'", node.ErrInvalid)
		}
	}
	return nil
}

// Server is the server half.
type Server struct {
	td     spiffeid.TrustDomain
	secret []byte

	mu          sync.Mutex
	denied      map[string]bool
	noReattest  bool
	attestCalls atomic.Int64
	successes   atomic.Int64
}

// NewServer returns the server half for trust domain td and the shared
// secret.
func NewServer(td spiffeid.TrustDomain, secret []byte) *Server {
	return &Server{td: td, secret: secret, denied: map[string]bool{}}
}

// Deny makes the server refuse the node's attestations from now on;
// Allow undoes it.
func (s *Server) Deny(nodeName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.denied[nodeName] = true
}

// Allow lets a denied node attest again.
func (s *Server) Allow(nodeName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.denied, nodeName)
}

// SetCanReattest sets the result's CanReattest (true by default).
func (s *Server) SetCanReattest(v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noReattest = !v
}

// Attests is how many attestations reached the attestor; Successes how
// many it accepted.
func (s *Server) Attests() int64   { return s.attestCalls.Load() }
func (s *Server) Successes() int64 { return s.successes.Load() }

// Attest is the server half of the exchange.
func (s *Server) Attest(ctx context.Context, payload []byte, challenge node.ChallengeFunc) (*node.Result, error) {
	s.attestCalls.Add(1)
	name := string(payload)
	if err := validName(name); err != nil {
		return nil, err
	}
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	resp, err := challenge(ctx, nonce)
	if err != nil {
		return nil, err
	}
	if !hmac.Equal(resp, answer(s.secret, nonce, name)) {
		return nil, fmt.Errorf("%w: wrong answer to the challenge", node.ErrRefused)
	}
	s.mu.Lock()
	denied, noReattest := s.denied[name], s.noReattest
	s.mu.Unlock()
	if denied {
		return nil, fmt.Errorf("%w: node %q is denied", node.ErrRefused, name)
	}
	s.successes.Add(1)
	return &node.Result{
		AgentID:     AgentID(s.td, name),
		Selectors:   []selector.Selector{{Type: Name, Value: "node:" + name}},
		CanReattest: !noReattest,
	}, nil
}

// Agent is the agent half.
type Agent struct {
	Node   string
	Secret []byte
	// Fail makes Begin fail (the attestor failing locally, e.g. its
	// device missing).
	Fail atomic.Bool

	begun atomic.Int64
}

// Type is the attestation data type.
func (*Agent) Type() string { return Name }

// Begins is how many sessions were started.
func (a *Agent) Begins() int64 { return a.begun.Load() }

// Begin starts a session.
func (a *Agent) Begin(context.Context) (node.Session, error) {
	a.begun.Add(1)
	if a.Fail.Load() {
		return nil, errors.New("test attestor: device unavailable")
	}
	return &session{a: a}, nil
}

type session struct {
	a        *Agent
	answered int
	closed   bool
}

func (s *session) Payload() []byte { return []byte(s.a.Node) }

func (s *session) Respond(_ context.Context, challenge []byte) ([]byte, error) {
	if s.closed {
		return nil, errors.New("test attestor: session closed")
	}
	s.answered++
	return answer(s.a.Secret, challenge, s.a.Node), nil
}

func (s *session) Close() error {
	s.closed = true
	return nil
}
