-- The whole first schema: workspaces, codebases, sessions, the event log, notes, tasks.

CREATE TABLE workspaces (
    id          text PRIMARY KEY,
    title       text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO workspaces (id, title) VALUES ('default', 'Default');

CREATE TABLE codebases (
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    id           text NOT NULL,
    repo_path    text NOT NULL,
    branch       text,
    position     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, id)
);

CREATE TABLE sessions (
    session_id         uuid PRIMARY KEY,
    workspace_id       text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name               text,
    cwd                text NOT NULL,
    branch             text,
    provider           text NOT NULL,
    role               text NOT NULL DEFAULT 'CRAFTER'
                       CHECK (role IN ('ROUTA', 'CRAFTER', 'GATE', 'DEVELOPER')),
    mode_id            text,
    model              text,
    parent_session_id  uuid REFERENCES sessions (session_id) ON DELETE SET NULL,
    specialist_id      text,
    routa_agent_id     text,
    acp_status         text NOT NULL DEFAULT 'connecting'
                       CHECK (acp_status IN ('connecting', 'ready', 'error', 'closed')),
    acp_error          text,
    -- seed field: active = a turn runs, idle = agent alive and no turn, closed = no live agent
    status             text NOT NULL DEFAULT 'closed'
                       CHECK (status IN ('active', 'idle', 'closed')),
    owner_instance_id  text,
    lease_expires_at   timestamptz,
    auto_approve_permissions boolean NOT NULL DEFAULT false,
    custom_command     text,
    custom_args        jsonb,
    mcp_servers        jsonb NOT NULL DEFAULT '[]'::jsonb,
    idempotency_key    text,
    -- per-session event counter: the next event gets last_event_id + 1, in the same transaction
    last_event_id      bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    last_activity      timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sessions_created_idx ON sessions (created_at DESC);
CREATE INDEX sessions_workspace_created_idx ON sessions (workspace_id, created_at DESC);
CREATE INDEX sessions_parent_idx ON sessions (parent_session_id) WHERE parent_session_id IS NOT NULL;
CREATE INDEX sessions_owner_idx ON sessions (owner_instance_id) WHERE owner_instance_id IS NOT NULL;
CREATE INDEX sessions_idempotency_idx ON sessions (workspace_id, idempotency_key, created_at DESC)
    WHERE idempotency_key IS NOT NULL;

-- Append-only event log: one row per session/update, contiguous event_id per session.
-- payload is the event exactly as published and streamed (JSON text), so replay forwards bytes.
CREATE TABLE session_events (
    session_id  uuid NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    event_id    bigint NOT NULL CHECK (event_id > 0),
    kind        text NOT NULL,
    payload     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, event_id)
);

CREATE TABLE notes (
    workspace_id  text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    id            text NOT NULL,
    title         text NOT NULL,
    content       text NOT NULL DEFAULT '',
    session_id    text,
    type          text NOT NULL DEFAULT 'general' CHECK (type IN ('spec', 'task', 'general')),
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    source        text NOT NULL DEFAULT 'user' CHECK (source IN ('agent', 'user', 'system')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, id)
);

CREATE INDEX notes_workspace_updated_idx ON notes (workspace_id, updated_at DESC);
CREATE INDEX notes_session_idx ON notes (workspace_id, session_id) WHERE session_id IS NOT NULL;

CREATE TABLE tasks (
    id                     text PRIMARY KEY,
    workspace_id           text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    title                  text NOT NULL,
    objective              text NOT NULL,
    status                 text NOT NULL DEFAULT 'PENDING'
                           CHECK (status IN ('PENDING', 'IN_PROGRESS', 'REVIEW_REQUIRED', 'COMPLETED',
                                             'NEEDS_FIX', 'BLOCKED', 'CANCELLED')),
    priority               text CHECK (priority IN ('low', 'medium', 'high', 'urgent')),
    session_id             text,
    assigned_to            text,
    labels                 jsonb NOT NULL DEFAULT '[]'::jsonb,
    dependencies           jsonb NOT NULL DEFAULT '[]'::jsonb,
    acceptance_criteria    jsonb NOT NULL DEFAULT '[]'::jsonb,
    verification_commands  jsonb NOT NULL DEFAULT '[]'::jsonb,
    comments               jsonb NOT NULL DEFAULT '[]'::jsonb,
    column_id              text NOT NULL DEFAULT 'backlog',
    position               integer NOT NULL DEFAULT 0,
    creation_source        text NOT NULL DEFAULT 'user',
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tasks_workspace_created_idx ON tasks (workspace_id, created_at DESC);
CREATE INDEX tasks_session_idx ON tasks (workspace_id, session_id) WHERE session_id IS NOT NULL;

-- Auth tokens (api.md §8), stored hashed; workspaces '*' = every workspace.
CREATE TABLE api_tokens (
    token_hash   text PRIMARY KEY,
    label        text,
    workspaces   text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
