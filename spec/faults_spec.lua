-- Faults, each against real processes we did not write: python3's
-- http.server and socketserver (spec/support/fault_server.py), killed
-- with SIGKILL mid-transfer; a port that accepts and never answers
-- (services/blackhole.sh); nginx over TLS; the throwaway PostgreSQL
-- cluster restarted or terminating backends; child asynchost processes
-- under `ulimit -n 128` and SIGTERM. Every wait is bounded: a fault that
-- hangs fails its test instead of the suite.
-- (Faults specs elsewhere: closed mid-body, empty reply and a server that
-- never answers in fetch_spec; PostgreSQL restarted under a pool with one
-- query in flight and pg_terminate_backend of a pooled connection in
-- db_spec; slowloris 408, max_connections 503 and SIGTERM/SIGINT drains of
-- the http server in http_clients_spec.)
local H = require("spec.support.helper")
local ah = require("asynchost")
local db = ah.db
local sleep, spawn, gather, now = ah.sleep, ah.spawn, ah.gather, ah.now

local TMP = H.env("AH_TEST_TMP")
local BIN = H.env("AH_TEST_BIN")
local O = H.env("AH_TEST_ORIGIN")
local DSN = H.env("AH_TEST_PG")
local BLACKHOLE = H.env("AH_TEST_BLACKHOLE_PORT")
local TLS = os.getenv("AH_TEST_TLS_ORIGIN")
local PY = "/usr/bin/python3"
local q = H.shell_quote
local tls_it = TLS and it or pending

local function pat(s) return (s:gsub("%p", "%%%0")) end

local slurp = H.slurp

local wait_for = H.wait_for

-- Waits for a task at most secs seconds (then cancels it and fails):
-- returns what the task returned.
local function join(t, secs, what)
  local deadline = now() + (secs or 10)
  while t:status() == "running" and now() < deadline do sleep(0.01) end
  if t:status() == "running" then
    t:cancel()
    error((what or "a task") .. " still running after " .. (secs or 10) .. " s")
  end
  return t:wait()
end

local function alive(pid)
  return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true
end

local serial = 0
local RUN = math.random(1e9) -- busted --repeat loads this file again
local function tmpfile(name)
  serial = serial + 1
  return ("%s/faults_%d_%d_%s"):format(TMP, RUN, serial, name)
end

-- spec/support/fault_server.py MODE as a process of its own:
-- {port =, pid =, url =}; killed after the test if still alive.
local servers = {}
local function fault_server(mode)
  local ready = tmpfile(mode .. ".ready")
  os.execute(("%s spec/support/fault_server.py %s %s >/dev/null 2>&1 &"):format(
    PY, mode, q(ready)))
  local line = wait_for("fault_server.py " .. mode, function() return slurp(ready) end)
  local port, pid = line:match("^(%d+) (%d+)")
  local s = {port = tonumber(port), pid = tonumber(pid)}
  s.url = "http://127.0.0.1:" .. s.port
  servers[#servers + 1] = s
  return s
end

local function kill_servers()
  for i = #servers, 1, -1 do
    local s = table.remove(servers, i)
    if alive(s.pid) then os.execute("kill -KILL " .. s.pid) end
  end
end

-- A child asynchost running `src` under `ulimit -n nofile`, through the
-- exec binding (this loop keeps running; opts.limit bounds it: exec kills
-- it then). The script's ready(...) writes its pid and what it is given
-- to a file the test waits for.
local PRELUDE = [[
local READY = arg[1]
local ready
do -- opened now: later the script may have no descriptor left
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("l"):match("^(%d+)")
  f:close()
  local o = assert(io.open(READY .. ".tmp", "w"))
  function ready(...)
    o:write(table.concat({pid, ...}, " "), "\n")
    o:close()
    os.rename(READY .. ".tmp", READY)
  end
end
]]

local function child(src, opts)
  opts = opts or {}
  local script, ready = tmpfile("child.lua"), tmpfile("child.ready")
  local f = assert(io.open(script, "w"))
  f:write(PRELUDE, src)
  f:close()
  local cmd = ("ulimit -n %d && exec %s %s %s"):format(opts.nofile or 1024,
    q(BIN), q(script), q(ready))
  local c = {ready = ready}
  c.task = spawn(function()
    return ah.exec({"sh", "-c", cmd}, {timeout = opts.limit or 30, kill_after = 0.5})
  end)
  return c
end

-- The child's pid (and the rest of its ready line) once it is ready.
local function child_ready(c, secs)
  local line = wait_for("the child to be ready", function()
    if c.task:status() ~= "running" then
      local res, err = c.task:wait()
      error("the child exited before it was ready: " ..
        (res and (res.code .. "\n" .. res.stdout .. res.stderr) or err))
    end
    return slurp(c.ready)
  end, secs)
  local pid, rest = line:match("^(%d+) ?(.-)\n")
  return tonumber(pid), rest
end

-- The child's exec result, once it exited (within secs): no sanitizer
-- report, no Lua error report, no core dump.
local function child_result(c, secs)
  local res, err = join(c.task, secs or 20, "the child")
  assert(res, err)
  assert(not res.stderr:find("Sanitizer") and not res.stderr:find("runtime error:"),
    "sanitizer report:\n" .. res.stderr)
  assert(not res.stderr:find("stack traceback"), "an error in the child:\n" .. res.stderr)
  assert.are.equal(0, res.signal, "the child died of signal " .. res.signal .. ":\n" .. res.stderr)
  return res
end

local function sigterm(pid) assert(os.execute("kill -TERM " .. pid), "no process " .. pid) end

-- The PostgreSQL server's own view, through a connection of its own.
local function admin(sql, ...)
  local c <close> = assert(db.connect(DSN))
  local rows, err = c:query(sql, ...)
  assert(rows, err)
  return rows
end

describe("faults", function()
  after_each(function()
    kill_servers()
    H.assert_clean()
  end)

  describe("an origin killed with SIGKILL mid-transfer", function()
    it("fails the transfers in flight with closed: at once, and fetch goes on", function()
      local s = fault_server("origin")
      -- an idle keep-alive connection to it, which goes stale
      assert.are.equal("pong", assert(fetch(s.url .. "/ping")).body)
      local url = s.url .. "/trickle?total=10000000&chunk=2000&ms=20"
      local out = tmpfile("trickle.out")
      local mem = spawn(function() return fetch(url, {timeout = 20}) end)
      local file = spawn(function() return fetch(url, {timeout = 20, output = out}) end)
      wait_for("both bodies to flow", function()
        local f = io.open(out)
        local size = f and f:seek("end") or 0
        if f then f:close() end
        return size > 0
      end, 5)
      assert.are.equal(2, ah.stats().fetch)
      local t0 = now()
      assert(os.execute("kill -KILL " .. s.pid))
      local r1, e1 = join(mem, 5, "the fetch into memory")
      local r2, e2 = join(file, 5, "the fetch into a file")
      assert.is_true(now() - t0 < 2, "noticed after " .. (now() - t0) .. " s")
      assert.is_nil(r1)
      assert.matches("^closed: " .. pat(url) .. ": ", e1)
      assert.is_nil(r2)
      assert.matches("^closed: " .. pat(url) .. ": ", e2)
      os.remove(out)
      -- the dead origin is refused, not waited for on a stale connection
      local r3, e3 = fetch(s.url .. "/ping", {timeout = 5})
      assert.is_nil(r3)
      assert.matches("^connect: ", e3)
      assert.are.equal(0, ah.stats().fetch)
      assert.are.equal("pong", assert(fetch(O .. "/ping")).body)
    end)
  end)

  describe("a server that accepts and never answers", function()
    it("times out every fetch, http:// and https://, and leaves nothing", function()
      local base = "127.0.0.1:" .. BLACKHOLE
      local urls = {}
      for i = 1, 20 do
        urls[i] = (i % 2 == 0 and "https://" or "http://") .. base .. "/n" .. i
      end
      local t0 = now()
      local res, errs = gather(urls, function(u) return fetch(u, {timeout = 0.5}) end,
        {settle = true})
      local took = now() - t0
      assert.is_true(took >= 0.45 and took < 3, "took " .. took)
      for i = 1, 20 do
        assert.is_nil(res[i])
        assert.matches("^timeout: " .. pat(urls[i]) .. ": ", errs[i])
      end
      assert.are.equal(0, ah.stats().fetch)
      assert.are.equal("pong", assert(fetch(O .. "/ping")).body)
    end)

    it("ends a fetch without a timeout when its task is cancelled", function()
      local t = spawn(function() return fetch("http://127.0.0.1:" .. BLACKHOLE .. "/") end)
      sleep(0.2)
      assert.are.equal("running", t:status())
      t:cancel()
      local ok, err = pcall(t.wait, t)
      assert.is_false(ok)
      assert.matches("^cancelled", err)
      assert.are.equal(0, ah.stats().fetch)
    end)
  end)

  describe("a wrong Content-Length", function()
    local raw
    before_each(function() raw = fault_server("raw") end)

    it("times out a body shorter than its length on a connection kept open", function()
      local t0 = now()
      local res, err = fetch(raw.url .. "/short", {timeout = 0.5})
      assert.is_nil(res)
      assert.matches("^timeout: " .. pat(raw.url) .. "/short: .*10 out of 100 bytes", err)
      assert.is_true(now() - t0 < 3)
    end)

    it("reads no more than the length, and never takes the rest for the next response", function()
      for _ = 1, 3 do
        local res = assert(fetch(raw.url .. "/long"))
        assert.are.equal(200, res.status)
        assert.are.equal("hello", res.body)
        -- the bytes after the body were a whole response ("smuggled"):
        -- the connection they came on is not used again
        local nxt = assert(fetch(raw.url .. "/next"))
        assert.are.equal("clean", nxt.body)
        assert.are.equal("/next", nxt.headers["x-path"])
      end
    end)

    it("fails a length that is not a number with http:", function()
      for _, path in ipairs({"/badlen", "/neglen"}) do
        local res, err = fetch(raw.url .. path, {timeout = 5})
        assert.is_nil(res)
        assert.matches("^http: " .. pat(raw.url .. path) .. ": .*Content%-Length", err)
      end
      assert.are.equal("clean", assert(fetch(raw.url .. "/next")).body)
    end)

    it("fails two different lengths with http:, naming the URL", function()
      local res, err = fetch(raw.url .. "/duplen", {timeout = 5})
      assert.is_nil(res)
      assert.are.equal("http: " .. raw.url .. "/duplen: conflicting Content-Length headers", err)
      assert.are.equal("clean", assert(fetch(raw.url .. "/next")).body)
    end)
  end)

  describe("TLS and plain text crossed", function()
    it("fails https:// to a plain-HTTP port with tls:, quickly", function()
      local url = O:gsub("^http:", "https:") .. "/ping"
      local t0 = now()
      local res, err = fetch(url, {timeout = 5})
      assert.is_nil(res)
      assert.matches("^tls: " .. pat(url) .. ": ", err)
      assert.is_true(now() - t0 < 2)
      assert.are.equal("pong", assert(fetch(O .. "/ping")).body)
    end)

    tls_it("gets nginx's 400 for http:// to its TLS port: a response", function()
      local url = TLS:gsub("^https:", "http:") .. "/ping"
      local res, err = fetch(url, {timeout = 5})
      assert(res, err)
      assert.are.equal(400, res.status)
      assert.matches("HTTPS port", res.body)
    end)

    it("fails sslmode=require against a PostgreSQL without TLS with connect:", function()
      local c, err = db.connect(DSN .. "?sslmode=require")
      assert.is_nil(c)
      assert.matches("^connect: .*server does not support SSL, but SSL was required", err)
    end)
  end)

  describe("PostgreSQL", function()
    it("ends the waiters of a LISTENing connection whose backend is terminated", function()
      local l <close> = assert(db.connect(DSN))
      assert.is_true(l:listen("faults_chan"))
      local pid = l:pid()
      local forever = spawn(function() return l:notification() end)
      local bounded = spawn(function() return l:notification(30) end)
      sleep(0.1)
      local t0 = now()
      admin("select pg_terminate_backend($1)", pid)
      for _, t in ipairs({forever, bounded}) do
        local got, err = join(t, 5, "a notification waiter")
        assert.is_nil(got)
        assert.matches("^db: connection lost", err)
      end
      assert.is_true(now() - t0 < 2)
      -- and every later call on it fails at once
      local got, err = l:notification()
      assert.is_nil(got)
      assert.matches("^db: ", err)
      local rows, qerr = l:query("select 1")
      assert.is_nil(rows)
      assert.matches("^db: ", qerr)
    end)

    it("ends a pooled LISTEN the same way, and the pool lends a new connection", function()
      local p = db.pool{dsn = DSN, size = 1}
      local pid
      local t = spawn(function()
        return p:with(function(c)
          assert(c:listen("faults_pool_chan"))
          pid = c:pid()
          return c:notification()
        end)
      end)
      wait_for("the pooled listener", function() return pid end, 5)
      sleep(0.05)
      admin("select pg_terminate_backend($1)", pid)
      local got, err = join(t, 5, "the pooled listener")
      assert.is_nil(got)
      assert.matches("^db: connection lost", err)
      local rows = assert(p:query("select pg_backend_pid() as p"))
      assert.are_not.equal(pid, rows[1].p)
      p:close()
    end)

    it("stops every cancelled query pipelined on a pool's connections on the server", function()
      local p = db.pool{dsn = DSN, size = 2}
      local tasks = {}
      for i = 1, 6 do
        tasks[i] = spawn(function() return p:query("select pg_sleep(30) as faults_pipelined") end)
      end
      sleep(0.3)
      for _, t in ipairs(tasks) do t:cancel() end
      for _, t in ipairs(tasks) do assert.has_error(function() t:wait() end) end
      -- no connection stays busy with a query nobody waits for
      wait_for("the cancelled queries to stop on the server", function()
        return admin("select count(*) as n from pg_stat_activity where state = 'active' "
          .. "and query like 'select pg_sleep(30) as faults_pipelined%'")[1].n == 0
      end, 5)
      local t0 = now()
      assert.are.equal(1, assert(p:query("select 1 as x"))[1].x)
      assert.is_true(now() - t0 < 2)
      p:close()
    end)

    it("fails a pool's queries in flight with db: when the server stops at once, then recovers", function()
      local p = db.pool{dsn = DSN, size = 4}
      assert(p:query("select 1"))
      -- 4 running queries and 8 more waiting for a connection
      local tasks = {}
      for i = 1, 12 do
        tasks[i] = spawn(function() return p:query("select pg_sleep(20), $1::int as i", i) end)
      end
      sleep(0.3)
      local marker = tmpfile("pg_restart")
      os.execute(("(%s -D %s -l %s -w -t 60 -m immediate restart >/dev/null 2>&1; echo $? > %s) &")
        :format(H.env("AH_TEST_PG_CTL"), q(H.env("AH_TEST_PG_DATA")),
          q(H.env("AH_TEST_PG_SOCKET") .. "/log"), q(marker)))
      finally(function() -- the later specs need the server back
        wait_for("the restart", function() return (slurp(marker) or ""):match("%d") end, 60)
      end)
      local t0 = now()
      local lost = 0
      for i = 1, 12 do
        local rows, err = join(tasks[i], 30, "query " .. i)
        if rows then
          assert.are.equal(i, rows[1].i) -- only possible if it ran after the restart
        else
          assert.matches("^[a-z]+: ", err)
          if err:match("^db: connection lost") then lost = lost + 1 end
        end
      end
      assert.is_true(lost >= 4, lost .. " of the running queries lost their connection")
      assert.is_true(now() - t0 < 25, "the queries in flight took " .. (now() - t0) .. " s")
      assert.are.equal("0", wait_for("the restart", function()
        return (slurp(marker) or ""):match("%d+")
      end, 60))
      -- the pool recovers by itself
      local rows = wait_for("the pool to recover", function()
        local r, err = p:query("select 42 as x")
        if not r then assert.matches("^[a-z]+: ", err) end
        return r
      end, 30)
      assert.are.equal(42, rows[1].x)
      local all = gather({1, 2, 3, 4, 5, 6}, function(i)
        return assert(p:query("select $1::int as i", i))[1].i
      end)
      assert.are.same({1, 2, 3, 4, 5, 6, n = 6}, all)
      p:close()
    end)
  end)

  describe("fd exhaustion (ulimit -n 128)", function()
    it("reports 500 concurrent fetches' failures as errors and recovers", function()
      local c = child(([[
        local O = %q
        local list = {}
        for i = 1, 500 do list[i] = i end
        local res, errs = gather(list, function(i)
          return fetch(O .. "/delay?ms=300&body=" .. i, {timeout = 10})
        end, {settle = true, limit = 1000})
        local ok, kinds = 0, {}
        for i = 1, 500 do
          if res[i] then
            assert(res[i].body == tostring(i))
            ok = ok + 1
          else
            local k = assert(errs[i]:match("^(%%a+): "), errs[i])
            kinds[k] = (kinds[k] or 0) + 1
            if errs[i]:find("Too many open files", 1, true) then
              kinds.emfile = (kinds.emfile or 0) + 1
            end
          end
        end
        print("ok", ok)
        for k, v in pairs(kinds) do print("err", k, v) end
        -- the fds are free again: fetch and db work
        print("after", assert(fetch(O .. "/ping")).body)
        local conn = assert(db.connect(os.getenv("AH_TEST_PG")))
        print("db", conn:query("select 7 as x")[1].x)
      ]]):format(O), {nofile = 128})
      local res = child_result(c, 30)
      assert.are.equal(0, res.code, res.stderr)
      local ok = tonumber(res.stdout:match("ok\t(%d+)"))
      assert.is_true(ok > 0 and ok < 500, "succeeded: " .. tostring(ok))
      local failed = 0
      for kind, n in res.stdout:gmatch("err\t(%a+)\t(%d+)") do
        if kind ~= "emfile" then
          assert.are.equal("connect", kind) -- socket() failing with EMFILE
          failed = failed + tonumber(n)
        end
      end
      assert.are.equal(500, ok + failed)
      -- the message says why: "connect: <url>: ... (socket: Too many open files)"
      assert.are.equal(failed, tonumber(res.stdout:match("err\temfile\t(%d+)")))
      assert.matches("after\tpong\n", res.stdout)
      assert.matches("db\t7\n", res.stdout)
    end)

    it("reports a pool's connections that cannot open as errors and recovers", function()
      local c = child(([[
        local O, DSN = %q, os.getenv("AH_TEST_PG")
        local hold = {}
        -- take every fd there is with fetches that wait
        local waiting = {}
        for i = 1, 200 do
          waiting[i] = spawn(function() return fetch(O .. "/delay?ms=1500", {timeout = 10}) end)
        end
        sleep(0.5)
        local p = db.pool{dsn = DSN, size = 4}
        local rows, err = p:query("select 1 as x")
        print("starved", rows and "rows" or err:match("^(%%a+):"))
        for _, t in ipairs(waiting) do t:wait() end
        rows = assert(p:query("select 2 as x"))
        print("recovered", rows[1].x)
        p:close()
      ]]):format(O), {nofile = 128})
      local res = child_result(c, 30)
      assert.are.equal(0, res.code, res.stderr)
      assert.matches("starved\tconnect\n", res.stdout)
      assert.matches("recovered\t2\n", res.stdout)
    end)
  end)

  describe("fd exhaustion in the http server (ulimit -n 64)", function()
    it("closes the connections it has no descriptor for, serves the rest, then serves again", function()
      local c = child([[
        local app = http.server{max_connections = 1000}
        app:get("/", function() return {ok = true} end)
        assert(app:listen{host = "127.0.0.1", port = 0})
        ready(app.port)
      ]], {nofile = 64})
      local pid, port = child_ready(c)
      local res, err = ah.exec({PY, "-c", [[
import json, socket, sys, time
port = int(sys.argv[1])
socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
got = {"ok": 0, "closed": 0, "silent": 0, "other": 0}
for s in socks:
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    except OSError:
        pass
for s in socks:
    s.settimeout(3)
    try:
        d = s.recv(1000)
        got["ok" if d.startswith(b"HTTP/1.1 200 ") else "closed" if not d else "other"] += 1
    except socket.timeout:
        got["silent"] += 1
    except OSError:
        got["closed"] += 1
for s in socks:
    s.close()
time.sleep(0.2)
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
got["after"] = s.recv(1000)[:12].decode()
print(json.dumps(got))
]], port}, {timeout = 30})
      assert(res, err)
      assert.are.equal(0, res.code, res.stderr)
      local got = ah.json.decode(res.stdout)
      assert.is_true(got.ok > 0, res.stdout)
      assert.are.equal(200, got.ok + got.closed, res.stdout)
      assert.are.equal("HTTP/1.1 200", got.after)
      sigterm(pid)
      assert.are.equal(0, child_result(c, 15).code)
    end)
  end)

  describe("SIGTERM", function()
    it("lets fetches in flight finish, then exits 0", function()
      local c = child(([[
        local list = {}
        for i = 1, 20 do list[i] = i end
        local t = spawn(function()
          return gather(list, function(i) return fetch(%q .. "/delay?ms=800&body=" .. i).body end)
        end)
        ready()
        local got = t:wait()
        print("done", #got, got[20])
      ]]):format(O))
      local pid = child_ready(c)
      local t0 = now()
      sigterm(pid)
      local res = child_result(c, 15)
      assert.are.equal(0, res.code)
      assert.are.equal("done\t20\t20\n", res.stdout)
      assert.is_true(now() - t0 < 5)
    end)

    it("cancels a hung fetch at shutdown_timeout, runs its <close>, exits 0", function()
      local c = child(([[
        shutdown_timeout(0.5)
        local t = spawn(function()
          local guard <close> = setmetatable({}, {__close = function() print("closed") end})
          return fetch("http://127.0.0.1:%s/")
        end)
        ready()
        t:wait()
        print("not reached")
      ]]):format(BLACKHOLE))
      local pid = child_ready(c)
      sleep(0.2)
      local t0 = now()
      sigterm(pid)
      local res = child_result(c, 15)
      local took = now() - t0
      assert.are.equal(0, res.code, res.stderr)
      assert.are.equal("closed\n", res.stdout)
      assert.is_true(took >= 0.4 and took < 4, "exited after " .. took .. " s")
    end)

    it("exits at once on a second SIGTERM", function()
      local c = child(([[
        local t = spawn(function() return fetch("http://127.0.0.1:%s/") end)
        ready()
        t:wait()
      ]]):format(BLACKHOLE))
      local pid = child_ready(c)
      sigterm(pid)
      sleep(0.2)
      local t0 = now()
      sigterm(pid)
      local res = child_result(c, 5)
      assert.are.equal(143, res.code)
      assert.matches("terminated again, exiting now", res.stderr)
      assert.is_true(now() - t0 < 2)
    end)

    it("cancels db queries and a LISTEN waiter in flight, and the server stops them", function()
      local c = child([[
        shutdown_timeout(0.5)
        local DSN = os.getenv("AH_TEST_PG")
        local p = db.pool{dsn = DSN, size = 3}
        local l = assert(db.connect(DSN))
        assert(l:listen("faults_term"))
        local tasks = {spawn(function() return l:notification() end)}
        for i = 1, 6 do
          tasks[#tasks + 1] = spawn(function() return p:query("select pg_sleep(30) as faults_term") end)
        end
        sleep(0.3)
        ready()
        for _, t in ipairs(tasks) do t:wait() end
      ]])
      local pid = child_ready(c)
      local t0 = now()
      sigterm(pid)
      local res = child_result(c, 15)
      assert.are.equal(0, res.code, res.stderr)
      assert.is_true(now() - t0 < 4)
      -- its backends do not go on sleeping
      wait_for("the child's queries to end on the server", function()
        return admin("select count(*) as n from pg_stat_activity where query like "
          .. "'select pg_sleep(30) as faults_term%'")[1].n == 0
      end, 5)
    end)

    it("exits 0 promptly with fds exhausted, fetches hung and queries in flight", function()
      local c = child(([[
        shutdown_timeout(0.5)
        local O, BH = %q, %q
        local p = db.pool{dsn = os.getenv("AH_TEST_PG"), size = 2}
        assert(p:query("select 1"))
        local ts = {}
        for i = 1, 2 do ts[#ts + 1] = spawn(function() return p:query("select pg_sleep(30)") end) end
        for i = 1, 300 do
          local url = i %% 2 == 0 and (O .. "/hang") or ("http://127.0.0.1:" .. BH .. "/")
          ts[#ts + 1] = spawn(function() return fetch(url) end)
        end
        sleep(0.3)
        local _, err = fetch(O .. "/ping")
        ready(err and err:match("^%%a+") or "ok")
        for _, t in ipairs(ts) do pcall(t.wait, t) end
      ]]):format(O, BLACKHOLE), {nofile = 128})
      local pid, starved = child_ready(c)
      assert.are.equal("connect", starved)
      local t0 = now()
      sigterm(pid)
      local res = child_result(c, 15)
      assert.are.equal(0, res.code, res.stderr)
      assert.is_true(now() - t0 < 4)
    end)
  end)
end)
