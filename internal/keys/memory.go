package keys

import (
	"context"
	"crypto"
	"fmt"
	"sync"
)

// Memory keeps keys in process memory only: a restart loses them.
type Memory struct {
	mu   sync.RWMutex
	keys map[string]crypto.Signer
}

var _ Manager = (*Memory)(nil)

// NewMemory returns an empty in-memory key manager.
func NewMemory() *Memory { return &Memory{keys: make(map[string]crypto.Signer)} }

// GenerateKey creates a key of type t under id, replacing any previous one.
func (m *Memory) GenerateKey(_ context.Context, id string, t Type) (crypto.Signer, error) {
	if id == "" {
		return nil, fmt.Errorf("generate key: empty key ID")
	}
	k, err := Generate(t)
	if err != nil {
		return nil, fmt.Errorf("generate key %q: %w", id, err)
	}
	m.mu.Lock()
	m.keys[id] = k
	m.mu.Unlock()
	return k, nil
}

// GetKey returns the key stored under id, or an error wrapping ErrNotFound.
func (m *Memory) GetKey(_ context.Context, id string) (crypto.Signer, error) {
	m.mu.RLock()
	k, ok := m.keys[id]
	m.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("key %q: %w", id, ErrNotFound)
	}
	return k, nil
}

// DeleteKey forgets the key stored under id; an unknown ID is not an error.
func (m *Memory) DeleteKey(_ context.Context, id string) error {
	m.mu.Lock()
	delete(m.keys, id)
	m.mu.Unlock()
	return nil
}
