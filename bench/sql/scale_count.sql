-- One JSON line: rows and on-disk size (table + indexes) of the tables the scale reads hit.
SELECT json_build_object(
  'bonds', (SELECT count(*) FROM bonds),
  'post_metrics', (SELECT count(*) FROM post_metrics),
  'actions', (SELECT count(*) FROM actions),
  'bonds_mib', round(pg_total_relation_size('bonds') / 1048576.0, 1),
  'post_metrics_mib', round(pg_total_relation_size('post_metrics') / 1048576.0, 1));
