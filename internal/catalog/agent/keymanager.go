package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// KeyManager "disk" and "memory" (internal/keys). Their plugin_data is
// parsed here rather than in keys because config imports keys.
func init() {
	registerKeyManager("disk", parseDiskKeyManager, func(_ context.Context, c diskKeyManager, _ KeyManagerDeps) (KeyManager, error) {
		return keys.NewDisk(c.Directory)
	})
	registerKeyManager("memory", func(d *config.PluginData) (struct{}, error) { return struct{}{}, d.Done() },
		func(context.Context, struct{}, KeyManagerDeps) (KeyManager, error) { return keys.NewMemory(), nil })
}

// diskKeyManager is the agent's KeyManager "disk" plugin_data.
type diskKeyManager struct {
	// Directory holds the key files (0600), as given (relative paths are
	// relative to the working directory).
	Directory string
}

func parseDiskKeyManager(d *config.PluginData) (diskKeyManager, error) {
	var c diskKeyManager
	d.String("directory", &c.Directory)
	if c.Directory == "" {
		d.Errorf("directory", "directory must be configured")
	} else if err := keys.CheckDir(c.Directory); err != nil {
		d.Errorf("directory", "directory: %v", err)
	}
	return c, d.Done()
}
