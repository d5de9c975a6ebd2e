-- Busy sessions: prompts queued behind a running turn, and a workspace's cap on running turns.
-- max_concurrent_turns: NULL = unlimited. A running turn is a session row with status
-- 'active' and a live lease, so the count is shared by every gateway instance and a dead
-- owner's turns stop counting when its lease runs out.
ALTER TABLE workspaces ADD COLUMN max_concurrent_turns integer
    CHECK (max_concurrent_turns IS NULL OR max_concurrent_turns >= 1);

-- Durable queue of prompts sent with ifBusy "enqueue": run in seq order by the session's
-- owner, picked up by any instance when the session has no live owner (a restart).
CREATE TABLE queued_prompts (
    queued_prompt_id uuid PRIMARY KEY,
    session_id       uuid NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    seq              bigserial NOT NULL,
    prompt           jsonb NOT NULL,
    text             text NOT NULL,
    meta             jsonb,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX queued_prompts_session_idx ON queued_prompts (session_id, seq);

-- The cap check counts a workspace's active sessions.
CREATE INDEX sessions_workspace_active_idx ON sessions (workspace_id)
    WHERE status = 'active';
