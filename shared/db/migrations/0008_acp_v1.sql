-- ACP v1 surface: the agent's last config option list, and the session's usage sums.
-- config_options: the complete list the agent last reported (session/new or load result,
-- config_option_update, set_config_option result); NULL before it reported one.
-- usage: {contextUsed?, contextSize?, costAmount?, costCurrency?, inputTokens,
-- outputTokens, thoughtTokens?, cachedReadTokens?, cachedWriteTokens?}; NULL before the
-- first report. Kept by a trigger on the events themselves, so whoever stores a
-- usage_update or a turn_complete with usage updates the sums in the same statement.
ALTER TABLE sessions ADD COLUMN config_options jsonb;
ALTER TABLE sessions ADD COLUMN usage jsonb;

CREATE FUNCTION session_usage_from_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    u jsonb;
    t jsonb;
    cur jsonb;
    k text;
BEGIN
    BEGIN
        u := (NEW.payload::jsonb) -> 'update';
        IF NEW.kind = 'usage_update' THEN
            UPDATE sessions
            SET usage = coalesce(usage, '{"inputTokens":0,"outputTokens":0}'::jsonb)
                || jsonb_strip_nulls(jsonb_build_object(
                    'contextUsed', CASE WHEN jsonb_typeof(u -> 'used') = 'number' THEN u -> 'used' END,
                    'contextSize', CASE WHEN jsonb_typeof(u -> 'size') = 'number' THEN u -> 'size' END,
                    'costAmount', CASE WHEN jsonb_typeof(u -> 'cost' -> 'amount') = 'number'
                                       THEN u -> 'cost' -> 'amount' END,
                    'costCurrency', CASE WHEN jsonb_typeof(u -> 'cost' -> 'currency') = 'string'
                                         THEN u -> 'cost' -> 'currency' END))
            WHERE session_id = NEW.session_id;
        ELSIF NEW.kind = 'turn_complete' AND jsonb_typeof(u -> 'usage') = 'object' THEN
            t := u -> 'usage';
            SELECT coalesce(usage, '{"inputTokens":0,"outputTokens":0}'::jsonb) INTO cur
            FROM sessions WHERE session_id = NEW.session_id FOR UPDATE;
            FOREACH k IN ARRAY ARRAY['inputTokens', 'outputTokens', 'thoughtTokens',
                                     'cachedReadTokens', 'cachedWriteTokens'] LOOP
                IF jsonb_typeof(t -> k) = 'number' THEN
                    cur := jsonb_set(cur, ARRAY[k],
                        to_jsonb(coalesce((cur ->> k)::numeric, 0) + (t ->> k)::numeric));
                END IF;
            END LOOP;
            UPDATE sessions SET usage = cur WHERE session_id = NEW.session_id;
        END IF;
    EXCEPTION WHEN others THEN
        -- usage is a summary: a malformed report never fails the event's insert
        RAISE WARNING 'session usage not updated for %: %', NEW.session_id, SQLERRM;
    END;
    RETURN NULL;
END
$$;

CREATE TRIGGER session_events_usage
AFTER INSERT ON session_events
FOR EACH ROW WHEN (NEW.kind IN ('usage_update', 'turn_complete'))
EXECUTE FUNCTION session_usage_from_event();
