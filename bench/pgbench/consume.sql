-- The reference for POST /v1/bonds/{user_id}/messages: the conditional UPDATE ...
-- RETURNING of steward's atomic consume (bonds_consume), on a random seeded user.
\set i random(0, :n - 1)
UPDATE bonds SET
       daily_msg_count = CASE WHEN now() - daily_msg_reset_at > interval '86400 seconds'
                              THEN 1 ELSE daily_msg_count + 1 END,
       daily_msg_reset_at = CASE WHEN now() - daily_msg_reset_at > interval '86400 seconds'
                                 THEN now() ELSE daily_msg_reset_at END,
       last_updated = greatest(last_updated, now())
 WHERE user_id = 'u' || :i
   AND (daily_msg_cap = 0 OR daily_msg_count < daily_msg_cap
        OR now() - daily_msg_reset_at > interval '86400 seconds')
RETURNING daily_msg_cap, daily_msg_count,
          (extract(epoch from daily_msg_reset_at) * 1000000)::int8,
          (extract(epoch from now()) * 1000000)::int8;
