-- bench case 1, Lua 5.4 + luv peer (Debian lua-luv): one coroutine per
-- task, a uv timer per sleep resumes it, as luv's examples do.
--   lua5.4 bench/peers/tasks_luv.lua sleep|yield N
local uv = require("luv")
local mode, n = arg[1], tonumber(arg[2])

local function status_kb(field)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)"))
end

local function sleep(ms)
  local co = coroutine.running()
  local t = uv.new_timer()
  t:start(ms, 0, function()
    t:close()
    assert(coroutine.resume(co))
  end)
  coroutine.yield()
end

local function result(t)
  local parts = {}
  for k, v in pairs(t) do
    parts[#parts + 1] = string.format("%q:%s", k, type(v) == "boolean" and tostring(v) or string.format("%.17g", v))
  end
  print("RESULT {" .. table.concat(parts, ",") .. "}")
end

local function now() return uv.hrtime() / 1e9 end

local out
if mode == "sleep" then
  local res, left = {}, n
  local rss0 = status_kb("VmRSS")
  local c0, t0 = os.clock(), now()
  local main = coroutine.running()
  for i = 1, n do
    coroutine.wrap(function()
      sleep(100)
      res[i] = i
      left = left - 1
      if left == 0 then out = {elapsed = now() - t0, cpu = os.clock() - c0} end
    end)()
  end
  uv.run()
  local sum = 0
  for i = 1, n do sum = sum + res[i] end
  result({ok = sum == n * (n + 1) // 2, n = n, sum = sum, elapsed = out.elapsed, cpu = out.cpu,
          rss0_kb = rss0, hwm_kb = status_kb("VmHWM")})
  _ = main
else
  local count = 0
  coroutine.wrap(function()
    local c0, t0 = os.clock(), now()
    local co = coroutine.running()
    local t = uv.new_timer()
    for _ = 1, n do
      t:start(0, 0, function() assert(coroutine.resume(co)) end)
      coroutine.yield()
      count = count + 1
    end
    t:close()
    out = {elapsed = now() - t0, cpu = os.clock() - c0}
  end)()
  uv.run()
  result({ok = count == n, n = n, elapsed = out.elapsed, cpu = out.cpu})
end
