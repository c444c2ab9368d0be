//go:build unix

package fsdelivery

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
)

// TestRevocationRemovesFiles: when the agent is revoked every file
// fsdelivery wrote goes (links, current, generations); the directory and
// foreign files stay. Once the agent serves again, files are written anew.
func TestRevocationRemovesFiles(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join(t.TempDir(), "sensor")
	d := e.delivery(sensorTarget(dir))
	mustNoErr(t, e.cache.SetEntries([]*cache.Entry{entry("e1", sensorID)}))
	mustNoErr(t, e.cache.SetBundle(e.ca.bundle(t)))
	e.issue("e1", sensorID)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); mustNoErr(t, <-done) }()
	waitGeneration(t, dir, "")
	mustNoErr(t, os.WriteFile(filepath.Join(dir, "app.conf"), []byte("mine"), 0o600))

	mustNoErr(t, e.cache.Revoke())
	waitFor(t, "files removed", func() bool {
		des, err := os.ReadDir(dir)
		if err != nil {
			return false
		}
		var names []string
		for _, de := range des {
			names = append(names, de.Name())
		}
		return slices.Equal(names, []string{"app.conf"})
	})

	// Served again (re-attested): a new generation with the new SVID.
	mustNoErr(t, e.cache.SetEntries([]*cache.Entry{entry("e2", sensorID)}))
	mustNoErr(t, e.cache.SetBundle(e.ca.bundle(t)))
	s := e.issue("e2", sensorID)
	waitGeneration(t, dir, "")
	checkFiles(t, dir, s)
}
