package sqlstore

import (
	"strings"

	"github.com/sigil-spiffe/sigil/internal/config"
)

// ParseConfig reads DataStore "sql"'s plugin_data: SPIRE's database_type and
// connection_string, and the Sigil extension sqlite_synchronous. SPIRE's
// other keys are refused as unsupported. The result passes Check; errors
// name the key and its file:line. The caller sets Log and Clock.
func ParseConfig(d *config.PluginData) (Config, error) {
	var c Config
	typeSet := d.String("database_type", &c.DatabaseType)
	connSet := d.String("connection_string", &c.ConnectionString)
	syncSet := d.String("sqlite_synchronous", &c.Synchronous)
	d.Unsupported("ro_connection_string", "root_ca_path", "client_cert_path", "client_key_path",
		"max_open_conns", "max_idle_conns", "conn_max_lifetime", "disable_migration", "log_sql")

	switch t := strings.ToLower(strings.TrimSpace(c.DatabaseType)); {
	case !d.Has("database_type"):
		d.Errorf("", "database_type must be configured")
	case !typeSet:
	case t == "sqlite3" || t == "sqlite":
	case t == "postgres" || t == "postgresql":
		d.Errorf("database_type", "database_type %q is not supported yet (use %q)", c.DatabaseType, "sqlite3")
	default:
		d.Errorf("database_type", "database_type %q is not supported (want %q)", c.DatabaseType, "sqlite3")
	}
	switch {
	case !d.Has("connection_string"):
		d.Errorf("", "connection_string must be configured")
	case connSet:
		if _, _, err := parseSQLiteConn(c.ConnectionString); err != nil {
			d.Errorf("connection_string", "%s", strings.TrimPrefix(err.Error(), "datastore: "))
		}
	}
	if syncSet {
		if _, _, err := synchronousPragma(c.Synchronous); err != nil {
			d.Errorf("sqlite_synchronous", "sqlite_synchronous %q is not supported (want %q or %q)", c.Synchronous, SynchronousFull, SynchronousNormal)
		}
	}
	return c, d.Done()
}
