-- POST /v1/bonds/{user_id}/messages (atomic consume) on a random seeded user. The seeder
-- gives every user a cap the run cannot reach, so each request is an admitted write.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")
bench.setup(function(i) return "POST", "/v1/bonds/u" .. i .. "/messages", "{}" end)
