-- Loads rows for the scale comparison straight through SQL (psql -v lo=.. -v hi=..):
-- bonds u<lo> .. u<hi> (one row each) and post_metrics for posts p<lo/4> .. p<(hi+1)/4-1>
-- (4 points each inside the planner window), so both tables hold hi+1 rows in the end.
INSERT INTO bonds (user_id, daily_msg_cap)
SELECT 'u' || g, 1000000 FROM generate_series(:lo, :hi) AS g;

INSERT INTO post_metrics (post_id, "timestamp", impressions, engagements)
SELECT 'p' || g, date_trunc('second', now()) - make_interval(mins => 40 - 10 * k),
       1000 + (g % 13) * 50 + k * 100, (g % 5) * k
  FROM generate_series(:lo / 4, (:hi + 1) / 4 - 1) AS g, generate_series(0, 3) AS k;
