-- proposals_expiring serves the expiry sweep only. Its predicate used to be implied by the
-- delivery pass's own (status IN ('queued', 'delivered')), so with statistics taken while
-- nothing was pending (the usual state: proposals are acked within milliseconds) the
-- planner judged a whole scan of it as cheap as the per-user proposals_pending and
-- sometimes took it: every pass of one user then read every pending proposal of every
-- user, and the dead entries of recently acked ones (a storm of 10,000 queued proposals
-- made that 10,000 rows per pass). The added expired_at IS NULL, true of every row the
-- sweep wants, is one the pass never states, so only the sweep can use the index.
DROP INDEX proposals_expiring;
CREATE INDEX proposals_expiring ON proposals (expires_at)
    WHERE status IN ('queued', 'delivered', 'failed') AND expired_at IS NULL;
