package k8spsat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/clip"
)

// AgentConfig is the plugin_data of the agent's NodeAttestor "k8s_psat",
// with SPIRE's keys.
type AgentConfig struct {
	// Cluster (cluster, required): the cluster's name in the server's
	// configuration.
	Cluster string
	// TokenPath (token_path): the projected token's file; ""
	// is DefaultTokenPath. It is read at every attestation.
	TokenPath string
}

// Validate checks the configuration without reading any file.
func (c AgentConfig) Validate() error {
	if c.Cluster == "" {
		return errors.New("cluster is required")
	}
	if err := spiffeid.ValidatePathSegment(c.Cluster); err != nil {
		return fmt.Errorf("cluster %s is not a valid SPIFFE ID path segment (letters, digits, '.', '-', '_'), so no server can configure it: %w", clip.Quote(c.Cluster), err)
	}
	return nil
}

func (c AgentConfig) tokenPath() string {
	if c.TokenPath == "" {
		return DefaultTokenPath
	}
	return c.TokenPath
}

// Agent is the agent half: it sends the projected token.
type Agent struct {
	cfg AgentConfig
}

// NewAgent returns the agent half. It reads no file: Begin does, every
// time, so the token the kubelet rotated is the one sent.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("k8s_psat: %w", err)
	}
	return &Agent{cfg: cfg}, nil
}

// Type returns the attestation data type (the plugin's name), "k8s_psat".
func (a *Agent) Type() string { return Type }

// ReadToken reads the token file: its contents without surrounding
// whitespace, which must not be empty.
func ReadToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("k8s_psat: token: %w", err)
	}
	defer f.Close()
	var b bytes.Buffer
	n, err := b.ReadFrom(io.LimitReader(f, MaxTokenSize+1))
	if err != nil {
		return "", fmt.Errorf("k8s_psat: token: read %s: %w", path, err)
	}
	if n > MaxTokenSize {
		return "", fmt.Errorf("k8s_psat: token: %s is larger than %d bytes", path, MaxTokenSize)
	}
	tok := string(bytes.TrimSpace(b.Bytes()))
	if tok == "" {
		return "", fmt.Errorf("k8s_psat: token: %s is empty", path)
	}
	return tok, nil
}

// Begin reads the token and starts an attestation.
func (a *Agent) Begin(context.Context) (node.Session, error) {
	tok, err := ReadToken(a.cfg.tokenPath())
	if err != nil {
		return nil, err
	}
	payload, err := json.Marshal(attestationData{Cluster: a.cfg.Cluster, Token: tok})
	if err != nil {
		return nil, fmt.Errorf("k8s_psat: encode attestation data: %w", err)
	}
	return session(payload), nil
}

// session is one attestation: the payload, no challenge.
type session []byte

func (s session) Payload() []byte { return s }

func (s session) Close() error { return nil }

func (s session) Respond(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("k8s_psat: the server sent a challenge; k8s_psat has none")
}
