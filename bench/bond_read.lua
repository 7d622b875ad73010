-- GET /v1/bonds/{user_id} on a random seeded user (u0 .. u<BENCH_N-1>).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")
bench.setup(function(i) return "GET", "/v1/bonds/u" .. i, nil end)
