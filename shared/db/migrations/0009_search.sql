-- Full-text search over user prompts and agent messages (GET /api/search).
--
-- One document per `user_message` event and per agent message: a run of adjacent text
-- `agent_message_chunk` events with the same messageId (or both without one), merged the way
-- /history?consolidated=true merges them. A trigger on session_events keeps the table, so
-- every writer (gateway, query service, any helper) maintains it without knowing about it.
--
-- Cost on the write path: a chunk that continues its session's open message only moves the
-- open row's last event id; no text is copied per chunk. The message's text (and so its
-- tsvector) is built once, from the log, when the next event of the session arrives (every
-- turn ends with turn_complete or error), so a message of n chunks is tokenised once, not n
-- times. Every other event costs one probe of a tiny partial index.

CREATE TABLE search_documents (
    session_id     uuid NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    first_event_id bigint NOT NULL,
    -- the document's last event: the hit's eventId (an agent message's last chunk)
    event_id       bigint NOT NULL,
    workspace_id   text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('user_message', 'agent_message')),
    message_id     jsonb,
    at             timestamptz NOT NULL,
    -- NULL while the agent message is still open; at most 100 000 characters (tsvector
    -- has a 1 MB limit, and a snippet needs no more)
    body           text,
    tsv            tsvector GENERATED ALWAYS AS (to_tsvector('english', body)) STORED,
    PRIMARY KEY (session_id, first_event_id)
);

CREATE INDEX search_documents_tsv_idx ON search_documents USING gin (tsv);
-- with the GIN index, a bitmap AND: a common word's hits in other workspaces are never read
CREATE INDEX search_documents_workspace_idx ON search_documents (workspace_id);
-- the open agent message of a session (at most one), probed on every event
CREATE UNIQUE INDEX search_documents_open_idx ON search_documents (session_id)
    WHERE body IS NULL;

-- Signing key of search cursors: one per database, so every instance accepts the others'.
CREATE TABLE server_keys (
    name text PRIMARY KEY,
    key  bytea NOT NULL
);
INSERT INTO server_keys (name, key)
VALUES ('search_cursor', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));

-- The event's `update` as jsonb. A JSON \u0000 (valid in the stored text) cannot become
-- jsonb text, so it is read as U+FFFD: the index must never fail a write.
CREATE FUNCTION search_update_of(payload text) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT replace(payload, '\u0000', '\ufffd')::jsonb -> 'update'
$$;

-- The update's text when its content is one text block, else NULL (as consolidation reads it).
CREATE FUNCTION search_text_of(upd jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN jsonb_typeof(upd -> 'content') = 'object'
             AND jsonb_typeof(upd -> 'content' -> 'text') = 'string'
             AND coalesce(upd -> 'content' ->> 'type', 'text') = 'text'
        THEN upd -> 'content' ->> 'text'
    END
$$;

CREATE FUNCTION search_documents_on_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    open_first   bigint;
    open_last    bigint;
    open_message jsonb;
    upd          jsonb;
    body_text    text;
    message      jsonb;
BEGIN
    SELECT d.first_event_id, d.event_id, d.message_id
    INTO open_first, open_last, open_message
    FROM search_documents d
    WHERE d.session_id = NEW.session_id AND d.body IS NULL;

    IF NEW.kind IN ('agent_message_chunk', 'user_message') THEN
        upd := search_update_of(NEW.payload);
        body_text := search_text_of(upd);
        message := nullif(upd -> 'messageId', 'null'::jsonb);
    END IF;

    IF open_first IS NOT NULL THEN
        IF NEW.kind = 'agent_message_chunk' AND body_text IS NOT NULL
           AND open_last = NEW.event_id - 1
           AND open_message IS NOT DISTINCT FROM message THEN
            -- the open message goes on: only its last event moves
            UPDATE search_documents SET event_id = NEW.event_id, at = NEW.created_at
            WHERE session_id = NEW.session_id AND first_event_id = open_first;
            RETURN NULL;
        END IF;
        -- anything else ends it: its text, once, from the log
        UPDATE search_documents SET body = coalesce((
            SELECT left(string_agg(search_text_of(search_update_of(e.payload)), ''
                                   ORDER BY e.event_id), 100000)
            FROM session_events e
            WHERE e.session_id = NEW.session_id
              AND e.event_id BETWEEN open_first AND open_last
        ), '')
        WHERE session_id = NEW.session_id AND first_event_id = open_first;
    END IF;

    IF body_text IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO search_documents
        (session_id, first_event_id, event_id, workspace_id, kind, message_id, at, body)
    SELECT NEW.session_id, NEW.event_id, NEW.event_id, s.workspace_id,
           CASE NEW.kind WHEN 'user_message' THEN 'user_message' ELSE 'agent_message' END,
           CASE NEW.kind WHEN 'user_message' THEN NULL ELSE message END,
           NEW.created_at,
           CASE NEW.kind WHEN 'user_message' THEN left(body_text, 100000) END
    FROM sessions s
    WHERE s.session_id = NEW.session_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER session_events_search
AFTER INSERT ON session_events
FOR EACH ROW EXECUTE FUNCTION search_documents_on_event();

-- Events stored before this migration: user prompts, then agent messages (runs of adjacent
-- text chunks with the same messageId), all closed.
INSERT INTO search_documents
    (session_id, first_event_id, event_id, workspace_id, kind, at, body)
SELECT e.session_id, e.event_id, e.event_id, s.workspace_id, 'user_message', e.created_at,
       left(search_text_of(search_update_of(e.payload)), 100000)
FROM session_events e
JOIN sessions s USING (session_id)
WHERE e.kind = 'user_message'
  AND search_text_of(search_update_of(e.payload)) IS NOT NULL;

WITH chunks AS (
    SELECT e.session_id, e.event_id, e.created_at, s.workspace_id,
           search_text_of(search_update_of(e.payload)) AS body_text,
           nullif(search_update_of(e.payload) -> 'messageId', 'null'::jsonb) AS message
    FROM session_events e
    JOIN sessions s USING (session_id)
    WHERE e.kind = 'agent_message_chunk'
), text_chunks AS (
    SELECT c.*,
           lag(c.event_id) OVER w AS prev_id,
           lag(c.message) OVER w AS prev_message
    FROM chunks c
    WHERE c.body_text IS NOT NULL
    WINDOW w AS (PARTITION BY c.session_id ORDER BY c.event_id)
), runs AS (
    SELECT t.*,
           sum(CASE WHEN t.prev_id = t.event_id - 1
                         AND t.prev_message IS NOT DISTINCT FROM t.message
                    THEN 0 ELSE 1 END)
               OVER (PARTITION BY t.session_id ORDER BY t.event_id) AS run
    FROM text_chunks t
)
INSERT INTO search_documents
    (session_id, first_event_id, event_id, workspace_id, kind, message_id, at, body)
SELECT r.session_id, min(r.event_id), max(r.event_id), min(r.workspace_id), 'agent_message',
       (array_agg(r.message ORDER BY r.event_id))[1], max(r.created_at),
       left(string_agg(r.body_text, '' ORDER BY r.event_id), 100000)
FROM runs r
GROUP BY r.session_id, r.run;
