package sqlstore

import (
	"strings"

	"github.com/sigil-spiffe/sigil/internal/config"
)

// ParseConfig reads DataStore "sql"'s plugin_data: SPIRE's database_type,
// connection_string, and for PostgreSQL ro_connection_string,
// max_open_conns, max_idle_conns and conn_max_lifetime; and the Sigil
// extension sqlite_synchronous. SPIRE's other keys are refused as
// unsupported. The result passes Check (the connection strings parse; no
// database is contacted, as SPIRE's validate). Errors name the key and its
// file:line. The caller sets Log and Clock.
func ParseConfig(d *config.PluginData) (Config, error) {
	var c Config
	typeSet := d.String("database_type", &c.DatabaseType)
	connSet := d.String("connection_string", &c.ConnectionString)
	roSet := d.String("ro_connection_string", &c.ROConnectionString)
	syncSet := d.String("sqlite_synchronous", &c.Synchronous)
	var maxOpen, maxIdle int64
	openSet := d.Int("max_open_conns", &maxOpen)
	idleSet := d.Int("max_idle_conns", &maxIdle)
	lifeSet := d.Duration("conn_max_lifetime", &c.ConnMaxLifetime)
	d.Unsupported("root_ca_path", "client_cert_path", "client_key_path", "disable_migration", "log_sql")

	typ := ""
	switch t := strings.ToLower(strings.TrimSpace(c.DatabaseType)); {
	case !d.Has("database_type"):
		d.Errorf("", "database_type must be configured")
	case !typeSet:
	case t == "sqlite3" || t == "sqlite":
		typ = "sqlite3"
	case t == "postgres" || t == "postgresql":
		typ = "postgres"
	default:
		d.Errorf("database_type", "database_type %q is not supported (want %q or %q)", c.DatabaseType, "sqlite3", "postgres")
	}
	switch {
	case !d.Has("connection_string"):
		d.Errorf("", "connection_string must be configured")
	case !connSet:
	case typ == "sqlite3":
		if _, _, err := parseSQLiteConn(c.ConnectionString); err != nil {
			d.Errorf("connection_string", "%s", strings.TrimPrefix(err.Error(), "datastore: "))
		}
	case typ == "postgres":
		if _, err := parsePostgresConn("connection_string", c.ConnectionString); err != nil {
			d.Errorf("connection_string", "%s", strings.TrimPrefix(err.Error(), "datastore: "))
		}
	}
	if roSet {
		switch typ {
		case "sqlite3":
			d.Errorf("ro_connection_string", "ro_connection_string applies to database_type %q only", "postgres")
		case "postgres":
			if _, err := parsePostgresConn("ro_connection_string", c.ROConnectionString); err != nil {
				d.Errorf("ro_connection_string", "%s", strings.TrimPrefix(err.Error(), "datastore: "))
			}
		}
	}
	for _, p := range []struct {
		key string
		set bool
		v   int64
		dst **int
	}{{"max_open_conns", openSet, maxOpen, &c.MaxOpenConns}, {"max_idle_conns", idleSet, maxIdle, &c.MaxIdleConns}} {
		switch {
		case !p.set:
		case typ == "sqlite3":
			d.Errorf(p.key, "%s applies to database_type %q only (SQLite writes through one connection)", p.key, "postgres")
		case p.v < 0 || p.v > maxPoolSize:
			d.Errorf(p.key, "%s = %d is out of range (0 to %d)", p.key, p.v, maxPoolSize)
		default:
			n := int(p.v)
			*p.dst = &n
		}
	}
	if lifeSet {
		switch {
		case typ == "sqlite3":
			d.Errorf("conn_max_lifetime", "conn_max_lifetime applies to database_type %q only", "postgres")
		case c.ConnMaxLifetime < 0:
			d.Errorf("conn_max_lifetime", "conn_max_lifetime must not be negative")
		}
	}
	if syncSet {
		if typ == "postgres" {
			d.Errorf("sqlite_synchronous", "sqlite_synchronous applies to database_type %q only (PostgreSQL's durability is its synchronous_commit setting)", "sqlite3")
		} else if _, _, err := synchronousPragma(c.Synchronous); err != nil {
			d.Errorf("sqlite_synchronous", "sqlite_synchronous %q is not supported (want %q or %q)", c.Synchronous, SynchronousFull, SynchronousNormal)
		}
	}
	return c, d.Done()
}
