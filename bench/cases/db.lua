-- bench case 4, asynchost side.
--   asynchost bench/cases/db.lua MODE DSN N CONNS
-- MODE: select | insert       CONNS connections from db.connect, the
--                             queries of many tasks pipelined on each
--       select-pool | insert-pool   db.pool{size = CONNS}
--       copy                  conn:copy_in of N rows
local B = dofile(arg[0]:match("^(.*)/") .. "/common.lua")
local mode, dsn, n, nconn = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
local SELECT = "SELECT $1::int + 1 AS v"
local INSERT = "INSERT INTO bench_insert (a, b) VALUES ($1, $2)"
local INFLIGHT = 256 -- tasks at once: 32 queries in each connection's pipeline

local function check(v, err)
  if v == nil then error(err, 2) end
  return v
end

local targets = {}
if mode:match("%-pool$") then
  local pool = check(db.pool{dsn = dsn, size = nconn})
  for i = 1, nconn do targets[i] = pool end
  -- open the connections before the clock starts, as the peers do
  gather(targets, function(p) check(p:query("SELECT 1")) end)
else
  for i = 1, nconn do targets[i] = check(db.connect(dsn)) end
end

local list = {}
for i = 1, n do list[i] = i end
local c0, t0 = os.clock(), now()
local ok = true
if mode == "select" or mode == "select-pool" then
  local res = gather(list, function(i)
    local rows = check(targets[i % nconn + 1]:query(SELECT, i))
    return rows[1].v
  end, {limit = mode == "select" and INFLIGHT or nconn * 8})
  local sum = 0
  for i = 1, n do sum = sum + res[i] end
  ok = sum == n * (n + 1) // 2 + n
elseif mode == "insert" or mode == "insert-pool" then
  gather(list, function(i)
    check(targets[i % nconn + 1]:query(INSERT, i, "row"))
  end, {limit = mode == "insert" and INFLIGHT or nconn * 8})
elseif mode == "copy" then
  local rows = {}
  for i = 1, n do rows[i] = {i, "row " .. i} end
  check(targets[1]:copy_in("COPY bench_insert (a, b) FROM STDIN", rows))
else
  error("unknown mode " .. mode)
end
local elapsed, cpu = now() - t0, os.clock() - c0
local closed = {}
for _, t in ipairs(targets) do
  if not closed[t] then
    closed[t] = true
    t:close()
  end
end
B.result({ok = ok, n = n, elapsed = elapsed, cpu = cpu})
