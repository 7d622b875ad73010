-- POST /v1/lessons: a manual lesson (never deduplicated) for a random work item.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")
local types = {"gate_failure", "merge_hold", "transient_retry", "deploy_degraded"}
bench.setup(function(i)
  return "POST", "/v1/lessons", string.format(
    '{"lesson_type":"%s","work_item_id":"w%d","stage":"deploy","repo":"bench/app",' ..
    '"root_cause":"load test","source":"manual","detail":{"seq":%d}}', types[i % 4 + 1], i, i)
end)
