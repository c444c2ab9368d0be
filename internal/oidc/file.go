package oidc

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

// FileConfig configures a FileSource.
type FileConfig struct {
	// Path is a SPIFFE bundle (JWKS with spiffe_* members), e.g. what
	// `sigil-server bundle show -format spiffe` writes.
	Path         string
	PollInterval time.Duration
	Log          *slog.Logger
	Clock        clock.Clock
}

// FileSource serves the JWT keys of a SPIFFE bundle file, read every
// PollInterval. A file that fails to load keeps the last keys.
type FileSource struct {
	held
	cfg FileConfig
	log *slog.Logger
}

// NewFileSource validates cfg.
func NewFileSource(cfg FileConfig) (*FileSource, error) {
	if cfg.Path == "" {
		return nil, errors.New("file source: a path is required")
	}
	if cfg.PollInterval <= 0 {
		return nil, errors.New("file source: the poll interval must be positive")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &FileSource{held: held{clk: clock.OrReal(cfg.Clock)}, cfg: cfg, log: log}, nil
}

// Run reads the file until ctx ends.
func (s *FileSource) Run(ctx context.Context) error {
	failing := false
	for {
		// The file's trust domain is not checked: it only labels the keys.
		b, err := spiffebundle.Load(spiffeid.TrustDomain{}, s.cfg.Path)
		switch {
		case err != nil && !failing:
			s.log.Warn("Failed to load the SPIFFE bundle file; serving the last keys", "path", s.cfg.Path, "error", err)
			failing = true
		case err == nil:
			failing = false
			if s.set(jwtbundle.FromJWTAuthorities(b.TrustDomain(), b.JWTAuthorities())) {
				s.log.Info("JWT keys updated from the bundle file", "path", s.cfg.Path, "keys", len(b.JWTAuthorities()))
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.clk.After(s.cfg.PollInterval):
		}
	}
}
