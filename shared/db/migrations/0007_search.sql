-- Full-text search over user prompts and agent messages (GET /api/search).
--
-- One document per `user_message` event and per agent message: a run of adjacent text
-- `agent_message_chunk` events with the same messageId (or both without one), merged the way
-- /history?consolidated=true merges them. A trigger on session_events keeps the table, so
-- every writer (gateway, query service, any helper) maintains it without knowing about it.
--
-- Cost on the write path: one statement per stored batch, not per event. Chunks that continue
-- their session's open message only move the open row's last event id; no text is copied
-- per chunk. A message's text (and so its tsvector) is built once, when the next event of
-- its session is stored (every turn ends with turn_complete or error), so a message of n
-- chunks is tokenised once, not n times.

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

-- One GIN index over (workspace, words): a search reads only its workspace's entries, so a
-- word common across all workspaces costs no more than its hits in this one (a GIN on the
-- words alone ANDed with a workspace index read every workspace's hits: 0.2 s at 1M rows).
-- btree_gin (a trusted contrib extension shipped with Postgres) indexes the text column.
CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE INDEX search_documents_words_idx ON search_documents USING gin (workspace_id, tsv);
-- the open agent message of a session (at most one), looked up on every write
CREATE INDEX search_documents_open_idx ON search_documents (session_id) WHERE body IS NULL;

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

-- Once per INSERT or COPY statement, over all its rows (the gateway stores events in
-- batches): one statement that continues or ends each session's open message, adds the new
-- messages (closed unless a message is the batch's last event) and the prompts.
CREATE FUNCTION search_documents_on_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- MATERIALIZED (and OFFSET 0 below): each payload is parsed once, not once per use
    WITH batch AS MATERIALIZED (
        SELECT n.session_id, n.event_id, n.kind, n.created_at,
               CASE WHEN n.kind IN ('agent_message_chunk', 'user_message')
                    THEN search_update_of(n.payload) END AS upd
        FROM new_events n
    ), ev AS (
        SELECT b.session_id, b.event_id, b.kind, b.created_at,
               search_text_of(b.upd) AS body_text,
               nullif(b.upd -> 'messageId', 'null'::jsonb) AS message,
               NULL::bigint AS open_first
        FROM batch b
    ), seq AS (
        -- each session's open message goes first, as the chunk before the batch
        SELECT * FROM ev
        UNION ALL
        SELECT d.session_id, d.event_id, 'agent_message_chunk', NULL, '', d.message_id,
               d.first_event_id
        FROM search_documents d
        WHERE d.body IS NULL AND d.session_id IN (SELECT session_id FROM ev)
    ), marked AS (
        SELECT s.*,
               (s.kind = 'agent_message_chunk' AND s.body_text IS NOT NULL) AS is_chunk,
               lag(s.kind = 'agent_message_chunk' AND s.body_text IS NOT NULL) OVER w
                   AS prev_chunk,
               lag(s.event_id) OVER w AS prev_id,
               lag(s.message) OVER w AS prev_message,
               max(s.event_id) OVER (PARTITION BY s.session_id) AS session_last
        FROM seq s
        WINDOW w AS (PARTITION BY s.session_id ORDER BY s.event_id)
    ), runs AS (
        SELECT m.*,
               sum(CASE WHEN m.is_chunk AND m.prev_chunk AND m.prev_id = m.event_id - 1
                             AND m.prev_message IS NOT DISTINCT FROM m.message
                        THEN 0 ELSE 1 END)
                   OVER (PARTITION BY m.session_id ORDER BY m.event_id) AS run
        FROM marked m
    ), messages AS (
        SELECT r.session_id,
               min(r.open_first) AS open_first,
               min(r.event_id) AS first_id,
               max(r.event_id) AS last_id,
               max(r.created_at) AS at,
               (array_agg(r.message ORDER BY r.event_id))[1] AS message,
               string_agg(r.body_text, '' ORDER BY r.event_id) AS body_text,
               max(r.event_id) < min(r.session_last) AS closed
        FROM runs r
        WHERE r.is_chunk
        GROUP BY r.session_id, r.run
    ), continued AS (
        -- the open message: moved on, and when it ended, its text once, from the log
        UPDATE search_documents d
        SET event_id = m.last_id,
            at = coalesce(m.at, d.at),
            body = CASE WHEN m.closed THEN coalesce((
                SELECT left(string_agg(search_text_of(x.upd), '' ORDER BY x.event_id), 100000)
                FROM (
                    SELECT e.event_id, search_update_of(e.payload) AS upd
                    FROM session_events e
                    WHERE e.session_id = m.session_id
                      AND e.event_id BETWEEN m.open_first AND m.last_id
                    OFFSET 0
                ) x
            ), '') END
        FROM messages m
        WHERE m.open_first IS NOT NULL
          AND d.session_id = m.session_id AND d.first_event_id = m.open_first
    )
    INSERT INTO search_documents
        (session_id, first_event_id, event_id, workspace_id, kind, message_id, at, body)
    SELECT m.session_id, m.first_id, m.last_id, s.workspace_id, 'agent_message', m.message,
           m.at, CASE WHEN m.closed THEN left(m.body_text, 100000) END
    FROM messages m
    JOIN sessions s ON s.session_id = m.session_id
    WHERE m.open_first IS NULL
    UNION ALL
    SELECT e.session_id, e.event_id, e.event_id, s.workspace_id, 'user_message', NULL,
           e.created_at, left(e.body_text, 100000)
    FROM ev e
    JOIN sessions s ON s.session_id = e.session_id
    WHERE e.kind = 'user_message' AND e.body_text IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER session_events_search
AFTER INSERT ON session_events
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION search_documents_on_events();

-- Events stored before this migration: user prompts, then agent messages (runs of adjacent
-- text chunks with the same messageId), all closed.
WITH prompts AS MATERIALIZED (
    SELECT e.session_id, e.event_id, e.created_at, s.workspace_id,
           search_update_of(e.payload) AS upd
    FROM session_events e
    JOIN sessions s USING (session_id)
    WHERE e.kind = 'user_message'
)
INSERT INTO search_documents
    (session_id, first_event_id, event_id, workspace_id, kind, at, body)
SELECT p.session_id, p.event_id, p.event_id, p.workspace_id, 'user_message', p.created_at,
       left(search_text_of(p.upd), 100000)
FROM prompts p
WHERE search_text_of(p.upd) IS NOT NULL;

WITH parsed AS MATERIALIZED (
    SELECT e.session_id, e.event_id, e.created_at, s.workspace_id,
           search_update_of(e.payload) AS upd
    FROM session_events e
    JOIN sessions s USING (session_id)
    WHERE e.kind = 'agent_message_chunk'
), chunks AS (
    SELECT p.session_id, p.event_id, p.created_at, p.workspace_id,
           search_text_of(p.upd) AS body_text,
           nullif(p.upd -> 'messageId', 'null'::jsonb) AS message
    FROM parsed p
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
