-- How far each change journal has been pruned (PruneEvents): every event
-- ID up to pruned_through is gone. A follower whose position is below it,
-- or that still waits for a skipped ID at or below it, may have missed
-- changes and reloads in full. One row per journal table.
CREATE TABLE journal_horizons (
    journal        TEXT   NOT NULL PRIMARY KEY,
    pruned_through BIGINT NOT NULL
);
INSERT INTO journal_horizons (journal, pruned_through) VALUES ('entry_events', 0), ('node_events', 0), ('bundle_events', 0);
