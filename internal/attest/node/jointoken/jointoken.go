// Package jointoken implements the server side of the join_token node
// attestor: an admin creates a single-use, expiring secret; an agent presents
// it once as attestation data and receives the agent ID
// spiffe://<trust-domain>/spire/agent/join_token/<token>.
//
// Only the SHA-256 of a token is ever stored. The plaintext does appear in
// the resulting agent ID (and in the parent ID of an alias entry created with
// the token), exactly as in SPIRE; that is harmless because a token can be
// used only once.
//
// Checking a token (Check) is cheap and changes nothing: a hash and one
// indexed read. The token is consumed only by the transaction that records
// the attested node (datastore NodeStore.AttestNode), so a request that
// fails after the check (a refused CSR, a signing or storage failure)
// leaves the token usable.
package jointoken

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// Type is the attestation data type agents send ("join_token").
const Type = "join_token"

// MaxTokenLen bounds the length of a token presented by a client or chosen
// by an admin.
const MaxTokenLen = 256

// Errors returned by Check and Attest. Both match node.ErrInvalid (the API
// answers InvalidArgument, as SPIRE does for join tokens).
var (
	// ErrUnknownToken: no such token, or it was already consumed.
	ErrUnknownToken error = &tokenError{"join token does not exist or has already been used"}
	// ErrExpiredToken: the token existed but had expired (it is deleted).
	ErrExpiredToken error = &tokenError{"join token expired"}
)

// tokenError is a refused token: its text is SPIRE's, and it matches
// node.ErrInvalid.
type tokenError struct{ msg string }

func (e *tokenError) Error() string { return e.msg }
func (e *tokenError) Unwrap() error { return node.ErrInvalid }

// TokenStore is the subset of datastore.TokenStore the attestor needs.
type TokenStore interface {
	GetJoinToken(ctx context.Context, hash [32]byte) (*datastore.JoinToken, error)
	ConsumeJoinToken(ctx context.Context, hash [32]byte) (*datastore.JoinToken, error)
}

// Config configures an Attestor.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Tokens      TokenStore
	Clock       clock.Clock // nil = real clock
}

// Attestor attests agents presenting join tokens.
type Attestor struct {
	td     spiffeid.TrustDomain
	tokens TokenStore
	clk    clock.Clock
}

// New returns an Attestor.
func New(cfg Config) (*Attestor, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("jointoken: trust domain is required")
	}
	if cfg.Tokens == nil {
		return nil, errors.New("jointoken: token store is required")
	}
	return &Attestor{td: cfg.TrustDomain, tokens: cfg.Tokens, clk: clock.OrReal(cfg.Clock)}, nil
}

// Credential is a join token Check found valid.
type Credential struct {
	AgentID spiffeid.ID
	// Hash identifies the token to consume (datastore.NodeAttestation's
	// JoinToken). Never log it.
	Hash [32]byte
	// ValidAt is the time (unix seconds) the token was found unexpired:
	// the consuming transaction requires it to be still unexpired then.
	ValidAt int64
}

// Check verifies the token in payload without consuming it and returns the
// agent ID it attests (join-token attestation yields no node selectors).
// An expired token is deleted. Errors: ErrUnknownToken, ErrExpiredToken, or
// a wrapped store failure.
func (a *Attestor) Check(ctx context.Context, payload []byte) (*Credential, error) {
	token := string(payload)
	// A token that cannot form a valid agent ID can never have been issued
	// by CreateJoinToken; treat it as unknown without touching the store.
	agentID, err := AgentID(a.td, token)
	if err != nil {
		return nil, ErrUnknownToken
	}
	hash := Hash(token)
	jt, err := a.tokens.GetJoinToken(ctx, hash)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, ErrUnknownToken
	case err != nil:
		return nil, fmt.Errorf("look up join token: %w", err)
	case jt == nil || subtle.ConstantTimeCompare(jt.Hash[:], hash[:]) != 1:
		return nil, ErrUnknownToken
	}
	now := a.clk.Now().Unix()
	if jt.ExpiresAt <= now {
		// Single use even when expired: it can never attest anyone.
		if _, err := a.tokens.ConsumeJoinToken(ctx, hash); err != nil && !errors.Is(err, datastore.ErrNotFound) {
			return nil, fmt.Errorf("delete expired join token: %w", err)
		}
		return nil, ErrExpiredToken
	}
	return &Credential{AgentID: agentID, Hash: hash, ValidAt: now}, nil
}

// Attest is the server half of join_token node attestation: it checks the
// token in payload (Check) and returns the agent ID it attests, with no
// selectors; a join-token agent cannot re-attest. It consumes nothing: the
// caller consumes the token, by JoinTokenHash(payload), in the transaction
// that records the node (datastore.NodeAttestation.JoinToken), as the
// server's agent API does, so a request that fails later leaves the token
// usable. join_token has no challenge.
func (a *Attestor) Attest(ctx context.Context, payload []byte, _ node.ChallengeFunc) (*node.Result, error) {
	cred, err := a.Check(ctx, payload)
	if err != nil {
		return nil, err
	}
	return &node.Result{AgentID: cred.AgentID}, nil
}

// JoinTokenHash identifies the token of an attestation payload in the store:
// the transaction that records the node consumes it.
func (a *Attestor) JoinTokenHash(payload []byte) [32]byte { return Hash(string(payload)) }

// AgentID returns spiffe://<td>/spire/agent/join_token/<token>. It fails for
// tokens that are empty, too long or not a valid SPIFFE ID path segment.
func AgentID(td spiffeid.TrustDomain, token string) (spiffeid.ID, error) {
	if err := ValidateToken(token); err != nil {
		return spiffeid.ID{}, err
	}
	id, err := spiffeid.FromSegments(td, "spire", "agent", Type, token)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("join token is not a valid SPIFFE ID path segment: %w", err)
	}
	return id, nil
}

// ValidateToken checks a token's length and that it can be a path segment
// of a SPIFFE ID (letters, digits, '.', '-', '_'; not "." or "..").
func ValidateToken(token string) error {
	switch {
	case token == "":
		return errors.New("join token is empty")
	case len(token) > MaxTokenLen:
		return fmt.Errorf("join token is longer than %d bytes", MaxTokenLen)
	case token == "." || token == "..":
		return errors.New("join token must not be a dot segment")
	}
	for i := 0; i < len(token); i++ {
		c := token[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_'
		if !ok {
			return errors.New("join token may contain only letters, digits, '.', '-' and '_'")
		}
	}
	return nil
}

// Hash returns the SHA-256 of the token, the only form that is stored.
func Hash(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// Generate returns a new random token: 128 bits from crypto/rand, formatted
// like a UUID (8-4-4-4-12 lowercase hex) as SPIRE's tokens are.
func Generate() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate join token: %w", err)
	}
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32], nil
}
