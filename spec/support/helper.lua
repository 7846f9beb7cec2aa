-- Shared by the specs. after_each(H.assert_clean) checks that a test left
-- no task, timer, handle, socket or connection behind.
local ah = require("asynchost")

local H = {}

-- Live-object kinds that may outlive a test by design (idle pooled
-- connections): their names start with "idle.".
local function leftovers(s)
  local left = {}
  for kind, n in pairs(s) do
    if kind ~= "tasks" and kind ~= "current" and not kind:match("^idle%.") and n ~= 0 then
      left[#left + 1] = kind .. "=" .. n
    end
  end
  if s.tasks > s.current then left[#left + 1] = "tasks=" .. (s.tasks - s.current) end
  table.sort(left)
  return left
end

-- Waits up to `within` seconds for cancelled tasks to unwind and handles
-- to close, then fails naming what is left.
function H.assert_clean(within)
  local deadline = ah.now() + (within or 2)
  local left
  repeat
    ah.sleep(0.005)
    left = leftovers(ah.stats())
  until #left == 0 or ah.now() > deadline
  assert(#left == 0, "left behind: " .. table.concat(left, ", "))
end

-- Writes a Lua script to a fresh file under the test directory; its path.
local nscripts = 0
function H.script(text, prefix)
  nscripts = nscripts + 1
  local path = ("%s/%s_%d_%d.lua"):format(os.getenv("AH_TEST_TMP") or "/tmp",
    prefix or "script", nscripts, math.random(1e9))
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

-- Open descriptors of this process, to check that nothing leaks one.
function H.fd_count()
  return #assert(ah.fs.list("/proc/self/fd"))
end

-- Inside a describe: after each test, nothing is left behind and no
-- descriptor was added (one closed meanwhile by an earlier file's
-- leftovers is not a leak). Takes busted's hooks, which live in the
-- spec file's environment.
function H.check_each_test_for_leaks(setup, before_each, after_each)
  local before
  -- libuv opens one spare descriptor (loop->emfile_fd) with its first
  -- stream, for good: open it before counting
  setup(function() ah.exec({"true"}) end)
  before_each(function() before = H.fd_count() end)
  after_each(function()
    H.assert_clean()
    local now = H.fd_count()
    assert(now <= before, ("%d descriptors before the test, %d after"):format(before, now))
  end)
end

-- A whole file's bytes, or nil when it cannot be read.
function H.slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Polls pred() until it returns a true value (returned) or `secs` (10)
-- pass; then fails naming `what`.
function H.wait_for(what, pred, secs)
  local deadline = ah.now() + (secs or 10)
  repeat
    local v = pred()
    if v then return v end
    ah.sleep(0.02)
  until ah.now() > deadline
  error("timed out waiting for " .. what)
end

function H.env(name)
  local v = os.getenv(name)
  assert(v, name .. " is not set: run the specs through spec/run")
  return v
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
H.shell_quote = shell_quote

-- Runs the asynchost binary with args (a list) and returns stdout, stderr
-- and the exit code. It blocks the loop (os.execute): for CLI tests only.
-- opts.stdin: text fed to standard input; opts.env: {NAME = value};
-- opts.pipe: a shell command stdout is piped to (the code is asynchost's).
function H.run(args, opts)
  opts = opts or {}
  local bin = os.getenv("AH_TEST_BIN") or arg[-1]
  local out, err, inp = os.tmpname(), os.tmpname(), os.tmpname()
  local f = assert(io.open(inp, "w"))
  f:write(opts.stdin or "")
  f:close()
  local cmd = {}
  for k, v in pairs(opts.env or {}) do cmd[#cmd + 1] = k .. "=" .. shell_quote(v) end
  cmd[#cmd + 1] = shell_quote(bin)
  for _, a in ipairs(args) do cmd[#cmd + 1] = shell_quote(a) end
  local line = table.concat(cmd, " ") .. " <" .. inp .. " 2>" .. err
  if opts.pipe then -- e.g. "head -n 2": stdout goes through it; its exit status is ignored
    line = "set -o pipefail; " .. line .. " | " .. opts.pipe .. " >" .. out
    line = "bash -c " .. shell_quote(line)
  else
    line = line .. " >" .. out
  end
  local _, how, code = os.execute(line)
  local function slurp(path)
    local fh = assert(io.open(path, "rb"))
    local s = fh:read("a")
    fh:close()
    os.remove(path)
    return s
  end
  local so, se = slurp(out), slurp(err)
  os.remove(inp)
  if how == "signal" then code = 128 + code end
  return so, se, code
end

return H
