-- log, progress, env and signal. Output formats are checked in child
-- processes (the lines go to their stderr); terminal output through a
-- real pseudo-terminal made by python3's pty module.
local H = require("spec.support.helper")
local ah = require("asynchost")

local function script(text) return H.script(text, "log") end

local function lines(s)
  local t = {}
  for l in s:gmatch("[^\n]*\n") do t[#t + 1] = l:sub(1, -2) end
  return t
end

local STAMP = "^%d%d:%d%d:%d%d%.%d%d%d "

-- Runs a script with stdout and stderr into one file: returns it and the code.
local function run_merged(path, env)
  local out = os.tmpname()
  local cmd = ("%s%s %s >%s 2>&1 </dev/null"):format(env or "", H.shell_quote(H.env("AH_TEST_BIN")),
                                                    H.shell_quote(path), out)
  local _, how, code = os.execute(cmd)
  local f = assert(io.open(out, "rb"))
  local s = f:read("a")
  f:close()
  os.remove(out)
  return s, how == "signal" and 128 + code or code
end

-- Runs a script on a pseudo-terminal (python3's pty): returns all it wrote
-- (stdout and stderr both go to the terminal) and its exit code.
local function run_tty(path)
  local p = assert(io.popen("/usr/bin/python3 -c " .. H.shell_quote([==[
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], sys.argv[2]])
out = b""
while True:
    try:
        d = os.read(fd, 65536)
    except OSError:
        break
    if not d:
        break
    out += d
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.stdout.write("\nEXIT %d\n" % os.waitstatus_to_exitcode(status))
]==]) .. " " .. H.shell_quote(H.env("AH_TEST_BIN")) .. " " .. H.shell_quote(path)))
  local s = p:read("a")
  p:close()
  local body, code = s:match("^(.*)\nEXIT (%-?%d+)\n$")
  return body:gsub("\r\n", "\n"), tonumber(code)
end

local function count(s, pattern)
  local c = 0
  for _ in s:gmatch(pattern) do c = c + 1 end
  return c
end

describe("log", function()
  after_each(function() H.assert_clean() end)

  it("writes HH:MM:SS.mmm LEVEL [task N] message to stderr, args joined like print", function()
    local path = script([[
      log.info("hello", 1, nil, true, setmetatable({}, {__tostring = function() return "T" end}))
      log.warn("careful")
      log.error("bad", 2.5)
      spawn(function() log.info("from a child") end):wait()
      io.stdout:write("out\n")
    ]])
    local out, err, code = H.run({path})
    assert.equal(0, code, err)
    assert.equal("out\n", out)
    local l = lines(err)
    assert.equal(4, #l, err)
    assert.matches(STAMP .. "INFO %[task 1%] hello\t1\tnil\ttrue\tT$", l[1])
    assert.matches(STAMP .. "WARN %[task 1%] careful$", l[2])
    assert.matches(STAMP .. "ERROR %[task 1%] bad\t2%.5$", l[3])
    assert.matches(STAMP .. "INFO %[task %d+%] from a child$", l[4])
    assert.is_nil(l[4]:match("%[task 1%]"))
  end)

  it("uses the local time", function()
    local path = script([[log.info("now")]])
    local before = os.date("%H:%M")
    local _, err = H.run({path})
    local after = os.date("%H:%M")
    local hm = err:match("^(%d%d:%d%d)")
    assert.is_true(hm == before or hm == after, err)
  end)

  it("omits [task N] outside tasks", function()
    local path = script([[
      _G.keep = setmetatable({}, {__gc = function() log.info("closing the state") end})
    ]])
    local _, err, code = H.run({path})
    assert.equal(0, code)
    assert.matches(STAMP .. "INFO closing the state\n$", err)
  end)

  it("shows every level by default and follows ASYNCHOST_LOG and log.level", function()
    local path = script([[
      log.debug("d1") log.info("i1") log.warn("w1") log.error("e1")
      io.stderr:write("level ", log.level(), "\n")
      log.level("error")
      log.warn("w2") log.error("e2")
      log.level("DEBUG")
      log.debug("d3")
    ]])
    local _, err = H.run({path})
    local last = {}
    for _, l in ipairs(lines(err)) do last[#last + 1] = l:match("(%S+)$") end
    assert.same({"d1", "i1", "w1", "e1", "debug", "e2", "d3"}, last)
    assert.matches("DEBUG %[task 1%] d1\n", err)
    assert.matches("\nlevel debug\n", err)
    local _, err2 = H.run({path}, {env = {ASYNCHOST_LOG = "info"}})
    assert.is_nil(err2:match("d1"))
    assert.matches("INFO %[task 1%] i1\n", err2)
    assert.matches("level info\n", err2)
    local _, err3 = H.run({path}, {env = {ASYNCHOST_LOG = "warn"}})
    assert.is_nil(err3:match("i1"))
    assert.matches("w1", err3)
    local _, err4 = H.run({path}, {env = {ASYNCHOST_LOG = "bogus"}})
    assert.matches("level debug\n", err4)
  end)

  it("flushes stdout first so stdout and stderr interleave in order", function()
    local path = script([[
      print("one") log.info("two") io.write("three\n") log.warn("four") print("five")
    ]])
    local s, code = run_merged(path)
    assert.equal(0, code)
    local l = lines(s)
    assert.equal("one", l[1])
    assert.matches("INFO %[task 1%] two$", l[2])
    assert.equal("three", l[3])
    assert.matches("WARN %[task 1%] four$", l[4])
    assert.equal("five", l[5])
  end)

  it("returns the level and refuses unknown ones", function()
    local old = log.level()
    assert.equal(os.getenv("ASYNCHOST_LOG") and old or "debug", old)
    assert.equal("warn", log.level("warning"))
    assert.equal("warn", log.level())
    assert.has_error(function() log.level("loud") end)
    assert.has_error(function() log.level({}) end)
    assert.equal(old, log.level(old))
  end)
end)

describe("progress", function()
  after_each(function() H.assert_clean() end)

  it("counts ok and failed ticks and keeps the counts after done", function()
    local quiet = log.level()
    log.level("error") -- no plain lines from this process
    local bar = progress(10, "work", {interval = 3600})
    assert.equal(1, ah.stats().progress)
    bar:tick()
    bar:tick(3)
    bar:tick(2, false)
    bar:fail()
    bar:tick(0)
    assert.equal(7, bar.count)
    assert.equal(4, bar.ok)
    assert.equal(3, bar.failed)
    assert.equal(10, bar.total)
    assert.equal("work", bar.label)
    bar:done()
    bar:done() -- a second done does nothing
    bar:tick() -- a late tick is ignored
    assert.equal(7, bar.count)
    assert.equal(3, bar.failed)
    assert.equal(0, ah.stats().progress)
    local u = progress()
    assert.is_nil(u.total)
    assert.equal("", u.label)
    u:done()
    log.level(quiet)
  end)

  it("raises on misuse", function()
    assert.has_error(function() progress(-1) end)
    assert.has_error(function() progress("ten") end)
    assert.has_error(function() progress(1.5) end)
    assert.has_error(function() progress(10, {}) end)
    assert.has_error(function() progress(10, "x", {interval = 0}) end)
    assert.has_error(function() progress(10, "x", 5) end)
    log.level("error")
    local bar = progress(3, "x", {interval = 3600})
    assert.has_error(function() bar:tick(-1) end)
    assert.has_error(function() bar:tick("x") end)
    assert.has_error(function() bar:fail(0.5) end)
    assert.has_error(function() bar.tick({}) end)
    bar:done()
    log.level("info")
  end)

  it("writes a plain line every interval and one at done when stderr is not a terminal", function()
    local path = script([[
      local bar = progress(4, "jobs", {interval = 0.1})
      for i = 1, 4 do sleep(0.07) bar:tick(1, i ~= 3) end
      bar:done()
      local u = progress(nil, "open-ended", {interval = 0.1})
      for _ = 1, 3 do sleep(0.07) u:tick() end
      u:done()
    ]])
    local _, err, code = H.run({path})
    assert.equal(0, code, err)
    local l = lines(err)
    assert.is_true(#l >= 4, err)
    assert.matches(STAMP .. "INFO jobs: %d/4 %d+%% [%d.]+/s ETA %S+ ok %d failed %d$", l[1])
    local finals = {}
    for _, line in ipairs(l) do
      if line:match(" done ") then finals[#finals + 1] = line end
    end
    assert.equal(2, #finals, err)
    assert.matches(STAMP .. "INFO jobs: done 4/4 in [%d.]+s %([%d.]+/s%) ok 3 failed 1$", finals[1])
    assert.matches(STAMP .. "INFO open%-ended: done 3 in [%d.]+s %([%d.]+/s%) ok 3 failed 0$", finals[2])
    assert.is_truthy(err:match("INFO open%-ended: %d %S+/s elapsed %S+ ok %d failed 0\n"), err)
    assert.is_nil(err:match("\r"))
  end)

  it("draws a bar redrawn in place on a terminal, at most about 10 times a second", function()
    local path = script([[
      local bar = progress(200, "crawl")
      for i = 1, 200 do
        sleep(0.004)
        bar:tick(1, i % 50 ~= 0)
        if i == 100 then log.info("halfway") end
      end
      bar:done()
      print("after")
    ]])
    local s, code = run_tty(path)
    assert.equal(0, code, s)
    assert.matches("\rcrawl %[%-+%] 0/200 0%% ", s)
    assert.matches("\rcrawl %[#+%-*%] %d+/200 %d+%% [%d.]+/s ETA %S+ ok %d+ failed %d+", s)
    assert.matches("\rcrawl %[####################%] done 200/200 in [%d.]+s %([%d.]+/s%) ok 196 failed 4%s*\nafter\n", s)
    -- the log line erases the bar, then the bar comes back below it
    assert.matches("\r +\r%d%d:%d%d:%d%d%.%d%d%d INFO %[task 1%] halfway\n\rcrawl %[", s)
    local draws = count(s, "\rcrawl %[")
    local took = tonumber(s:match("in ([%d.]+)s")) or 10
    assert.is_true(draws >= 3, s)
    assert.is_true(draws <= took * 12 + 5, ("%d draws in %.1f s"):format(draws, took))
  end)

  it("shows count, rate and elapsed time when the total is unknown", function()
    local path = script([[
      local bar = progress(nil, "items")
      for _ = 1, 30 do sleep(0.01) bar:tick() end
      bar:done()
    ]])
    local s, code = run_tty(path)
    assert.equal(0, code, s)
    assert.matches("\ritems %d+ [%d.]+/s elapsed [%d.]+s ok %d+ failed 0", s)
    assert.matches("\ritems done 30 in [%d.]+s %([%d.]+/s%) ok 30 failed 0", s)
    assert.is_nil(s:match("%[#"))
  end)

  it("does not keep the process alive", function()
    local path = script([[
      progress(100, "forgotten", {interval = 0.05}):tick()
      progress(100, "forgotten tty", {tty = true}):tick()
      print("end")
    ]])
    local t0 = ah.now()
    local out, err, code = H.run({path})
    assert.equal(0, code, err)
    assert.equal("end\n", out)
    assert.is_true(ah.now() - t0 < 5)
    assert.matches("\rforgotten tty %[", err) -- tty = true forces the bar
  end)
end)

describe("env", function()
  after_each(function() H.assert_clean() end)

  it("returns a variable, or the default, or nil", function()
    assert.equal(os.getenv("HOME"), env("HOME"))
    assert.is_nil(env("ASYNCHOST_SURELY_UNSET_VAR"))
    assert.equal("dflt", env("ASYNCHOST_SURELY_UNSET_VAR", "dflt"))
    assert.equal(8080, env("ASYNCHOST_SURELY_UNSET_VAR", 8080))
    assert.equal(H.env("AH_TEST_PG"), env("AH_TEST_PG", "ignored"))
  end)

  it("reads the environment the process was started with", function()
    local path = script([[print(env("AH_X"), env("AH_EMPTY", "d"), env("AH_NONE", "d"))]])
    local out = H.run({path}, {env = {AH_X = "value x", AH_EMPTY = ""}})
    assert.equal("value x\t\td\n", out)
  end)

  it("raises without a name", function()
    assert.has_error(function() env() end)
    assert.has_error(function() env({}) end)
  end)
end)

describe("signal", function()
  after_each(function() H.assert_clean() end)

  local pid = io.open("/proc/self/stat"):read("n")
  local function kill(sig)
    -- os.execute blocks the loop; libuv delivers the signal after it
    assert(os.execute(("kill -%s %d"):format(sig, pid)))
  end
  local function wait_for(fn)
    local deadline = ah.now() + 5
    while not fn() and ah.now() < deadline do sleep(0.01) end
    return fn()
  end

  it("runs the handler as a new task with the name it was given", function()
    local got, here = {}, coroutine.running()
    local h = signal("USR1", function(name)
      got[#got + 1] = name
      got.other = coroutine.running() ~= here
      sleep(0.01) -- a task: it may suspend
      got[#got + 1] = "slept"
    end)
    assert.equal(1, ah.stats().signal)
    kill("USR1")
    assert.is_true(wait_for(function() return #got == 2 end))
    assert.same({"USR1", "slept", other = true}, got)
    kill("USR1")
    assert.is_true(wait_for(function() return #got == 4 end))
    h:stop()
    h:stop() -- twice is fine
    assert.equal(0, ah.stats().signal)
    local h2 = signal("sigusr2", function(name) got[#got + 1] = name end)
    kill("USR2")
    assert.is_true(wait_for(function() return #got == 5 end))
    assert.equal("sigusr2", got[5])
    h2:stop()
  end)

  it("runs every handler of one signal", function()
    local a, b = 0, 0
    local h1 = signal("SIGHUP", function() a = a + 1 end)
    local h2 = signal("HUP", function() b = b + 1 end)
    kill("HUP")
    assert.is_true(wait_for(function() return a == 1 and b == 1 end))
    h1:stop()
    kill("HUP")
    assert.is_true(wait_for(function() return b == 2 end))
    assert.equal(1, a)
    h2:stop()
  end)

  it("refuses unknown and unhandleable signals and non-functions", function()
    assert.has_error(function() signal("NOPE", print) end, "bad argument #1 to 'signal' (unknown signal 'NOPE')")
    assert.has_error(function() signal("KILL", print) end, "bad argument #1 to 'signal' (SIGKILL cannot be handled)")
    assert.has_error(function() signal("SIGSTOP", print) end)
    assert.has_error(function() signal("SEGV", print) end)
    assert.has_error(function() signal("PIPE", print) end)
    assert.has_error(function() signal(1, print) end)
    assert.has_error(function() signal("HUP") end)
    assert.has_error(function() signal("HUP", "print") end)
    assert.equal(0, ah.stats().signal or 0)
  end)

  it("logs a handler's error with its traceback and goes on", function()
    local path = script([[
      local pid = io.open("/proc/self/stat"):read("n")
      local h = signal("USR1", function(name) error("boom " .. name) end)
      os.execute("kill -USR1 " .. pid)
      sleep(0.2)
      h:stop()
      print("still here")
    ]])
    local out, err, code = H.run({path})
    assert.equal(0, code, err)
    assert.equal("still here\n", out)
    assert.matches(STAMP .. "ERROR %[task %d+%] signal handler failed: .-:2: boom USR1\nstack traceback:", err)
  end)

  it("keeps a handle nobody holds, does not keep the process alive, and stops for good", function()
    local path = script([[
      local pid = io.open("/proc/self/stat"):read("n")
      signal("USR2", function() print("usr2") end) -- the handle is dropped
      collectgarbage() collectgarbage()
      os.execute("kill -USR2 " .. pid)
      sleep(0.1)
      local h = signal("USR1", function() print("usr1") end)
      os.execute("kill -USR1 " .. pid)
      sleep(0.1)
      h:stop()
      io.stdout:flush()
      os.execute("kill -USR1 " .. pid) -- the default action again: it ends the process
      sleep(1)
      print("not reached")
    ]])
    local out, _, code = H.run({path})
    assert.equal("usr2\nusr1\n", out)
    assert.equal(128 + 10, code) -- SIGUSR1
    local path2 = script([[signal("HUP", print) print("bye")]])
    local t0 = ah.now()
    local out2, err2, code2 = H.run({path2})
    assert.equal(0, code2, err2)
    assert.equal("bye\n", out2)
    assert.is_true(ah.now() - t0 < 5)
  end)

  it("lets the host's graceful shutdown happen too on INT and TERM", function()
    for sig, status in pairs({INT = 130, TERM = 0}) do
      local path = script(([[
        shutdown_timeout(0.3)
        signal("%s", function(name) print("handler", name) end)
        spawn(function() sleep(30) end)
        -- system() ignores SIGINT while it waits, so the kill comes later
        os.execute("(sleep 0.2; kill -%s " .. io.open("/proc/self/stat"):read("n") .. ") &")
        sleep(20)
        print("not reached")
      ]]):format(sig, sig))
      local t0 = ah.now()
      local out, err, code = H.run({path})
      assert.equal(status, code, err)
      assert.equal("handler\t" .. sig .. "\n", out)
      assert.is_true(ah.now() - t0 < 10)
    end
  end)
end)
