-- Planner (SPEC 2): the shared config row, per-post metric points, planned/recorded
-- actions and the archive of old failed actions.

CREATE TABLE planner_config (
    id                         boolean PRIMARY KEY DEFAULT true CHECK (id),
    per_post_window_minutes    integer NOT NULL CHECK (per_post_window_minutes > 0),
    min_samples_required       integer NOT NULL CHECK (min_samples_required > 0),
    cooldown_comment_seconds   integer NOT NULL CHECK (cooldown_comment_seconds > 0),
    cooldown_edit_seconds      integer NOT NULL CHECK (cooldown_edit_seconds > 0),
    cooldown_thread_seconds    integer NOT NULL CHECK (cooldown_thread_seconds > 0),
    max_actions_per_window     integer NOT NULL CHECK (max_actions_per_window > 0),
    max_attempts               integer NOT NULL CHECK (max_attempts > 0),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    updated_by                 text
);
INSERT INTO planner_config (per_post_window_minutes, min_samples_required,
    cooldown_comment_seconds, cooldown_edit_seconds, cooldown_thread_seconds,
    max_actions_per_window, max_attempts)
VALUES (90, 3, 1800, 7200, 10800, 2, 5);

-- The primary key is the plan's window lookup: (post_id, timestamp >= now - window).
CREATE TABLE post_metrics (
    post_id     text NOT NULL,
    "timestamp" timestamptz NOT NULL,
    impressions bigint NOT NULL CHECK (impressions >= 0),
    engagements bigint NOT NULL CHECK (engagements >= 0),
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (post_id, "timestamp")
);

CREATE TABLE actions (
    id              bigserial NOT NULL UNIQUE,
    idempotency_key text PRIMARY KEY,
    post_id         text NOT NULL,
    action_type     text NOT NULL CHECK (action_type IN ('comment', 'edit', 'thread')),
    tier            text NOT NULL CHECK (tier IN ('tier_1', 'tier_2', 'tier_3')),
    status          text NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    attempts        integer NOT NULL CHECK (attempts >= 0),
    initiated_at    timestamptz NOT NULL,
    outcome         jsonb,
    error_code      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- Frequency count and the per-post list (newest first).
CREATE INDEX actions_post_initiated ON actions (post_id, initiated_at DESC, id DESC);
-- Cooldown: the most recent action of one type on one post.
CREATE INDEX actions_post_type_initiated ON actions (post_id, action_type, initiated_at DESC);
-- Sweeps and statistics: stuck running actions, old failed actions, outcome counts.
CREATE INDEX actions_status_initiated ON actions (status, initiated_at);

CREATE TABLE actions_archive (
    archive_id      bigserial PRIMARY KEY,
    id              bigint NOT NULL,
    idempotency_key text NOT NULL,
    post_id         text NOT NULL,
    action_type     text NOT NULL,
    tier            text NOT NULL,
    status          text NOT NULL,
    attempts        integer NOT NULL,
    initiated_at    timestamptz NOT NULL,
    outcome         jsonb,
    error_code      text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    archived_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX actions_archive_key ON actions_archive (idempotency_key, archive_id DESC);
CREATE INDEX actions_archive_post ON actions_archive (post_id, initiated_at DESC);
