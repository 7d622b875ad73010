-- Bond ledger (SPEC 4): one row per user, an append-only audit trail per user.

CREATE TABLE bonds (
    -- a stable number for cursors (user ids are text)
    id                 bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    user_id            text PRIMARY KEY CHECK (char_length(user_id) BETWEEN 1 AND 128),
    phase              text NOT NULL DEFAULT 'dormant',
    prev_phase         text NOT NULL DEFAULT 'dormant',
    archetype          text NOT NULL DEFAULT 'unknown',
    phase_entered_at   timestamptz NOT NULL DEFAULT now(),
    turn_count         bigint NOT NULL DEFAULT 0 CHECK (turn_count >= 0),
    peak_nodes         jsonb NOT NULL DEFAULT '{}'::jsonb,
    risk_level         text NOT NULL DEFAULT 'low',
    daily_msg_cap      integer NOT NULL DEFAULT 0 CHECK (daily_msg_cap >= 0),
    daily_msg_count    integer NOT NULL DEFAULT 0 CHECK (daily_msg_count >= 0),
    daily_msg_reset_at timestamptz NOT NULL DEFAULT now(),
    egg_status         text NOT NULL DEFAULT 'none',
    notes              jsonb NOT NULL DEFAULT '[]'::jsonb,
    last_updated       timestamptz NOT NULL DEFAULT now(),
    -- rows in bond_events for this user, kept at most 500 by the writers
    event_count        integer NOT NULL DEFAULT 0 CHECK (event_count BETWEEN 0 AND 500)
);
-- Listing newest last_updated first, unfiltered or filtered on phase or risk level.
CREATE INDEX bonds_updated ON bonds (last_updated DESC, id DESC);
CREATE INDEX bonds_phase_updated ON bonds (phase, last_updated DESC, id DESC);
CREATE INDEX bonds_risk_updated ON bonds (risk_level, last_updated DESC, id DESC);

CREATE TABLE bond_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    text NOT NULL REFERENCES bonds (user_id) ON DELETE CASCADE,
    event_type text NOT NULL
               CHECK (event_type IN ('phase_transition', 'risk_change', 'admin_action', 'ulm_spike')),
    detail     text NOT NULL,
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
-- Reading a user's trail newest first, trimming the oldest, and the cascade on erasure.
CREATE INDEX bond_events_user_id ON bond_events (user_id, id DESC);
