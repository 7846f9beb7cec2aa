-- The http server under load, driven from outside: a python3 client
-- (spec/support/load_client.py) holds 10,000 idle keep-alive connections
-- to a server process of ours (spec/support/load_app.lua), each of them
-- having done one request, while slowloris clients trickle request heads
-- and 200 ordinary requests are timed. Every ordinary request must be
-- answered 200 within the p99 budget, the held connections must still be
-- served afterwards, and the slowloris ones must get 408 at the request
-- timeout. Both processes raise their descriptor limits themselves.
local H = require("spec.support.helper")
local ah = require("asynchost")

local TMP = H.env("AH_TEST_TMP")
local BIN = H.env("AH_TEST_BIN")
local PY = "/usr/bin/python3"
local q = H.shell_quote

local IDLE, SLOW, MEASURE = 10000, 20, 200
local P99_BUDGET_MS = 500 -- a correctness check on a noisy 2-core box, not a benchmark

-- The descriptors this machine lets a process have (the hard limit).
local function hard_nofile()
  local p = assert(io.popen("sh -c 'ulimit -Hn'"))
  local s = p:read("l")
  p:close()
  if s == "unlimited" then return math.huge end
  return tonumber(s) or 0
end
local NOFILE = math.min(30000, hard_nofile())
local enough = NOFILE >= IDLE + SLOW + 300
local load_it = enough and it or pending

local slurp = H.slurp

local wait_for = H.wait_for

local function join(t, secs, what)
  local deadline = ah.now() + secs
  while t:status() == "running" and ah.now() < deadline do ah.sleep(0.02) end
  if t:status() == "running" then
    t:cancel()
    error(what .. " still running after " .. secs .. " s")
  end
  return t:wait()
end

describe("the http server under load", function()
  after_each(function() H.assert_clean() end)

  load_it(("answers within %d ms p99 while holding %d keep-alive connections and %d slowloris")
    :format(P99_BUDGET_MS, IDLE, SLOW), function()
    local ready = TMP .. "/load_app.ready"
    os.remove(ready)
    local server = ah.spawn(function()
      return ah.exec({"sh", "-c", ("ulimit -n %d && exec %s spec/support/load_app.lua %s")
        :format(NOFILE, q(BIN), q(ready))}, {timeout = 90, kill_after = 1})
    end)
    local line = wait_for("the server to listen", function()
      if server:status() ~= "running" then
        local res, err = server:wait()
        error("the server exited: " .. (res and (res.code .. " " .. res.stderr) or err))
      end
      return slurp(ready)
    end)
    local port, pid = line:match("^(%d+) (%d+)")
    finally(function()
      if server:status() == "running" then os.execute("kill -KILL " .. pid) end
    end)

    local t0 = ah.now()
    local res, err = ah.exec({PY, "spec/support/load_client.py", port, tostring(IDLE),
      tostring(SLOW), tostring(MEASURE)}, {timeout = 60})
    assert(res, err)
    assert.are.equal(0, res.code, res.stderr)
    local r = ah.json.decode(res.stdout)
    local took = ah.now() - t0

    -- the server is still there, and stops cleanly on SIGTERM
    assert.are.equal("running", server:status())
    assert(os.execute("kill -TERM " .. pid))
    local sres = assert(join(server, 15, "the server"))
    assert.are.equal(0, sres.code, sres.stderr)
    assert.is_nil(sres.stderr:find("Sanitizer") or sres.stderr:find("runtime error:"),
      sres.stderr)

    local summary = ("held %d (first %s, opened in %s s), measured %d %s p50 %s ms p99 %s ms max %s ms, second %s, %.1f s")
      :format(r.held, ah.json.encode(r.first), r.opened_in, r.measured,
        ah.json.encode(r.statuses), r.p50_ms, r.p99_ms, r.max_ms, ah.json.encode(r.second), took)
    assert.are.equal(IDLE, r.held, summary)
    assert.are.same({["200"] = IDLE}, r.first, summary)
    assert.are.same({["200"] = MEASURE}, r.statuses, summary)
    assert.is_true(r.p99_ms < P99_BUDGET_MS, summary)
    -- every held connection was kept alive and answers again
    assert.are.same({["200"] = IDLE}, r.second, summary)
    -- the slowloris clients never got a response but the 408, at the timeout
    assert.are.equal(SLOW, #r.slowloris, summary)
    for _, s in ipairs(r.slowloris) do
      assert.are.equal(408, s.status, ah.json.encode(s))
      assert.is_true(s.closed)
      assert.is_true(s.seconds >= 2.5 and s.seconds < 9, ah.json.encode(s))
    end
    print("\n  load: " .. summary)
  end)
end)
