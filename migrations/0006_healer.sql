-- Healer: the lease that lets exactly one instance sweep at a time.
--
-- The turn is claimed with a single UPDATE ... WHERE claimed_until < now() RETURNING, so
-- the claim is transaction scoped and holds behind a transaction-mode pooler (a session
-- advisory lock would not). A holder that dies keeps the turn until claimed_until.
CREATE TABLE healer_leases (
    job_name         text PRIMARY KEY,
    holder           text,
    token            text,
    claimed_until    timestamptz NOT NULL DEFAULT '-infinity',
    last_started_at  timestamptz,
    last_finished_at timestamptz
);
INSERT INTO healer_leases (job_name) VALUES ('heal_sweep');

-- GET /v1/reports without a type filter reads both report kinds newest first; each kind
-- is served by system_events_type_id (event_type, id DESC) from the foundation.
