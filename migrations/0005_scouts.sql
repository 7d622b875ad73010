-- Scouts, devices and proposals (SPEC 5).

CREATE TABLE scouts (
    id                           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id                      text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 200),
    provider                     text NOT NULL CHECK (length(provider) BETWEEN 1 AND 64),
    enabled                      boolean NOT NULL DEFAULT true,
    auto_trash_spam              boolean NOT NULL DEFAULT false,
    device_inactivity_pause_days integer NOT NULL DEFAULT 7
                                 CHECK (device_inactivity_pause_days BETWEEN 1 AND 3650),
    created_at                   timestamptz NOT NULL DEFAULT now(),
    updated_at                   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scouts_user ON scouts (user_id);

-- A device's token is stored only as its SHA-256 (hex). connected_until is pushed
-- forward by the instance holding a socket of the device (online = connected_until >
-- now()), so a crashed instance's devices drop offline by themselves.
CREATE TABLE devices (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq             bigserial NOT NULL UNIQUE,
    user_id         text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 200),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    token_hash      text NOT NULL CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    connected_until timestamptz
);
CREATE INDEX devices_user ON devices (user_id, created_at DESC, seq DESC);

-- Proposals keep scout_id without a foreign key: deleting a scout stops its ingest but
-- never loses what was already queued for the user.
CREATE TABLE proposals (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq                bigserial NOT NULL UNIQUE,
    scout_id           uuid NOT NULL,
    user_id            text NOT NULL,
    source_type        text NOT NULL,
    source_msg_ref     text NOT NULL,
    reason             text,
    raw_subject        text,
    raw_snippet        text,
    status             text NOT NULL DEFAULT 'queued'
                       CHECK (status IN ('queued', 'delivered', 'acked', 'failed', 'expired')),
    delivery_attempts  integer NOT NULL DEFAULT 0,
    triaged_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    first_delivered_at timestamptz,
    delivered_at       timestamptz,
    acked_at           timestamptz,
    acked_device_id    uuid,
    failed_at          timestamptz,
    expired_at         timestamptz,
    CONSTRAINT proposals_source_unique UNIQUE (scout_id, source_msg_ref)
);
-- What a device is owed, oldest first (hello delivery, live delivery, top-ups).
CREATE INDEX proposals_pending ON proposals (user_id, triaged_at, seq)
    WHERE status IN ('queued', 'delivered');
-- The user's list, newest first, optionally by status.
CREATE INDEX proposals_user_list ON proposals (user_id, triaged_at DESC, seq DESC);
CREATE INDEX proposals_user_status ON proposals (user_id, status, triaged_at DESC, seq DESC);
-- Ack timeout sweep and expiry.
CREATE INDEX proposals_unacked ON proposals (delivered_at) WHERE status = 'delivered';
CREATE INDEX proposals_expiring ON proposals (expires_at)
    WHERE status IN ('queued', 'delivered', 'failed');
-- Delivery statistics over a period.
CREATE INDEX proposals_triaged ON proposals (triaged_at);
