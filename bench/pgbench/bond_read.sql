-- The reference for GET /v1/bonds/{user_id}: the statement steward's bonds_get runs (same
-- columns and conversions), on a random seeded user. Run with -M prepared -D n=<users>.
\set i random(0, :n - 1)
SELECT user_id, phase, prev_phase, archetype,
       (extract(epoch from phase_entered_at) * 1000000)::int8, turn_count, peak_nodes::text,
       risk_level, daily_msg_cap, daily_msg_count,
       (extract(epoch from daily_msg_reset_at) * 1000000)::int8, egg_status, notes::text,
       (extract(epoch from last_updated) * 1000000)::int8, id
  FROM bonds WHERE user_id = 'u' || :i;
