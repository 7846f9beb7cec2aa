-- Soak case "db": N queries through db.pool{size = SIZE}, SIZE * 8 at once.
-- Mostly a parameterised SELECT; every tenth returns json, every
-- hundredth fails (division by zero: the error path), every hundredth
-- runs in pool:transaction, every thousandth is cancelled by a timeout
-- while pg_sleep runs (a cancel request or a dropped result).
--   asynchost bench/soak_cases/db.lua DSN N [SIZE]
local S = dofile(arg[0]:match("^(.*)/") .. "/common.lua")
local dsn, n, size = arg[1], tonumber(arg[2]), tonumber(arg[3] or 8)
assert(dsn and n, "usage: db.lua DSN N [SIZE]")
local bad = 0
local function fail(i, what)
  bad = bad + 1
  if bad <= 20 then io.stderr:write("db ", i, ": ", tostring(what), "\n") end
end

local pool
local function one(i)
  if i % 1000 == 3 then
    local rows, err = timeout(0.002, pool.query, pool, "SELECT pg_sleep(0.05)")
    if rows or not tostring(err):match("^timeout") then fail(i, err or "no timeout") end
  elseif i % 100 == 1 then
    local rows, err = pool:query("SELECT 1 / $1::int AS v", 0)
    if rows or not tostring(err):match("22012") then fail(i, err or "no error") end
  elseif i % 100 == 2 then
    local v, err = pool:transaction(function(c)
      local rows = assert(c:query("SELECT $1::int * 2 AS v", i))
      return rows[1].v
    end)
    if v ~= i * 2 then fail(i, err or v) end
  elseif i % 10 == 0 then
    local rows, err = pool:query("SELECT json_build_object('i', $1::int, 's', $2::text) AS j", i, "x" .. i)
    if not rows or rows[1].j.i ~= i or rows[1].j.s ~= "x" .. i then fail(i, err) end
  else
    local rows, err = pool:query("SELECT $1::int + 1 AS v, $2::text AS s", i, "row")
    if not rows or rows[1].v ~= i + 1 or rows[1].s ~= "row" then fail(i, err) end
  end
end

local function chunk(first, last)
  local list = {}
  for i = first, last do list[#list + 1] = i end
  gather(list, one, {limit = size * 8})
end

local fds0 = S.fds()
pool = assert(db.pool{dsn = dsn, size = size})
chunk(1, size * 100) -- warm-up: the pool's connections are open
bad = 0
local base = S.checkpoint(0)
local res = S.run(n, chunk, math.max(size * 8, n // 100))
res.pool_end = pool:stats()
pool:close()
sleep(0.2) -- the connections close
res.closed = S.checkpoint(n)
res.fds0, res.base, res.bad = fds0, base, bad
res.ok = bad == 0
S.result(res)
