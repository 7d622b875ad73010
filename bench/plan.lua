-- POST /v1/posts/{post_id}/plan on a random seeded post, evaluated on its stored metrics
-- (no "metrics" in the body, no claim: the planner reads the window and the actions).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")
bench.setup(function(i) return "POST", "/v1/posts/p" .. i .. "/plan", "{}" end)
