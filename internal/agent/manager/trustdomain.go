package manager

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// StateFile is the name, inside DataDir, of the agent's persisted SVID.
const StateFile = stateFile

// PersistedTrustDomain returns the trust domain the agent SVID persisted in
// dir belongs to; "" when there is none, or when the file does not parse
// (New ignores such a file). It only reads: the agent checks it before
// anything in its data_dir is written.
func PersistedTrustDomain(dir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", stateFile, err)
	}
	var p persistedState
	if json.Unmarshal(data, &p) != nil {
		return "", nil
	}
	return p.TrustDomain, nil
}
