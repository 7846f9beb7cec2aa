-- Soak case "fetch": N fetches of the loopback origin's 1 KB file, CONC at
-- once (keep-alive). Every tenth sends headers and a timeout, every
-- hundredth asks for a page that is not there (404), one in a hundred
-- asks for "Connection: close" (a new connection next time), and every
-- thousandth is cancelled by a timeout shorter than the origin's delay.
--   asynchost bench/soak_cases/fetch.lua BASE_URL N CONC
local S = dofile(arg[0]:match("^(.*)/") .. "/common.lua")
local base_url, n, conc = arg[1], tonumber(arg[2]), tonumber(arg[3] or 64)
assert(base_url and n, "usage: fetch.lua BASE_URL N [CONC]")
local bad, statuses = 0, {}

local function one(i)
  local res, err
  if i % 1000 == 0 then
    res, err = timeout(0.001, fetch, base_url .. "/delay?i=" .. i)
    if res or not tostring(err):match("^timeout") then
      bad = bad + 1
      io.stderr:write("fetch ", i, ": expected a timeout, got ", tostring(res and res.status or err), "\n")
    end
    statuses.timeout = (statuses.timeout or 0) + 1
    return
  elseif i % 100 == 0 then
    res, err = fetch(base_url .. "/missing/" .. i)
  elseif i % 100 == 50 then
    res, err = fetch(base_url .. "/1k?i=" .. i, {headers = {Connection = "close"}})
  elseif i % 10 == 0 then
    res, err = fetch(base_url .. "/1k?i=" .. i, {timeout = 10, headers = {["x-soak"] = tostring(i)}})
  else
    res, err = fetch(base_url .. "/1k?i=" .. i)
  end
  if not res then
    bad = bad + 1
    io.stderr:write("fetch ", i, ": ", err, "\n")
    return
  end
  statuses[res.status] = (statuses[res.status] or 0) + 1
  local want = i % 100 == 0 and 404 or 200
  if res.status ~= want or (want == 200 and #res.body ~= 1024) then bad = bad + 1 end
end

-- CONC workers share the range first..last
local function chunk(first, last)
  local next_i = first
  local workers = {}
  for w = 1, conc do
    workers[w] = function()
      while next_i <= last do
        local i = next_i
        next_i = i + 1
        one(i)
      end
    end
  end
  gather(workers)
end

local fds0 = S.fds()
chunk(1, conc * 20) -- warm-up: the connections are open and kept alive
bad, statuses = 0, {}
local base = S.checkpoint(0)
local res = S.run(n, chunk, math.max(conc, n // 100))
local st = {}
for k, v in pairs(statuses) do st[tostring(k)] = v end
res.fds0, res.base, res.statuses, res.bad = fds0, base, st, bad
res.fetch_stats = fetch.stats()
res.ok = bad == 0
S.result(res)
