package server

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// KeyManager "disk" and "memory" (internal/keys). Their plugin_data is
// parsed here rather than in keys because config imports keys.
func init() {
	registerKeyManager("disk", parseDiskKeyManager, func(_ context.Context, c diskKeyManager, _ KeyManagerDeps) (keys.Manager, error) {
		return keys.NewDisk(c.KeysPath)
	})
	registerKeyManager("memory", parseMemoryKeyManager, func(context.Context, struct{}, KeyManagerDeps) (keys.Manager, error) {
		return keys.NewMemory(), nil
	})
}

// diskKeyManager is KeyManager "disk"'s plugin_data.
type diskKeyManager struct {
	// KeysPath is keys_path, as given: in SPIRE it names a file, in Sigil
	// the directory of the key files (relative paths are relative to the
	// working directory).
	KeysPath string
}

func parseDiskKeyManager(d *config.PluginData) (diskKeyManager, error) {
	var c diskKeyManager
	d.String("keys_path", &c.KeysPath)
	if c.KeysPath == "" {
		d.Errorf("keys_path", "keys_path must be configured")
	} else if err := keys.CheckDir(c.KeysPath); err != nil {
		// Also what a SPIRE configuration whose keys_path names its
		// JSON file, kept, gets.
		d.Errorf("keys_path", "keys_path: %v (Sigil keeps one file per key in this directory; SPIRE's keys_path names a file)", err)
	}
	return c, d.Done()
}

// parseMemoryKeyManager: KeyManager "memory" has no settings.
func parseMemoryKeyManager(d *config.PluginData) (struct{}, error) { return struct{}{}, d.Done() }
