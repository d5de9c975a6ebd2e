-- Auth never switches itself off: the first token ever created in api_tokens sets this
-- one-row flag, and nothing in the product clears it. Revoking (or deleting) every token
-- leaves auth required; only AUTH=off on a process turns it off.
CREATE TABLE auth_config (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    required_since timestamptz NOT NULL DEFAULT now()
);

-- A trigger, so a token inserted by hand (not through routa-tokens) sets the flag too.
CREATE FUNCTION api_tokens_require_auth() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO auth_config DEFAULT VALUES ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_tokens_require_auth AFTER INSERT ON api_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION api_tokens_require_auth();

-- A database that already holds tokens (revoked ones included) has been configured.
INSERT INTO auth_config (required_since)
SELECT min(created_at) FROM api_tokens HAVING count(*) > 0;
