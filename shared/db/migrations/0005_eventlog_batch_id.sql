-- The event writer's batch id, on the first event of each batch it stores. A retry after a
-- lost reply (committed, not acknowledged) finds its batch here and stores nothing twice.
ALTER TABLE session_events ADD COLUMN batch_id uuid;
CREATE UNIQUE INDEX session_events_batch_id ON session_events (batch_id)
    WHERE batch_id IS NOT NULL;
