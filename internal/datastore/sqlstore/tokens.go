package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// CreateJoinToken stores a join token by the SHA-256 of its value.
// CreatedAt is set by the store when zero.
func (s *Store) CreateJoinToken(ctx context.Context, t *datastore.JoinToken) error {
	if t == nil {
		return errors.New("create join token: token is nil")
	}
	if t.Hash == ([32]byte{}) {
		return errors.New("create join token: hash is empty")
	}
	created := t.CreatedAt
	if created == 0 {
		created = s.now()
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q("INSERT INTO join_tokens (token_hash, expires_at, created_at) VALUES (?, ?, ?) ON CONFLICT (token_hash) DO NOTHING"),
			t.Hash[:], t.ExpiresAt, created)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			// Never log or echo the hash: it identifies a secret.
			return fmt.Errorf("join token: %w", datastore.ErrAlreadyExists)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create join token: %w", err)
	}
	t.CreatedAt = created
	return nil
}

// GetJoinToken reads the token with this hash (one indexed read on the
// read pool; nothing is written).
func (s *Store) GetJoinToken(ctx context.Context, hash [32]byte) (*datastore.JoinToken, error) {
	t := &datastore.JoinToken{Hash: hash}
	err := s.r.QueryRowContext(ctx, s.q("SELECT expires_at, created_at FROM join_tokens WHERE token_hash = ?"), hash[:]).
		Scan(&t.ExpiresAt, &t.CreatedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("join token: %w", datastore.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get join token: %w", err)
	}
	return t, nil
}

// ConsumeJoinToken deletes and returns the token in one statement, so
// concurrent consumers cannot both succeed.
func (s *Store) ConsumeJoinToken(ctx context.Context, hash [32]byte) (*datastore.JoinToken, error) {
	var out *datastore.JoinToken
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		t := &datastore.JoinToken{Hash: hash}
		err := tx.QueryRowContext(ctx, s.q("DELETE FROM join_tokens WHERE token_hash = ? RETURNING expires_at, created_at"), hash[:]).
			Scan(&t.ExpiresAt, &t.CreatedAt)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("join token: %w", datastore.ErrNotFound)
		}
		if err != nil {
			return err
		}
		out = t
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("consume join token: %w", err)
	}
	return out, nil
}

// PruneJoinTokens deletes tokens that expired before t.
func (s *Store) PruneJoinTokens(ctx context.Context, before time.Time) (int, error) {
	var n int64
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q("DELETE FROM join_tokens WHERE expires_at < ?"), cutoff(before))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune join tokens: %w", err)
	}
	return int(n), nil
}

// GetCAJournal returns the CA journal blob stored under name.
func (s *Store) GetCAJournal(ctx context.Context, name string) ([]byte, error) {
	if !isText(name) {
		return nil, fmt.Errorf("CA journal %s: %w", clip.Quote(name), datastore.ErrNotFound)
	}
	var data []byte
	err := s.r.QueryRowContext(ctx, s.q("SELECT data FROM ca_journals WHERE name = ?"), name).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("CA journal %q: %w", name, datastore.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get CA journal %q: %w", name, err)
	}
	return data, nil
}

// SetCAJournal creates or replaces the CA journal blob stored under name.
func (s *Store) SetCAJournal(ctx context.Context, name string, data []byte) error {
	if name == "" {
		return errors.New("set CA journal: name is empty")
	}
	if err := checkText("CA journal name", name); err != nil {
		return fmt.Errorf("set CA journal: %w", err)
	}
	if data == nil {
		data = []byte{}
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO ca_journals (name, data, updated_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at`), name, data, s.now())
		return err
	})
	if err != nil {
		return fmt.Errorf("set CA journal %q: %w", name, err)
	}
	return nil
}

// ListCAJournals returns every CA journal blob, by name: one per server
// sharing the database.
func (s *Store) ListCAJournals(ctx context.Context) (map[string][]byte, error) {
	rows, err := s.r.QueryContext(ctx, s.q("SELECT name, data FROM ca_journals ORDER BY name"))
	if err != nil {
		return nil, fmt.Errorf("list CA journals: %w", err)
	}
	defer rows.Close()
	out := map[string][]byte{}
	for rows.Next() {
		var name string
		var data []byte
		if err := rows.Scan(&name, &data); err != nil {
			return nil, fmt.Errorf("list CA journals: %w", err)
		}
		out[name] = data
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list CA journals: %w", err)
	}
	return out, nil
}
