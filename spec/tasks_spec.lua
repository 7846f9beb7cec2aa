-- The task scheduler: sleep, now, spawn, task methods, cancellation and
-- structured concurrency.
local H = require("spec.support.helper")
local ah = require("asynchost")

local function closer(log, name)
  return setmetatable({}, {__close = function() log[#log + 1] = name end})
end

describe("sleep", function()
  after_each(function() H.assert_clean() end)

  it("suspends the task for about the given time", function()
    local t0 = now()
    sleep(0.05)
    local dt = now() - t0
    assert.is_true(dt >= 0.049, "slept " .. dt)
    assert.is_true(dt < 2, "slept " .. dt)
  end)

  it("never wakes before its deadline, in a row or side by side", function()
    local early = {}
    for i = 1, 20 do
      local d = i * 0.0003
      local t0 = now()
      sleep(d)
      if now() - t0 < d then early[#early + 1] = d end
    end
    local ds = {}
    for i = 1, 20 do ds[i] = 0.011 - i * 0.0005 end
    gather(ds, function(d)
      local t0 = now()
      sleep(d)
      if now() - t0 < d then early[#early + 1] = d end
    end)
    assert.same({}, early)
  end)

  it("wakes a shorter sleep started after a longer one first", function()
    local order = {}
    local long = spawn(function() sleep(0.2) order[#order + 1] = "long" end)
    sleep(0)
    local t0 = now()
    sleep(0.01)
    order[#order + 1] = "short"
    assert.is_true(now() - t0 < 0.15, "the short sleep waited for the long one")
    long:wait()
    assert.same({"short", "long"}, order)
  end)

  it("with 0 lets the other ready tasks run first", function()
    local order = {}
    local t = spawn(function() order[#order + 1] = "child" end)
    order[#order + 1] = "before"
    sleep(0)
    order[#order + 1] = "after"
    t:wait()
    assert.same({"before", "child", "after"}, order)
  end)

  it("treats a negative duration as 0", function()
    local t0 = now()
    sleep(-5)
    assert.is_true(now() - t0 < 1)
  end)

  it("raises a Lua-style error for a wrong argument", function()
    local ok, err = pcall(function() sleep("soon") end)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'sleep' %(number expected, got string%)", err)
    ok, err = pcall(sleep, 0 / 0)
    assert.is_false(ok)
    assert.matches("not a number", err)
  end)

  it("lets many tasks sleep at once in about one delay", function()
    local t0 = now()
    local r = gather({}, function() end)
    assert.equal(0, r.n)
    local list = {}
    for i = 1, 1000 do list[i] = i end
    r = gather(list, function(i) sleep(0.1) return i end)
    assert.equal(1000, r.n)
    assert.equal(500, r[500])
    assert.is_true(now() - t0 < 5)
  end)

  it("frees its timer at once when cancelled", function()
    local t = spawn(function() sleep(60) end)
    sleep(0)
    assert.equal(1, ah.stats().timers)
    t:cancel()
    assert.equal(0, ah.stats().timers)
    assert.equal("cancelled", (select(2, pcall(t.wait, t))):match("^cancelled"))
  end)
end)

describe("now", function()
  it("is a monotonic clock in seconds", function()
    local a = now()
    sleep(0.01)
    local b = now()
    assert.is_number(a)
    assert.is_true(b > a)
    assert.is_true(b - a < 5)
  end)
end)

describe("spawn", function()
  after_each(function() H.assert_clean() end)

  it("runs a function concurrently with its arguments and returns a task", function()
    local t = spawn(function(a, b) sleep(0.01) return a + b, "x" end, 2, 3)
    assert.equal("running", t:status())
    local sum, x = t:wait()
    assert.equal(5, sum)
    assert.equal("x", x)
    assert.equal("done", t:status())
    assert.is_number(t.id)
    assert.matches("^task %d+ %(done%)$", tostring(t))
  end)

  it("returns the same results to every waiter and after the task is done", function()
    local t = spawn(function() sleep(0.01) return 42 end)
    local w = gather({function() return t:wait() end, function() return t:wait() end})
    assert.same({42, 42, n = 2}, w)
    assert.equal(42, t:wait())
  end)

  it("raises for something that is not callable", function()
    local ok, err = pcall(function() spawn(42) end)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'spawn' %(function expected, got number%)", err)
  end)

  it("accepts a callable table", function()
    local obj = setmetatable({}, {__call = function(self, x) return x * 2 end})
    assert.equal(14, spawn(obj, 7):wait())
  end)

  it("re-raises the original error value in the waiter", function()
    local e = {code = 7}
    local t = spawn(function() sleep(0) error(e) end)
    local ok, err = pcall(t.wait, t)
    assert.is_false(ok)
    assert.equal(e, err)
    assert.equal("failed", t:status())
  end)

  it("keeps the place of a string error", function()
    local t = spawn(function() error("kaboom") end)
    local ok, err = pcall(t.wait, t)
    assert.is_false(ok)
    assert.matches("tasks_spec.lua:%d+: kaboom", err)
  end)

  it("refuses to wait for itself", function()
    local t
    t = spawn(function()
      sleep(0)
      return pcall(t.wait, t)
    end)
    local ok, err = t:wait()
    assert.is_false(ok)
    assert.matches("cannot wait for itself", err)
  end)

  it("gives the running task", function()
    local seen
    local t = spawn(function() seen = current() end)
    t:wait()
    assert.equal(t, seen)
  end)
end)

describe("cancellation", function()
  after_each(function() H.assert_clean() end)

  it("raises at the suspended call, runs <close> and pcall handlers, and skips what follows", function()
    local log = {}
    local t = spawn(function()
      local c <close> = closer(log, "closed")
      local ok, err = pcall(sleep, 10)
      log[#log + 1] = "pcall: " .. tostring(ok) .. " " .. err:match("^%a+:")
      sleep(10)
      log[#log + 1] = "never"
    end)
    sleep(0.01)
    assert.is_true(t:cancel())
    local ok, err = pcall(t.wait, t)
    assert.is_false(ok)
    assert.matches("^cancelled: ", err)
    assert.same({"pcall: false cancelled:", "closed"}, log)
    assert.equal("cancelled", t:status())
    assert.is_false(t:cancel())
  end)

  it("never runs a task cancelled before it started", function()
    local ran = false
    local t = spawn(function() ran = true end)
    t:cancel()
    local ok, err = pcall(t.wait, t)
    assert.is_false(ok)
    assert.matches("^cancelled", err)
    assert.is_false(ran)
    assert.equal("cancelled", t:status())
  end)

  it("is sticky: a pcall retry loop cannot keep a cancelled task alive", function()
    local tries = 0
    local t = spawn(function()
      for _ = 1, 100 do
        tries = tries + 1
        pcall(sleep, 10)
      end
      return "survived"
    end)
    sleep(0.01)
    t:cancel()
    local ok = pcall(t.wait, t)
    -- every later sleep raises at once, so the loop ends quickly
    assert.is_true(ok) -- the body caught every cancel and returned
    assert.equal(100, tries)
  end)

  it("cancels the children of a cancelled task", function()
    local log = {}
    local parent = spawn(function()
      spawn(function()
        local c <close> = closer(log, "child closed")
        sleep(10)
      end)
      sleep(10)
    end)
    sleep(0.01)
    parent:cancel()
    pcall(parent.wait, parent)
    assert.same({"child closed"}, log)
  end)
end)

describe("structured concurrency", function()
  after_each(function() H.assert_clean() end)

  it("does not finish a task before its children", function()
    local log = {}
    local t = spawn(function()
      spawn(function() sleep(0.05) log[#log + 1] = "child done" end)
      log[#log + 1] = "body done"
    end)
    t:wait()
    assert.same({"body done", "child done"}, log)
  end)

  it("cancels the parent and siblings when a child fails unwatched, and the parent re-raises it", function()
    local log = {}
    local t = spawn(function()
      spawn(function() sleep(0.02) error({reason = "child"}) end)
      spawn(function()
        local c <close> = closer(log, "sibling closed")
        sleep(10)
      end)
      local ok, err = pcall(sleep, 10)
      log[#log + 1] = "parent saw " .. tostring(err):match("^%a+")
    end)
    local ok, err = pcall(t.wait, t)
    assert.is_false(ok)
    assert.same({reason = "child"}, err)
    table.sort(log)
    assert.same({"parent saw cancelled", "sibling closed"}, log)
    assert.equal("failed", t:status())
  end)

  it("lets a waited-for child's error go to its waiter only", function()
    local t = spawn(function()
      local c = spawn(function() sleep(0.01) error("handled") end)
      local ok, err = pcall(c.wait, c)
      sleep(0.01)
      return ok, err
    end)
    local ok, err = t:wait()
    assert.is_false(ok)
    assert.matches("handled", err)
  end)

  it("lets a detached task outlive the task that spawned it", function()
    local done = false
    local d
    local t = spawn(function()
      d = spawn(function() sleep(0.05) done = true end):detach()
    end)
    t:wait()
    t:cancel()
    d:wait()
    assert.is_true(done)
  end)
end)

describe("errors", function()
  it("report the task and where it was spawned", function()
    local out, err, code = H.run({"-e", [[
      local t = spawn(function() sleep(0.01) error("deep failure") end)
      sleep(1)
    ]]})
    assert.equal(1, code)
    assert.matches("deep failure", err)
    assert.matches("stack traceback", err)
    assert.matches("in task %d+ spawned at %(command line%):1", err)
    assert.equal("", out)
  end)
end)
