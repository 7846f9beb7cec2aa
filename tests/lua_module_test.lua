-- The Lua C module from a plain lua5.4: require "asynchost" attaches a
-- host to the interpreter's state; ah.run drives the loop.
--   LUA_CPATH=build/lua/?.so lua5.4 tests/lua_module_test.lua
local ah = require "asynchost"

local passed, failed = 0, 0
local function test(name, fn)
  local ok, err = pcall(fn)
  if ok then
    passed = passed + 1
    print("ok - " .. name)
  else
    failed = failed + 1
    print("not ok - " .. name .. ": " .. tostring(err))
  end
end

local function eq(a, b, what)
  if a ~= b then
    error(("%s: expected %s, got %s"):format(what or "value", tostring(b), tostring(a)), 2)
  end
end

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching " .. pattern)
  assert(tostring(err):find(pattern), "error '" .. tostring(err) .. "' does not match " .. pattern)
  return err
end

test("require gives the asynchost table without globals", function()
  eq(type(ah), "table")
  eq(ah.version, "0.1.0", "version")
  for _, name in ipairs { "run", "sleep", "now", "spawn", "gather", "wait", "timeout",
                          "queue", "semaphore", "stats" } do
    eq(type(ah[name]), "function", name)
  end
  eq(rawget(_G, "sleep"), nil, "global sleep")
  eq(require "asynchost", ah, "second require")
  package.loaded.asynchost = nil
  eq(require "asynchost", ah, "require after clearing package.loaded")
end)

test("run returns the function's results", function()
  local n, a, b, c = (function(...) return select("#", ...), ... end)(
    ah.run(function(x, y) ah.sleep(0.01) return x + y, nil, "z" end, 40, 2))
  eq(n, 3, "count")
  eq(a, 42)
  eq(b, nil)
  eq(c, "z")
end)

test("run waits for the function's children", function()
  local done = {}
  local r = ah.run(function()
    for i = 1, 3 do
      ah.spawn(function() ah.sleep(0.01 * i) done[#done + 1] = i end)
    end
    return "parent returned"
  end)
  eq(r, "parent returned")
  eq(#done, 3, "children finished")
  eq(table.concat(done, ","), "1,2,3", "order")
end)

test("tasks in run interleave on one loop", function()
  local order = {}
  local res = ah.run(function()
    return ah.gather({ 0.03, 0.01, 0.02 }, function(s)
      ah.sleep(s)
      order[#order + 1] = s
      return s * 100
    end)
  end)
  eq(table.concat(order, ","), "0.01,0.02,0.03", "finish order")
  eq(math.floor(res[1] + 0.5), 3, "results keep the list order")
  eq(math.floor(res[3] + 0.5), 2)
end)

test("run raises the function's error value", function()
  raises("boom", ah.run, function() ah.sleep(0.01) error("boom") end)
  local e = {}
  local ok, err = pcall(ah.run, function() error(e) end)
  eq(ok, false)
  eq(err, e, "the same error object")
end)

test("a failing child fails run", function()
  raises("child failed here", ah.run, function()
    ah.spawn(function() ah.sleep(0.01) error("child failed here") end)
    ah.sleep(5)
  end)
end)

test("timeout inside run cancels and returns timeout", function()
  local r, err = ah.run(function() return ah.timeout(0.01, ah.sleep, 5) end)
  eq(r, nil)
  assert(err:match("^timeout:"), err)
  eq(ah.stats().timers, 0, "no timer left")
end)

test("async functions outside run raise", function()
  raises("sleep: not inside a task", ah.sleep, 0.01)
end)

test("run inside a task raises", function()
  raises("already inside a task", ah.run, function()
    return ah.run(function() end)
  end)
end)

test("run with no function raises", function()
  raises("bad argument #1", ah.run, 42)
end)

test("run reports a deadlock instead of hanging", function()
  local q = ah.queue(1)
  raises("deadlock", ah.run, function() return q:get() end)
  eq(ah.stats().tasks, 0, "the stuck task was cancelled")
end)

test("run works from inside a plain coroutine", function()
  local co = coroutine.create(function(x)
    return ah.run(function() ah.sleep(0.01) return x * 2 end)
  end)
  local ok, v = coroutine.resume(co, 21)
  eq(ok, true)
  eq(v, 42)
end)

test("task-aware coroutines inside run", function()
  local a, b = ah.run(function()
    local gen = coroutine.wrap(function()
      ah.sleep(0.01)
      coroutine.yield(1)
      ah.sleep(0.01)
      coroutine.yield(2)
    end)
    return gen(), gen()
  end)
  eq(a, 1)
  eq(b, 2)
end)

test("os.exit inside run exits the interpreter with its code", function()
  local lua = arg[-1] or "lua5.4"
  local cmd = ("%s -e \"local ah = require 'asynchost' "
    .. "ah.run(function() ah.sleep(0.01) io.write('before ') os.exit(3, true) end) "
    .. "print('not reached')\""):format(lua)
  local p = io.popen(cmd)
  local out = p:read("a")
  local _, how, code = p:close()
  eq(out, "before ", "output")
  eq(how, "exit")
  eq(code, 3, "exit code")
end)

if ah.fetch and os.getenv("AH_TEST_ORIGIN") then
  test("fetch works under run", function()
    local res, err = ah.run(function()
      return ah.fetch(os.getenv("AH_TEST_ORIGIN") .. "/ping", { timeout = 10 })
    end)
    assert(res, err)
    eq(res.status, 200, "status")
  end)
end

test("nothing is left after run", function()
  local s = ah.stats()
  eq(s.tasks, 0, "tasks")
  eq(s.timers, 0, "timers")
end)

-- Left running on purpose: closing the state (at exit) frees the host,
-- which cancels it; the leak checkers see that nothing is lost.
ah.spawn(function() ah.sleep(100) end)

print(("%d passed, %d failed"):format(passed, failed))
os.exit(failed == 0 and 0 or 1, true)
