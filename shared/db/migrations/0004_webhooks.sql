-- Webhooks of a workspace and their deliveries (an outbox).
--
-- Deliveries are written by triggers in the same transaction as the event or session row
-- that causes them, so a delivery exists exactly when its cause was committed, whichever
-- process wrote it and whether or not any delivery worker is running at that moment.

CREATE TABLE webhooks (
    id           uuid PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    url          text NOT NULL,
    events       text[] NOT NULL,
    -- the signing secret as given (or generated); never returned after creation
    secret       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhooks_workspace_idx ON webhooks (workspace_id, created_at);

-- status: pending (no attempt finished yet), failed (an attempt failed, another is due at
-- next_attempt_at), delivered, dead (retries gave up). A worker claims a due row by moving
-- next_attempt_at past its own attempt and counting the attempt, so another worker skips
-- it; a claim that is never recorded (the worker died) simply falls due again.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    webhook_id       uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event            text NOT NULL,
    -- the JSON body, fixed when enqueued: every retry sends (and signs) the same bytes
    body             text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'failed', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error       text,
    next_attempt_at  timestamptz DEFAULT now(),
    first_attempt_at timestamptz,
    finished_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'failed');
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, created_at DESC);
CREATE INDEX webhook_deliveries_finished_idx ON webhook_deliveries (finished_at)
    WHERE finished_at IS NOT NULL;

-- ISO 8601 UTC with milliseconds, as every timestamp on the wire.
CREATE FUNCTION webhook_iso(ts timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- One delivery per webhook of the workspace that subscribed to the event.
CREATE FUNCTION webhook_enqueue(
    p_workspace text, p_event text, p_session text, p_event_id bigint, p_data jsonb,
    p_at timestamptz
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO webhook_deliveries (webhook_id, event, body)
    SELECT w.id, p_event,
           -- absent, not null, when there is no eventId; `data` is kept as stored
           (jsonb_strip_nulls(jsonb_build_object(
               'type', p_event,
               'workspaceId', p_workspace,
               'sessionId', p_session,
               'eventId', p_event_id::text,
               'at', webhook_iso(p_at)
           )) || jsonb_build_object('data', COALESCE(p_data, '{}'::jsonb)))::text
    FROM webhooks w
    WHERE w.workspace_id = p_workspace AND p_event = ANY (w.events)
$$;

-- Events of the log that webhooks announce: turn_complete, a permission request (a
-- tool_call waiting for the user), an error event or an acp_status error.
CREATE FUNCTION webhook_on_session_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ws      text;
    doc     jsonb;
    upd     jsonb;
    evt     text;
BEGIN
    SELECT s.workspace_id INTO ws FROM sessions s WHERE s.session_id = NEW.session_id;
    -- the common case (no webhooks in the workspace) costs two index probes, no parsing
    IF ws IS NULL OR NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.workspace_id = ws) THEN
        RETURN NULL;
    END IF;
    doc := NEW.payload::jsonb;
    upd := doc -> 'update';
    IF NEW.kind = 'turn_complete' THEN
        evt := 'turn_complete';
    ELSIF NEW.kind = 'tool_call' AND upd ->> 'status' = 'waiting' THEN
        evt := 'permission_requested';
    ELSIF NEW.kind = 'error' OR (NEW.kind = 'acp_status' AND upd ->> 'status' = 'error') THEN
        evt := 'session_error';
    ELSE
        RETURN NULL;
    END IF;
    PERFORM webhook_enqueue(ws, evt, NEW.session_id::text, NEW.event_id, upd, NEW.created_at);
    RETURN NULL;
END
$$;

-- The WHEN clause keeps the write path cheap: message chunks and the usual tool_call and
-- acp_status events never call the function. The text test only narrows (any JSON writer
-- spells the key and value out); the function decides on the parsed payload.
CREATE TRIGGER session_events_webhooks
    AFTER INSERT ON session_events
    FOR EACH ROW
    WHEN (NEW.kind IN ('turn_complete', 'error')
          OR (NEW.kind IN ('tool_call', 'acp_status')
              AND NEW.payload ~ '"status"\s*:\s*"(waiting|error)"'))
    EXECUTE FUNCTION webhook_on_session_event();

CREATE FUNCTION webhook_on_session_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM webhook_enqueue(
            NEW.workspace_id, 'session_created', NEW.session_id::text, NULL,
            jsonb_strip_nulls(jsonb_build_object(
                'name', NEW.name, 'cwd', NEW.cwd, 'provider', NEW.provider,
                'role', NEW.role, 'parentSessionId', NEW.parent_session_id::text)),
            NEW.created_at);
    ELSE
        -- a workspace delete takes its webhooks along: whatever this enqueues for them
        -- goes with them in the same transaction
        PERFORM webhook_enqueue(
            OLD.workspace_id, 'session_deleted', OLD.session_id::text, NULL,
            jsonb_strip_nulls(jsonb_build_object('name', OLD.name)),
            clock_timestamp());
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER sessions_webhooks
    AFTER INSERT OR DELETE ON sessions
    FOR EACH ROW
    EXECUTE FUNCTION webhook_on_session_row();
