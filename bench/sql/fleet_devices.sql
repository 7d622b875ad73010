-- The devices file of the users fleet_seed.sql inserted (same :n, :prefix, :salt), in the
-- shape seed.js writes and ws-devices.c reads: a JSON array, element i for user :prefix<i>.
SELECT json_agg(json_build_object(
         'user_id', :'prefix' || i,
         'device_id', md5(:'salt' || '-device-' || i)::uuid,
         'token', 'dev_' || md5(:'salt' || '-token-' || i),
         'scout_id', md5(:'salt' || '-scout-' || i)::uuid) ORDER BY i)
  FROM generate_series(0, :n - 1) AS i;
