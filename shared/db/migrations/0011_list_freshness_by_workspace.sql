-- A cold list of one workspace asks when its first live lease runs out and whether a turn
-- is running in it (the cached list's freshness bound). Answered from this workspace's
-- owned sessions only, so a turn running in another workspace no longer shortens the
-- list's life to a second; lists of every workspace still read all owned sessions
-- (sessions_lease_expiry_idx).
CREATE INDEX sessions_workspace_lease_idx ON sessions (workspace_id, lease_expires_at)
    WHERE owner_instance_id IS NOT NULL;
