-- Share links: a bearer token that reads one session, read-only. Only the token's sha256 is
-- stored (like api_tokens); revoking deletes the row, and deleting the session deletes its
-- shares. expires_at NULL: the link never expires.
CREATE TABLE session_shares (
    share_id    uuid PRIMARY KEY,
    session_id  uuid NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    token_hash  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);

CREATE INDEX session_shares_by_session ON session_shares (session_id, created_at);
