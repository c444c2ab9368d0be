-- The version an agent reports with PostStatus (agent/v1), shown by
-- ListAgents/GetAgent as agent_version, as in SPIRE. '' until reported.
ALTER TABLE attested_nodes ADD COLUMN agent_version TEXT NOT NULL DEFAULT '';
