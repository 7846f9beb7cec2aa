-- bench case 1, asynchost side: tasks.
--   asynchost bench/cases/tasks.lua sleep N   N concurrent sleep(0.1) tasks, gathered
--   asynchost bench/cases/tasks.lua yield N   N sleep(0) round trips in one task
-- Prints one line: RESULT {json} (see bench/lib/harness.py).
local mode, n = arg[1], tonumber(arg[2])
assert(mode and n, "usage: tasks.lua sleep|yield N")

local B = dofile(arg[0]:match("^(.*)/") .. "/common.lua")
local status_kb, result = B.status_kb, B.result

if mode == "sleep" then
  local list = {}
  for i = 1, n do list[i] = i end
  local rss0 = status_kb("VmRSS")
  local c0, t0 = os.clock(), now()
  local res = gather(list, function(i)
    sleep(0.1)
    return i
  end)
  local elapsed, cpu = now() - t0, os.clock() - c0
  local sum = 0
  for i = 1, n do sum = sum + res[i] end
  result({ok = sum == n * (n + 1) // 2 and res.n == n, n = n, sum = sum, elapsed = elapsed,
          cpu = cpu, rss0_kb = rss0, hwm_kb = status_kb("VmHWM")})
elseif mode == "yield" then
  local c0, t0 = os.clock(), now()
  local count = 0
  for _ = 1, n do
    sleep(0)
    count = count + 1
  end
  local elapsed = now() - t0
  result({ok = count == n, n = n, elapsed = elapsed, cpu = os.clock() - c0})
else
  error("unknown mode " .. mode)
end
