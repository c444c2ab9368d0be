// Package keys holds private-key managers: memory (nothing persisted) and
// disk (one 0600 PEM file per key). The CA and the agent take a Manager.
package keys

import (
	"context"
	"crypto"
	"errors"
	"fmt"
)

// ErrNotFound is returned by GetKey for an unknown key ID.
var ErrNotFound = errors.New("key not found")

// ErrOtherDevice is wrapped by GetKey of a manager whose keys are bound to
// a device's hardware (KeyManager "tpm") when the stored key belongs to
// another device: the key files were copied from elsewhere.
var ErrOtherDevice = errors.New("the key is bound to another device")

// Type names a key algorithm, using SPIRE's ca_key_type spellings.
type Type string

const (
	ECP256  Type = "ec-p256"
	ECP384  Type = "ec-p384"
	RSA2048 Type = "rsa-2048"
	RSA4096 Type = "rsa-4096"
)

// ParseType validates a configured key type; "" means ec-p256.
func ParseType(s string) (Type, error) {
	switch Type(s) {
	case "":
		return ECP256, nil
	case ECP256, ECP384, RSA2048, RSA4096:
		return Type(s), nil
	}
	return "", fmt.Errorf("unsupported key type %q (want ec-p256, ec-p384, rsa-2048 or rsa-4096)", s)
}

// Manager generates and keeps private keys under stable IDs. GenerateKey
// replaces any key with the same ID.
type Manager interface {
	GenerateKey(ctx context.Context, id string, t Type) (crypto.Signer, error)
	GetKey(ctx context.Context, id string) (crypto.Signer, error)
}
