-- Parity with the earlier planner's sweep, and outcomes that come back as sent.
--
-- outcome_text keeps the outcome object of an action in the text steward wrote from
-- the client's body (json, not jsonb: keys in the order the client sent them); the
-- jsonb column outcome stays for queries. Readers prefer outcome_text when it is set
-- (rows written before this migration have only outcome).
--
-- needs_recovery marks an action in status success without an outcome (the earlier
-- sweep's "NULL tweet ids": the worker said it succeeded but never said what it
-- produced). The healer's sweep sets it; the next outcome report for the key clears it;
-- GET /v1/posts/{post_id}/actions?needs_recovery=true lists the marked ones.
ALTER TABLE actions ADD COLUMN outcome_text json;
ALTER TABLE actions ADD COLUMN needs_recovery boolean NOT NULL DEFAULT false;
ALTER TABLE actions_archive ADD COLUMN outcome_text json;
ALTER TABLE actions_archive ADD COLUMN needs_recovery boolean NOT NULL DEFAULT false;
-- the sweep's count and mark: only the few rows concerned are indexed
CREATE INDEX actions_success_no_outcome ON actions (idempotency_key)
    WHERE status = 'success' AND outcome IS NULL;
-- the per-post list of marked actions, in the list's order
CREATE INDEX actions_post_recovery ON actions (post_id, initiated_at DESC, id DESC)
    WHERE needs_recovery;
