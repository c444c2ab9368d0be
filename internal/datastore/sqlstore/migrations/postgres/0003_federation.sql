-- Federation relationships created through the trustdomain API (those of
-- the server configuration are not stored), as SPIRE's
-- federated_trust_domains table; endpoint_spiffe_id is '' for https_web.
CREATE TABLE federation_relationships (
    trust_domain        TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
    bundle_endpoint_url TEXT   NOT NULL,
    profile             TEXT   NOT NULL,
    endpoint_spiffe_id  TEXT   NOT NULL DEFAULT '',
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

-- When each federated bundle was last fetched from its bundle endpoint
-- (changed or not), so its age survives a restart.
CREATE TABLE bundle_refreshes (
    trust_domain TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
    refreshed_at BIGINT NOT NULL
);
