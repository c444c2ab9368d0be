-- Sigil datastore schema, version 1 (SQLite dialect).
-- Booleans are stored as 0/1 integers, times as unix seconds. Tables keyed
-- by text are WITHOUT ROWID: one b-tree per table instead of two, which
-- halves the pages a batch of inserts dirties.

CREATE TABLE entries (
    id             TEXT    NOT NULL PRIMARY KEY,
    spiffe_id      TEXT    NOT NULL,
    parent_id      TEXT    NOT NULL,
    -- sha256 over (spiffe_id, parent_id, sorted selectors): SPIRE's
    -- duplicate rule as a single fixed-size unique key.
    dup_key        TEXT    NOT NULL,
    x509_svid_ttl  INTEGER NOT NULL DEFAULT 0,
    jwt_svid_ttl   INTEGER NOT NULL DEFAULT 0,
    admin          INTEGER NOT NULL DEFAULT 0,
    downstream     INTEGER NOT NULL DEFAULT 0,
    hint           TEXT    NOT NULL DEFAULT '',
    store_svid     INTEGER NOT NULL DEFAULT 0,
    expires_at     INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    revision       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- dup_key determines spiffe_id, so this index both enforces the duplicate
-- rule and serves lookups by SPIFFE ID (one index instead of two).
CREATE UNIQUE INDEX entries_spiffe_id_dup_key ON entries (spiffe_id, dup_key);
CREATE INDEX entries_parent_id ON entries (parent_id);
CREATE INDEX entries_expires_at ON entries (expires_at) WHERE expires_at <> 0;

CREATE TABLE entry_selectors (
    entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    type     TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (entry_id, type, value)
) WITHOUT ROWID;
CREATE INDEX entry_selectors_type_value ON entry_selectors (type, value);

CREATE TABLE entry_dns_names (
    entry_id TEXT    NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    pos      INTEGER NOT NULL,
    name     TEXT    NOT NULL,
    PRIMARY KEY (entry_id, pos)
) WITHOUT ROWID;

CREATE TABLE entry_federates_with (
    entry_id     TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    trust_domain TEXT NOT NULL,
    PRIMARY KEY (entry_id, trust_domain)
) WITHOUT ROWID;
CREATE INDEX entry_federates_with_td ON entry_federates_with (trust_domain);

CREATE TABLE entry_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id   TEXT    NOT NULL,
    kind       INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE attested_nodes (
    spiffe_id          TEXT    NOT NULL PRIMARY KEY,
    attestation_type   TEXT    NOT NULL,
    cert_serial        TEXT    NOT NULL DEFAULT '',
    cert_not_after     INTEGER NOT NULL DEFAULT 0,
    new_cert_serial    TEXT    NOT NULL DEFAULT '',
    new_cert_not_after INTEGER NOT NULL DEFAULT 0,
    can_reattest       INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL
);
CREATE INDEX attested_nodes_attestation_type ON attested_nodes (attestation_type);
CREATE INDEX attested_nodes_cert_not_after ON attested_nodes (cert_not_after);

-- Node selectors are keyed by SPIFFE ID without a foreign key: like SPIRE,
-- they may be set before the node row exists (attestation flow).
CREATE TABLE node_selectors (
    spiffe_id TEXT NOT NULL,
    type      TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (spiffe_id, type, value)
) WITHOUT ROWID;
CREATE INDEX node_selectors_type_value ON node_selectors (type, value);

CREATE TABLE node_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    spiffe_id  TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE join_tokens (
    token_hash BLOB    NOT NULL PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);

CREATE TABLE bundles (
    trust_domain    TEXT    NOT NULL PRIMARY KEY,
    data            BLOB    NOT NULL,
    sequence_number INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE bundle_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    trust_domain TEXT    NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE TABLE ca_journals (
    name       TEXT    NOT NULL PRIMARY KEY,
    data       BLOB    NOT NULL,
    updated_at INTEGER NOT NULL
);
