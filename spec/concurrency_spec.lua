-- gather, wait, timeout, queue, semaphore, and async calls inside user
-- coroutines.
local H = require("spec.support.helper")
local ah = require("asynchost")

local function closer(log, name)
  return setmetatable({}, {__close = function() log[#log + 1] = name end})
end

describe("gather", function()
  after_each(function() H.assert_clean() end)

  it("runs a list of functions and returns their first results in order", function()
    local r = gather({
      function() sleep(0.03) return "a", "ignored" end,
      function() sleep(0.01) return "b" end,
      function() return "c" end,
    })
    assert.same({"a", "b", "c", n = 3}, r)
  end)

  it("maps a function over a list with the index", function()
    local r = gather({10, 20, 30}, function(x, i) sleep(0.001 * i) return x + i end)
    assert.same({11, 22, 33, n = 3}, r)
  end)

  it("accepts tasks that already run, and ones that are already done", function()
    local done = spawn(function() return "early" end)
    done:wait()
    local t = spawn(function() sleep(0.01) return "late" end)
    assert.same({"early", "late", n = 2}, gather({done, t}))
  end)

  it("keeps holes for nil results and counts them in .n", function()
    local r = gather({function() return nil end, function() return 2 end, function() end})
    assert.equal(3, r.n)
    assert.is_nil(r[1])
    assert.equal(2, r[2])
    assert.is_nil(r[3])
  end)

  it("never runs more than opts.limit at once", function()
    local running, peak = 0, 0
    local list = {}
    for i = 1, 40 do list[i] = i end
    local r = gather(list, function(i)
      running = running + 1
      peak = math.max(peak, running)
      sleep(0.002)
      running = running - 1
      return i * i
    end, {limit = 5})
    assert.equal(5, peak)
    assert.equal(40, r.n)
    assert.equal(1600, r[40])
  end)

  it("cancels the siblings of a failing task and re-raises its error", function()
    local log = {}
    local e = {"the error"}
    local ok, err = pcall(gather, {
      function() sleep(0.02) error(e) end,
      function()
        local c <close> = closer(log, "sibling closed")
        sleep(10)
        log[#log + 1] = "never"
      end,
    })
    assert.is_false(ok)
    assert.equal(e, err)
    assert.same({"sibling closed"}, log)
  end)

  it("with settle never raises and returns results and errors", function()
    local results, errors = gather({
      function() return "ok" end,
      function() return nil, "http: 500" end,
      function() error("boom", 0) end,
    }, {settle = true})
    assert.same({"ok", n = 3}, results)
    assert.equal(3, errors.n)
    assert.is_nil(errors[1])
    assert.equal("http: 500", errors[2])
    assert.equal("boom", errors[3])
  end)

  it("raises for bad arguments and bad elements", function()
    assert.has_error(function() gather(nil) end)
    local ok, err = pcall(gather, {1})
    assert.is_false(ok)
    assert.matches("bad element #1 %(function or task expected, got number%)", err)
    ok, err = pcall(gather, {}, {limit = 0})
    assert.is_false(ok)
    assert.matches("limit", err)
  end)

  it("cancels its tasks when it is cancelled", function()
    local log = {}
    local t = spawn(function()
      gather({function()
        local c <close> = closer(log, "child closed")
        sleep(10)
      end})
    end)
    sleep(0.01)
    t:cancel()
    assert.has_error(function() t:wait() end)
    assert.same({"child closed"}, log)
  end)

  it("handles ten thousand tasks", function()
    local list = {}
    for i = 1, 10000 do list[i] = i end
    local r = gather(list, function(i) sleep(0.01) return i end)
    local sum = 0
    for i = 1, r.n do sum = sum + r[i] end
    assert.equal(10000 * 10001 / 2, sum)
  end)
end)

describe("wait", function()
  after_each(function() H.assert_clean() end)

  it("returns when the first task is done, cancelling nothing", function()
    local a = spawn(function() sleep(0.01) return "a" end)
    local b = spawn(function() sleep(0.2) return "b" end)
    local done, pending = wait({a, b}, {return_when = "first"})
    assert.equal(1, #done)
    assert.equal(a, done[1])
    assert.equal(b, pending[1])
    assert.equal("running", b:status())
    assert.equal("b", b:wait())
  end)

  it("waits for all by default", function()
    local a = spawn(function() sleep(0.01) end)
    local b = spawn(function() sleep(0.02) end)
    local done, pending = wait({a, b})
    assert.equal(2, #done)
    assert.equal(0, #pending)
  end)

  it("returns at the first error with return_when = error", function()
    local a = spawn(function() sleep(0.01) error("x") end)
    local b = spawn(function() sleep(5) end)
    local done, pending = wait({a, b}, {return_when = "error"})
    assert.same({a}, done)
    assert.same({b}, pending)
    b:cancel()
    assert.has_error(function() a:wait() end)
    pcall(b.wait, b)
  end)

  it("gives up at its timeout", function()
    local a = spawn(function() sleep(5) end)
    local t0 = now()
    local done, pending = wait({a}, {timeout = 0.02})
    assert.equal(0, #done)
    assert.equal(1, #pending)
    assert.is_true(now() - t0 < 2)
    a:cancel()
    pcall(a.wait, a)
  end)

  it("raises for a list element that is not a task", function()
    local ok, err = pcall(wait, {function() end})
    assert.is_false(ok)
    assert.matches("task expected", err)
  end)
end)

describe("timeout", function()
  after_each(function() H.assert_clean() end)

  it("returns the function's results when it finishes in time", function()
    assert.same({1, 2}, {timeout(1, function(a) sleep(0.01) return a, 2 end, 1)})
  end)

  it("cancels the pending operation at expiry and returns nil, timeout", function()
    local log = {}
    local t0 = now()
    local r, err = timeout(0.02, function()
      local c <close> = closer(log, "closed")
      sleep(10)
      log[#log + 1] = "never"
    end)
    assert.is_nil(r)
    assert.matches("^timeout: ", err)
    assert.same({"closed"}, log)
    assert.is_true(now() - t0 < 2)
    assert.equal(0, ah.stats().timers)
  end)

  it("lets the task go on normally afterwards", function()
    assert.is_nil((timeout(0.01, sleep, 1)))
    sleep(0.01)
    assert.equal("fine", timeout(1, function() sleep(0.01) return "fine" end))
  end)

  it("is sticky inside its scope: a pcall cannot swallow it", function()
    local tries = 0
    local r, err = timeout(0.02, function()
      for _ = 1, 50 do
        tries = tries + 1
        pcall(sleep, 1)
      end
      return "loop ended"
    end)
    assert.equal(50, tries)
    -- the deadline passed: timeout knows it by its flag, whatever fn returned
    assert.is_nil(r)
    assert.matches("^timeout: ", err)
  end)

  it("knows its expiry by its flag, not by the error fn raised", function()
    local r, err = timeout(0.02, function()
      local _, e = pcall(sleep, 1)
      error("wrapped: " .. tostring(e))
    end)
    assert.is_nil(r)
    assert.matches("^timeout: ", err)
    -- an error before the deadline is the function's own
    assert.has_error(function() timeout(1, error, "boom", 0) end, "boom")
  end)

  it("never lets an inner deadline outlast the outer one", function()
    local t0 = now()
    local inner_result
    local r, err = timeout(0.05, function()
      inner_result = {timeout(10, function() sleep(5) end)}
      return "outer body finished"
    end)
    assert.is_nil(r)
    assert.matches("^timeout", err)
    assert.is_nil(inner_result) -- the outer expiry went through the inner timeout
    assert.is_true(now() - t0 < 2)
  end)

  it("returns the inner timeout when it is the shorter one", function()
    local r = timeout(5, function()
      local a, e = timeout(0.01, sleep, 5)
      return e
    end)
    assert.matches("^timeout", r)
  end)

  it("re-raises other errors unchanged", function()
    local e = {}
    local ok, err = pcall(timeout, 1, function() error(e) end)
    assert.is_false(ok)
    assert.equal(e, err)
  end)

  it("cancels the tasks of a gather inside it", function()
    local log = {}
    local r, err = timeout(0.02, gather, {function()
      local c <close> = closer(log, "closed")
      sleep(10)
    end})
    assert.is_nil(r)
    assert.matches("^timeout", err)
    H.assert_clean()
    assert.same({"closed"}, log)
  end)

  it("raises for bad arguments", function()
    assert.has_error(function() timeout("x", function() end) end)
    assert.has_error(function() timeout(1) end)
  end)
end)

describe("queue", function()
  after_each(function() H.assert_clean() end)

  it("passes values between tasks in FIFO order, waiting while full", function()
    local q = queue(2)
    local producer = spawn(function()
      for i = 1, 10 do assert(q:put(i)) end
      q:put(nil)
      q:close()
    end)
    local got = {}
    while true do
      local v, err = q:get()
      if err then
        assert.matches("^closed: ", err)
        break
      end
      got[#got + 1] = v == nil and "nil" or v
    end
    producer:wait()
    assert.same({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, "nil"}, got)
  end)

  it("bounds what waits in it", function()
    local q = queue(3)
    for i = 1, 3 do q:put(i) end
    assert.equal(3, #q)
    local r, err = timeout(0.02, q.put, q, 4)
    assert.is_nil(r)
    assert.matches("^timeout", err)
    assert.equal(3, #q)
  end)

  it("wakes waiters on close; put then fails and get drains first", function()
    local q = queue()
    local getter = spawn(function() return q:get() end)
    sleep(0.01)
    q:close()
    local v, err = getter:wait()
    assert.is_nil(v)
    assert.matches("^closed", err)
    local q2 = queue()
    q2:put("left")
    q2:close()
    local ok, perr = q2:put("more")
    assert.is_nil(ok)
    assert.matches("^closed", perr)
    assert.equal("left", q2:get())
    assert.is_nil((q2:get()))
  end)

  it("does not lose an item when a waiting getter is cancelled", function()
    local q = queue()
    local g1 = spawn(function() return q:get() end)
    local g2 = spawn(function() return q:get() end)
    sleep(0.01)
    q:put("item")
    g1:cancel()
    pcall(g1.wait, g1)
    assert.equal("item", g2:wait())
  end)
end)

describe("semaphore", function()
  after_each(function() H.assert_clean() end)

  it("limits how many tasks hold it", function()
    local s = semaphore(2)
    local holding, peak = 0, 0
    local list = {}
    for i = 1, 10 do list[i] = i end
    gather(list, function()
      s:with(function()
        holding = holding + 1
        peak = math.max(peak, holding)
        sleep(0.005)
        holding = holding - 1
      end)
    end)
    assert.equal(2, peak)
    assert.equal(2, s:count())
  end)

  it("releases when the function raises", function()
    local s = semaphore(1)
    local ok, err = pcall(s.with, s, function() error("inside") end)
    assert.is_false(ok)
    assert.matches("inside", err)
    assert.equal(1, s:count())
  end)

  it("does not give a permit to a waiter that was cancelled", function()
    local s = semaphore(1)
    s:acquire()
    local w1 = spawn(function() s:acquire() return "w1" end)
    local w2 = spawn(function() s:acquire() return "w2" end)
    sleep(0.01)
    w1:cancel()
    s:release()
    assert.equal("w2", w2:wait())
    pcall(w1.wait, w1)
    s:release()
    assert.equal(1, s:count())
  end)
end)

describe("async calls in coroutines", function()
  after_each(function() H.assert_clean() end)

  it("work inside a coroutine.wrap generator", function()
    local gen = coroutine.wrap(function()
      for i = 1, 3 do
        sleep(0.001)
        coroutine.yield(i)
      end
    end)
    assert.same({1, 2, 3}, {gen(), gen(), gen()})
  end)

  it("pass through nested coroutines and keep coroutine.resume's results", function()
    local inner = coroutine.create(function(a)
      sleep(0.001)
      local b = coroutine.yield(a + 1)
      sleep(0.001)
      return b * 2
    end)
    local outer = coroutine.wrap(function()
      local ok, v = coroutine.resume(inner, 1)
      sleep(0.001)
      local ok2, w = coroutine.resume(inner, 10)
      return v, w, ok and ok2
    end)
    assert.same({2, 20, true}, {outer()})
  end)

  it("are cancelled through the coroutine", function()
    local log = {}
    local t = spawn(function()
      local co = coroutine.wrap(function()
        local c <close> = closer(log, "closed")
        sleep(10)
      end)
      co()
    end)
    sleep(0.01)
    t:cancel()
    local ok, err = pcall(t.wait, t)
    assert.is_false(ok)
    assert.matches("^cancelled", err)
    assert.same({"closed"}, log)
  end)

  it("refuse to resume a coroutine that waits in an async call", function()
    local co = coroutine.create(function() sleep(0.05) end)
    local t = spawn(function() return coroutine.resume(co) end)
    sleep(0.01)
    local ok, err = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("waits in an async call", err)
    assert.is_true((t:wait()))
  end)

  it("raise a clear error inside a table.sort comparator", function()
    local ok, err = pcall(table.sort, {3, 1, 2}, function(a, b) sleep(0) return a < b end)
    assert.is_false(ok)
    assert.matches("cannot suspend inside a callback", err)
    assert.not_matches("C%-call boundary", err)
  end)

  it("raise a clear error inside a string.gsub callback", function()
    local ok, err = pcall(string.gsub, "abc", "%w", function() sleep(0) end)
    assert.is_false(ok)
    assert.matches("cannot suspend", err)
  end)

  it("raise a clear error inside __gc", function()
    local out, err, code = H.run({"-e", [[
      setmetatable({}, {__gc = function() local ok, e = pcall(sleep, 0) print(ok, e) end})
      collectgarbage() collectgarbage()
    ]]})
    assert.equal(0, code, err)
    assert.matches("false\t.*cannot suspend inside a __gc", out)
  end)

  it("work at the top level of a required module", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local f = assert(io.open(dir .. "/slowmod.lua", "w"))
    f:write("sleep(0.01) return {ready = true}\n")
    f:close()
    local saved = package.path
    package.path = dir .. "/?.lua;" .. package.path
    local m = require("slowmod")
    package.path = saved
    package.loaded.slowmod = nil
    os.execute("rm -rf " .. dir)
    assert.is_true(m.ready)
  end)

end)
