-- The instance registry: every running steward process upserts its row on a scheduler
-- tick (STEWARD_INSTANCE_HEARTBEAT_S) with the figures it measures in itself (pool,
-- sockets, memory, request counters). A row whose heartbeat is older than three ticks is
-- not live; rows silent for a day are pruned by the heartbeat itself. GET /v1/instances
-- and the performance report read the live ones.
CREATE TABLE instances (
    id           text PRIMARY KEY,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    figures      jsonb NOT NULL DEFAULT '{}'::jsonb
);
-- the live filter and the prune are ranges on heartbeat_at
CREATE INDEX instances_heartbeat_at ON instances (heartbeat_at);
