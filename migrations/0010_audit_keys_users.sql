-- The audit trail, API keys over REST and complete erasure (docs/api.md, docs/privacy.md).

-- Every admin write: who (the API key's name), what, on what, when. A user id appears
-- in a row only as its target 'user:<id>', so erasure finds every row of a user through
-- the target index and replaces the id with its pseudonym ('user:~<hmac>').
CREATE TABLE audit_log (
    id     bigserial PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text NOT NULL CHECK (char_length(actor) BETWEEN 1 AND 200),
    action text NOT NULL CHECK (action ~ '^[a-z][a-z0-9_.]{0,63}$'),
    target text NOT NULL CHECK (char_length(target) BETWEEN 1 AND 300),
    detail jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(detail) = 'object')
);
-- GET /v1/audit, newest first, unfiltered or by actor, action or target.
CREATE INDEX audit_log_actor ON audit_log (actor, id DESC);
CREATE INDEX audit_log_action ON audit_log (action, id DESC);
CREATE INDEX audit_log_target ON audit_log (target, id DESC);
CREATE INDEX audit_log_at ON audit_log (at);

-- The audit rows kept in system_events until now move to the trail, their user ids
-- into the target, so erasure reaches them.
INSERT INTO audit_log (at, actor, action, target, detail)
SELECT created_at,
       CASE WHEN coalesce(event_data->>'key', '') = '' THEN 'unknown'
            ELSE event_data->>'key' END,
       coalesce(event_data->>'action', 'unknown'),
       CASE WHEN event_data ? 'user_id' THEN 'user:' || (event_data->>'user_id')
            WHEN event_data ? 'scout_id' THEN 'scout:' || (event_data->>'scout_id')
            ELSE 'unknown' END,
       event_data - 'key' - 'action' - 'user_id'
  FROM system_events WHERE event_type = 'audit' ORDER BY id;
INSERT INTO audit_log (at, actor, action, target, detail)
SELECT created_at, coalesce(nullif(event_data->>'key_name', ''), 'unknown'),
       'planner.config.set', 'planner:config',
       jsonb_build_object('config', event_data->'config')
  FROM system_events WHERE event_type = 'planner_config_updated' ORDER BY id;
DELETE FROM system_events WHERE event_type IN ('audit', 'planner_config_updated');

-- API keys: an optional expiry, and when a key was last used (written in batches by
-- the instances, at most one refresh period late).
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;
CREATE INDEX api_keys_name ON api_keys (name, id DESC);

-- One user-id rule: 1 to 200 characters everywhere (bonds accepted 128).
ALTER TABLE bonds DROP CONSTRAINT bonds_user_id_check;
ALTER TABLE bonds ADD CONSTRAINT bonds_user_id_check CHECK (char_length(user_id) BETWEEN 1 AND 200);

-- Lessons steward records about a user carry the id in detail.user_id; erasure finds
-- them here and pseudonymises the field.
CREATE INDEX lessons_detail_user ON lessons ((detail->>'user_id'))
    WHERE (detail->>'user_id') IS NOT NULL;

-- Server secrets shared by every instance of one database. pseudonym_key is the HMAC key
-- that pseudonymises erased user ids when STEWARD_PSEUDONYM_KEY is not set: generated
-- once here, so every instance (and every restart) uses the same one.
CREATE TABLE steward_secrets (
    name  text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO steward_secrets (name, value)
VALUES ('pseudonym_key',
        encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text ||
                                 clock_timestamp()::text, 'UTF8')), 'hex'));
