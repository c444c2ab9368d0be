package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// PersistedTrustDomain returns the trust domain of the cache persisted in
// dir; "" when there is none, or when the file does not parse (Load
// reports that). It only reads: the agent checks it before anything in
// its data_dir is written.
func PersistedTrustDomain(dir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(dir, FileName))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", FileName, err)
	}
	var st struct {
		TrustDomain string `json:"trust_domain"`
	}
	if json.Unmarshal(data, &st) != nil {
		return "", nil
	}
	return st.TrustDomain, nil
}
