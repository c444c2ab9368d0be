package server

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
)

// DataStore "sql": SQLite (internal/datastore/sqlstore).
func init() {
	registerDataStore("sql", sqlstore.ParseConfig, func(ctx context.Context, c sqlstore.Config, d DataStoreDeps) (DataStore, error) {
		c.Log, c.Clock = d.Log, d.Clock
		return sqlstore.Open(ctx, c)
	})
}
