-- Search indexing leaves the event-append transaction.
--
-- The statement trigger of 0007_search parsed every stored chunk inside the transaction
-- that appends it, so every batch of every writer paid for the index (about 15% of the
-- gateway's event write rate). Now the index is built by passes: `search_index_session`
-- indexes one session's events after its watermark, under a lock on the watermark row (one
-- pass per session at a time, so nothing is indexed twice). The gateway's event writer runs
-- passes beside its stores (when a prompt is stored or a message ends, and every few
-- thousand chunks of a long message); shared.events.record runs one after storing; a claim
-- of a session runs one. The documents themselves are unchanged: one per user_message with text, one per run of
-- adjacent text agent_message_chunk events with the same messageId (or both without), the
-- last message of a pass left open (body NULL) for the next pass to continue or close.

DROP TRIGGER session_events_search ON session_events;
DROP FUNCTION search_documents_on_events();

-- What is indexed: every event of the session up to indexed_upto. A table of its own, not
-- a column of `sessions`: the pass locks this row while it works, and the row of `sessions`
-- is updated by every stored batch (a lock there would make the writer wait for the pass).
-- Only its primary key is indexed and the fill factor leaves room, so updates stay HOT.
CREATE TABLE search_watermarks (
    session_id   uuid PRIMARY KEY REFERENCES sessions (session_id) ON DELETE CASCADE,
    indexed_upto bigint NOT NULL
) WITH (fillfactor = 50);

-- The text so far of an open message, so that closing it does not read its chunks from the
-- log again (the trigger re-parsed every chunk of a message when it ended: for a long
-- message, most of a pass). Capped like `body`; NULL once the message is closed.
ALTER TABLE search_documents ADD COLUMN pending text;
UPDATE search_documents d
SET pending = coalesce((
    SELECT left(string_agg(search_text_of(x.upd), '' ORDER BY x.event_id), 100000)
    FROM (
        SELECT e.event_id, search_update_of(e.payload) AS upd
        FROM session_events e
        WHERE e.session_id = d.session_id
          AND e.event_id BETWEEN d.first_event_id AND d.event_id
        OFFSET 0
    ) x
), '')
WHERE d.body IS NULL;

-- The trigger indexed everything stored so far (the DROP above waited for every writer's
-- transaction, so this statement sees all that the trigger saw). Sessions made from now
-- on get their row from their first pass.
INSERT INTO search_watermarks (session_id, indexed_upto)
SELECT session_id, last_event_id FROM sessions;

-- One pass over session `sid`: its events after the watermark up to `upto` (NULL: all that
-- are stored), in one statement; returns whether an agent message is left open (the next
-- stored event of the session needs a pass to close it). Missing session: false.
CREATE FUNCTION search_index_session(sid uuid, upto bigint DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    from_id bigint;
    upto_id bigint;
    ws   text;
BEGIN
    SELECT w.indexed_upto INTO from_id
    FROM search_watermarks w WHERE w.session_id = sid FOR UPDATE;
    IF NOT FOUND THEN
        BEGIN
            INSERT INTO search_watermarks (session_id, indexed_upto) VALUES (sid, 0)
            ON CONFLICT (session_id) DO NOTHING;
        EXCEPTION WHEN foreign_key_violation THEN
            RETURN false;  -- no such session (deleted)
        END;
        SELECT w.indexed_upto INTO from_id
        FROM search_watermarks w WHERE w.session_id = sid FOR UPDATE;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
    END IF;
    -- A statement after the lock, so a new snapshot: every event up to the counter is
    -- visible (the counter and its events are committed together).
    SELECT s.last_event_id, s.workspace_id INTO upto_id, ws
    FROM sessions s WHERE s.session_id = sid;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    upto_id := least(upto_id, coalesce(upto, upto_id));
    IF upto_id > from_id THEN
        -- MATERIALIZED (and OFFSET 0 below): each payload is parsed once, not once per use
        WITH batch AS MATERIALIZED (
            SELECT e.event_id, e.kind, e.created_at,
                   CASE WHEN e.kind IN ('agent_message_chunk', 'user_message')
                        THEN search_update_of(e.payload) END AS upd
            FROM session_events e
            WHERE e.session_id = sid AND e.event_id > from_id AND e.event_id <= upto_id
        ), ev AS (
            SELECT b.event_id, b.kind, b.created_at,
                   search_text_of(b.upd) AS body_text,
                   nullif(b.upd -> 'messageId', 'null'::jsonb) AS message,
                   NULL::bigint AS open_first
            FROM batch b
        ), seq AS (
            -- the open message goes first, as the chunk before the range
            SELECT * FROM ev
            UNION ALL
            SELECT d.event_id, 'agent_message_chunk', NULL, '', d.message_id,
                   d.first_event_id
            FROM search_documents d
            WHERE d.session_id = sid AND d.body IS NULL
        ), marked AS (
            SELECT s.*,
                   (s.kind = 'agent_message_chunk' AND s.body_text IS NOT NULL) AS is_chunk,
                   lag(s.kind = 'agent_message_chunk' AND s.body_text IS NOT NULL) OVER w
                       AS prev_chunk,
                   lag(s.event_id) OVER w AS prev_id,
                   lag(s.message) OVER w AS prev_message
            FROM seq s
            WINDOW w AS (ORDER BY s.event_id)
        ), runs AS (
            SELECT m.*,
                   sum(CASE WHEN m.is_chunk AND m.prev_chunk AND m.prev_id = m.event_id - 1
                                 AND m.prev_message IS NOT DISTINCT FROM m.message
                            THEN 0 ELSE 1 END)
                       OVER (ORDER BY m.event_id) AS run
            FROM marked m
        ), messages AS (
            SELECT min(r.open_first) AS open_first,
                   min(r.event_id) AS first_id,
                   max(r.event_id) AS last_id,
                   max(r.created_at) AS at,
                   (array_agg(r.message ORDER BY r.event_id))[1] AS message,
                   string_agg(r.body_text, '' ORDER BY r.event_id) AS body_text,
                   max(r.event_id) < upto_id AS closed
            FROM runs r
            WHERE r.is_chunk
            GROUP BY r.run
        ), continued AS (
            -- the open message: moved on, its text so far extended (until the cap), and
            -- when it ended, that text is its body
            UPDATE search_documents d
            SET event_id = m.last_id,
                at = coalesce(m.at, d.at),
                body = CASE WHEN m.closed
                            THEN left(coalesce(d.pending, '') || m.body_text, 100000) END,
                pending = CASE WHEN NOT m.closed
                               THEN left(coalesce(d.pending, '') || m.body_text, 100000) END
            FROM messages m
            WHERE m.open_first IS NOT NULL
              AND d.session_id = sid AND d.first_event_id = m.open_first
        )
        INSERT INTO search_documents
            (session_id, first_event_id, event_id, workspace_id, kind, message_id, at, body,
             pending)
        SELECT sid, m.first_id, m.last_id, ws, 'agent_message', m.message, m.at,
               CASE WHEN m.closed THEN left(m.body_text, 100000) END,
               CASE WHEN NOT m.closed THEN left(m.body_text, 100000) END
        FROM messages m
        WHERE m.open_first IS NULL
        UNION ALL
        SELECT sid, e.event_id, e.event_id, ws, 'user_message', NULL, e.created_at,
               left(e.body_text, 100000), NULL
        FROM ev e
        WHERE e.kind = 'user_message' AND e.body_text IS NOT NULL;

        UPDATE search_watermarks SET indexed_upto = upto_id WHERE session_id = sid;
    END IF;
    RETURN EXISTS (
        SELECT 1 FROM search_documents d WHERE d.session_id = sid AND d.body IS NULL
    );
END
$$;
