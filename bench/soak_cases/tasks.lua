-- Soak case "tasks": N tasks spawned and finished, in batches of 1,000:
-- half through gather (each sleeps 0 inside a timeout scope), a quarter
-- spawned and waited for, a quarter spawned, suspended in sleep(10) and
-- cancelled (a pcall around wait sees "cancelled").
--   asynchost bench/soak_cases/tasks.lua N
local S = dofile(arg[0]:match("^(.*)/") .. "/common.lua")
local n = assert(tonumber(arg[1]), "usage: tasks.lua N")
local finished, errors = 0, 0

local function work(i)
  local v = timeout(5, function()
    sleep(0)
    return i
  end)
  return v
end

local function batch(first, last)
  local k = last - first + 1
  local g = k // 2
  local w = k // 4
  local c = k - g - w
  local fns = {}
  for j = 1, g do fns[j] = function() return work(first + j) end end
  local res = gather(fns)
  for j = 1, g do if res[j] ~= first + j then errors = errors + 1 end end
  local ts = {}
  for j = 1, w do ts[j] = spawn(work, j) end
  for j = 1, w do if ts[j]:wait() ~= j then errors = errors + 1 end end
  local cs = {}
  for j = 1, c do cs[j] = spawn(sleep, 10) end
  sleep(0) -- every one is now suspended in its sleep
  for j = 1, c do cs[j]:cancel() end
  for j = 1, c do
    local ok, err = pcall(cs[j].wait, cs[j])
    if ok or not tostring(err):match("^cancelled") then errors = errors + 1 end
  end
  finished = finished + k
end

local fds0 = S.fds()
batch(1, 1000) -- warm-up, not counted
finished = 0
local base = S.checkpoint(0)
local res = S.run(n, batch, 1000)
res.fds0, res.base = fds0, base
res.ok = errors == 0 and finished == n
res.errors, res.finished = errors, finished
S.result(res)
