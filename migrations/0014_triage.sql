-- What a triage worker needs (docs/api.md, "Scouts, devices and proposals").
--
-- Scouts are listed newest first by (created_at, seq) like devices and proposals, for
-- every user or one, optionally only the enabled ones; a scout records its worker's
-- last run and an opaque cursor of the worker's. ADD COLUMN ... bigserial numbers the
-- existing rows once (the table holds one row per watched source).
ALTER TABLE scouts ADD COLUMN seq bigserial NOT NULL;
ALTER TABLE scouts ADD COLUMN last_run_at timestamptz;
ALTER TABLE scouts ADD COLUMN run_cursor text CHECK (length(run_cursor) <= 4096);
CREATE INDEX scouts_list ON scouts (created_at DESC, seq DESC);
CREATE INDEX scouts_enabled_list ON scouts (enabled, created_at DESC, seq DESC);
-- scouts_user served the erasure's lookup by user; this one serves it and the list.
CREATE INDEX scouts_user_list ON scouts (user_id, created_at DESC, seq DESC);
DROP INDEX scouts_user;

-- A proposal keeps the verdict that made it (only relevant verdicts are queued, so the
-- existing rows are all 'relevant'); its triage reason is the reason column.
ALTER TABLE proposals ADD COLUMN triage_verdict text NOT NULL DEFAULT 'relevant';

-- Batch ingest in one statement: p_items is a JSON array of objects with the fields of
-- scouts_ingest (source_msg_ref, spam, source_type, reason, subject, snippet), and each
-- goes through scouts_ingest itself, so that every item is idempotent exactly as the
-- single route. Items are taken in the order of their source_msg_ref (input order among
-- equal ones, so the first of them is the one queued): two batches inserting the same
-- references then take the rows' locks in the same order and never deadlock, whereas in
-- input order one could wait for the other's first item while holding its second. Rows
-- come back tagged with their input index (ord). The scout's row is held (FOR SHARE) for the statement, so
-- it cannot be disabled or deleted half way: either the whole batch answers not_found or
-- disabled (one row, ord 0) or every item gets its own outcome (ord = its index). The
-- statement is one transaction: PostgreSQL sends the one 'q|user' notification of the
-- queued items at commit.
CREATE FUNCTION scouts_ingest_batch(p_scout_id uuid, p_items json, p_ttl_days integer)
RETURNS TABLE (ord integer, outcome text, proposal_id uuid, archive boolean)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_enabled boolean;
    it record;
BEGIN
    SELECT s.enabled INTO v_enabled FROM scouts s WHERE s.id = p_scout_id FOR SHARE;
    IF NOT FOUND OR NOT v_enabled THEN
        ord := 0;
        outcome := CASE WHEN v_enabled IS NULL THEN 'not_found' ELSE 'disabled' END;
        RETURN NEXT;
        RETURN;
    END IF;
    FOR it IN SELECT (e.n - 1)::integer AS n, e.v
                FROM json_array_elements(p_items) WITH ORDINALITY AS e(v, n)
               ORDER BY e.v->>'source_msg_ref', e.n
    LOOP
        SELECT it.n, i.outcome, i.proposal_id, i.archive
          INTO ord, outcome, proposal_id, archive
          FROM scouts_ingest(p_scout_id, it.v->>'source_msg_ref',
                             coalesce((it.v->>'spam')::boolean, false), it.v->>'source_type',
                             it.v->>'reason', it.v->>'subject', it.v->>'snippet',
                             p_ttl_days) AS i;
        RETURN NEXT;
    END LOOP;
END
$$;
