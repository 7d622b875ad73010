-- Lessons journal (SPEC 3): one row per deviation of the pipeline.
--
-- Slugs are forward-compatible strings, checked by shape only. detail is stored as
-- json (not jsonb) so the object comes back exactly as it was written.

CREATE TABLE lessons (
    id            bigserial PRIMARY KEY,
    lesson_type   text NOT NULL CHECK (lesson_type ~ '^[a-z0-9_]{1,64}$'),
    work_item_id  text,
    task_id       text,
    stage         text,
    agent         text,
    repo          text,
    root_cause    text,
    suggestion    text,
    status        text NOT NULL DEFAULT 'new' CHECK (status ~ '^[a-z0-9_]{1,64}$'),
    related_task  text,
    attribution   text CHECK (attribution ~ '^[a-z0-9_]{1,64}$'),
    target_repo   text,
    target_domain text CHECK (target_domain ~ '^[a-z0-9_]{1,64}$'),
    source        text NOT NULL DEFAULT 'manual' CHECK (source IN ('auto', 'manual')),
    detail        json NOT NULL DEFAULT '{}'::json CHECK (json_typeof(detail) = 'object'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One index per list filter (each list is newest first by id), plus the time index
-- behind the snapshot's last_24h and newest_at.
CREATE INDEX lessons_type_id ON lessons (lesson_type, id DESC);
CREATE INDEX lessons_status_id ON lessons (status, id DESC);
CREATE INDEX lessons_repo_id ON lessons (repo, id DESC);
CREATE INDEX lessons_work_item_id ON lessons (work_item_id, id DESC);
CREATE INDEX lessons_created_at ON lessons (created_at);
-- The dedup lookup of auto records.
CREATE INDEX lessons_auto_dedup ON lessons (work_item_id, lesson_type, stage, created_at DESC)
    WHERE source = 'auto';

-- Writes one lesson in a single round trip. An auto record is first serialised on its
-- dedup key (work_item_id, lesson_type, stage; NULLs equal) by a transaction-scoped
-- advisory lock, then compared with the auto records of the last p_window_s seconds:
-- each statement of this volatile function sees rows committed before it started,
-- so a record that waited for the lock sees the row its predecessor wrote. Returns
-- (lesson_id, NULL) when written, (NULL, id of the earlier record) when deduplicated.
CREATE FUNCTION lessons_record(
    p_lesson_type text, p_work_item_id text, p_task_id text, p_stage text, p_agent text,
    p_repo text, p_root_cause text, p_suggestion text, p_status text, p_related_task text,
    p_attribution text, p_target_repo text, p_target_domain text, p_source text,
    p_detail json, p_window_s integer,
    OUT lesson_id bigint, OUT duplicate_of bigint)
LANGUAGE plpgsql VOLATILE
-- A journal write never waits long for a lock (the key's advisory lock or the table's):
-- past this it fails with 55P03, which the callers treat as "database unavailable".
SET lock_timeout = '1s'
AS $$
DECLARE
    since timestamptz;
    at_ts timestamptz;
BEGIN
    IF p_source = 'auto' AND p_window_s > 0 THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(
            'steward.lessons.dedup' || jsonb_build_array(p_work_item_id, p_lesson_type, p_stage)::text, 0));
        since := clock_timestamp() - make_interval(secs => p_window_s);
        -- Four shapes so every lookup is an equality or IS NULL on the dedup index.
        IF p_work_item_id IS NULL AND p_stage IS NULL THEN
            SELECT l.id INTO duplicate_of FROM lessons l
             WHERE l.source = 'auto' AND l.work_item_id IS NULL AND l.lesson_type = p_lesson_type
               AND l.stage IS NULL AND l.created_at > since
             ORDER BY l.created_at DESC LIMIT 1;
        ELSIF p_work_item_id IS NULL THEN
            SELECT l.id INTO duplicate_of FROM lessons l
             WHERE l.source = 'auto' AND l.work_item_id IS NULL AND l.lesson_type = p_lesson_type
               AND l.stage = p_stage AND l.created_at > since
             ORDER BY l.created_at DESC LIMIT 1;
        ELSIF p_stage IS NULL THEN
            SELECT l.id INTO duplicate_of FROM lessons l
             WHERE l.source = 'auto' AND l.work_item_id = p_work_item_id
               AND l.lesson_type = p_lesson_type AND l.stage IS NULL AND l.created_at > since
             ORDER BY l.created_at DESC LIMIT 1;
        ELSE
            SELECT l.id INTO duplicate_of FROM lessons l
             WHERE l.source = 'auto' AND l.work_item_id = p_work_item_id
               AND l.lesson_type = p_lesson_type AND l.stage = p_stage AND l.created_at > since
             ORDER BY l.created_at DESC LIMIT 1;
        END IF;
        IF duplicate_of IS NOT NULL THEN
            RETURN;
        END IF;
    END IF;
    at_ts := clock_timestamp();
    INSERT INTO lessons (lesson_type, work_item_id, task_id, stage, agent, repo, root_cause,
                         suggestion, status, related_task, attribution, target_repo,
                         target_domain, source, detail, created_at, updated_at)
    VALUES (p_lesson_type, p_work_item_id, p_task_id, p_stage, p_agent, p_repo, p_root_cause,
            p_suggestion, coalesce(p_status, 'new'), p_related_task, p_attribution,
            p_target_repo, p_target_domain, coalesce(p_source, 'manual'),
            coalesce(p_detail, '{}'::json), at_ts, at_ts)
    RETURNING id INTO lesson_id;
END
$$;
