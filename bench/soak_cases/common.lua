-- Shared by the soak cases (bench/soak): checkpoints of the process's own
-- memory, descriptors and live objects, and the one RESULT line the
-- driver (bench/lib/soak.py) reads.
--   local S = dofile(arg[0]:match("^(.*)/") .. "/common.lua")
local ah = require "asynchost"
local S = {}

-- A field of /proc/self/status in kB (VmRSS, VmHWM). io.open on /proc
-- does not wait on a disk; the loop is blocked for microseconds.
function S.status_kb(field)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)"))
end

-- Open descriptors: the entries of /proc/self/fd, less the one fs.list's
-- own scandir holds while it reads the directory.
function S.fds()
  return #assert(fs.list("/proc/self/fd")) - 1
end

-- The open descriptors by type (socket, fifo, file, char, unknown: an
-- eventfd or epoll instance), to tell which kind a difference is.
function S.fd_kinds()
  local kinds = {}
  for _, name in ipairs(assert(fs.list("/proc/self/fd"))) do
    local st = fs.stat("/proc/self/fd/" .. name) -- nil: the list's own, now closed
    if st then kinds[st.type] = (kinds[st.type] or 0) + 1 end
  end
  return kinds
end

-- What asynchost.stats() counts, without the always-changing "current".
function S.live()
  local t = {}
  for k, v in pairs(ah.stats()) do
    if k ~= "current" then t[k] = v end
  end
  return t
end

-- One checkpoint: {rss =, hwm =, fds =, live = {...}, done =, t =}.
-- It first lets the loop run for 0.1 s: a connection closed at the end of
-- the last chunk (a cancelled fetch's) is closed in a close callback.
local t0 = now()
function S.checkpoint(done)
  sleep(0.1)
  return {rss = S.status_kb("VmRSS"), hwm = S.status_kb("VmHWM"), fds = S.fds(), fd_kinds = S.fd_kinds(),
          live = S.live(),
          done = done, t = now() - t0, lua_kb = collectgarbage("count")}
end

-- Runs work(i) for i = 1..n in chunks (work must itself be done when it
-- returns), with checkpoints after the warm-up (base), at 10 % and at
-- 100 % of n. chunk(first, last) runs one chunk; progress is logged.
function S.run(n, chunk, chunk_size)
  local res = {n = n}
  local ten = math.max(1, n // 10)
  local i, next_log = 1, now() + 10
  while i <= n do
    local last = math.min(n, i + chunk_size - 1)
    if i <= ten and last > ten then last = ten end -- stop exactly at 10 %
    chunk(i, last)
    if last == ten then res.at10 = S.checkpoint(last) end
    i = last + 1
    if now() >= next_log then
      io.stderr:write(string.format("soak: %s %d/%d (%.0f%%), VmRSS %d kB\n", arg[0]:match("[^/]*$"),
                                    last, n, 100 * last / n, S.status_kb("VmRSS")))
      next_log = now() + 10
    end
  end
  res.at100 = S.checkpoint(n)
  return res
end

function S.result(t)
  print("RESULT " .. json.encode(t))
end

return S
