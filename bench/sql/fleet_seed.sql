-- Users for the ceiling and fleet steps of bench/run, inserted in bulk rather than through
-- the API (100,000 users through the API take minutes; here seconds). For i in [0, :n):
-- user :prefix<i> with a bond (what GET /v1/bonds/{user_id} reads), a scout and a device
-- whose token is known: 'dev_' || md5(:salt || '-token-' || i), stored as steward stores
-- it (the SHA-256 of the token, hex). Ids are derived from i (md5 as uuid), so
-- fleet_devices.sql can list them without reading the tables back.
-- psql -v n=100000 -v prefix=f -v salt=<random hex> -f fleet_seed.sql
INSERT INTO bonds (user_id, daily_msg_cap)
SELECT :'prefix' || i, 1000000 FROM generate_series(0, :n - 1) AS i;

INSERT INTO scouts (id, user_id, provider)
SELECT md5(:'salt' || '-scout-' || i)::uuid, :'prefix' || i, 'imap'
  FROM generate_series(0, :n - 1) AS i;

INSERT INTO devices (id, user_id, name, token_hash)
SELECT md5(:'salt' || '-device-' || i)::uuid, :'prefix' || i, 'bench-' || i,
       encode(sha256(convert_to('dev_' || md5(:'salt' || '-token-' || i), 'UTF8')), 'hex')
  FROM generate_series(0, :n - 1) AS i;

VACUUM ANALYZE bonds, scouts, devices;
