-- Foundation: migration bookkeeping, API keys, system events, job heartbeats.

CREATE TABLE schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    scope      text NOT NULL CHECK (scope IN ('read', 'service', 'admin')),
    key_hash   text NOT NULL CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
-- One active key per name and per secret; revoked keys stay for the audit trail.
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX api_keys_active_hash ON api_keys (key_hash) WHERE revoked_at IS NULL;

CREATE TABLE system_events (
    id         bigserial PRIMARY KEY,
    event_type text NOT NULL,
    event_data jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX system_events_type_id ON system_events (event_type, id DESC);

CREATE TABLE job_heartbeats (
    job_name          text PRIMARY KEY,
    instance          text NOT NULL,
    last_run_at       timestamptz NOT NULL,
    execution_time_ms double precision NOT NULL,
    status            text NOT NULL,
    detail            jsonb NOT NULL DEFAULT '{}'::jsonb
);
