-- http.server driven by clients we did not write: curl, python3's
-- http.client and raw sockets (spec/support/http_raw.py). The server runs
-- as its own asynchost process (spec/support/http_app.lua), since these
-- clients are run with blocking io.popen from this one.
local H = require("spec.support.helper")
local ah = require("asynchost")

local TMP = H.env("AH_TEST_TMP")
local BIN = H.env("AH_TEST_BIN")
local PY = "/usr/bin/python3"
local q = H.shell_quote

local function sh(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  p:close()
  return out
end

local slurp = H.slurp

local wait_for = H.wait_for

local function alive(pid)
  return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true
end

local function free_port()
  return tonumber(sh(PY .. [[ -c 'import socket; s=socket.socket(); ]] ..
    [[s.bind(("127.0.0.1",0)); print(s.getsockname()[1])']]))
end

local n = 0
local scoped = {} -- servers started by a test: killed after it if left
-- Starts spec/support/http_app.lua (under --workers when opts.workers)
-- with env; returns {pid =, port =, log =, status_file =}.
local function start(env, opts)
  opts = opts or {}
  n = n + 1
  local base = ("%s/http_app_%d"):format(TMP, n)
  local vars = {}
  for k, v in pairs(env or {}) do vars[#vars + 1] = k .. "=" .. q(v) end
  local cmd = ("%s %s %s spec/support/http_app.lua %s"):format(
    table.concat(vars, " "), q(BIN),
    opts.workers and ("--workers " .. opts.workers) or "", q(base .. ".ready"))
  -- a subshell that records the pid and, later, the exit status
  os.execute(("(%s >%s 2>&1 & echo $! >%s; wait $!; echo $? >%s) &"):format(
    cmd, q(base .. ".log"), q(base .. ".pid"), q(base .. ".status")))
  local s = {log = base .. ".log", status_file = base .. ".status", base = base}
  s.pid = wait_for("the server's pid", function()
    return tonumber(slurp(base .. ".pid") or "")
  end)
  if not opts.suite then scoped[#scoped + 1] = s end
  local ready = opts.workers and (base .. ".ready.1") or (base .. ".ready")
  local line = wait_for("the server to listen", function()
    local st = slurp(s.status_file)
    if st then error("the server exited (" .. st .. "): " .. (slurp(s.log) or "")) end
    return slurp(ready)
  end)
  s.port = tonumber(line:match("^(%d+)"))
  s.url = "http://127.0.0.1:" .. s.port
  return s
end

-- The server's exit status, once it exited; its log must hold no
-- sanitizer report (the specs also run under ASan+UBSan).
local function exit_status(s, secs)
  local st = tonumber(wait_for("the server to exit", function()
    return slurp(s.status_file)
  end, secs))
  local log = slurp(s.log) or ""
  assert(not log:find("Sanitizer") and not log:find("runtime error:"),
    "sanitizer report in the server's log:\n" .. log)
  return st
end

local function stop(s)
  if not s then return end
  if alive(s.pid) then os.execute("kill -TERM " .. s.pid) end
  return exit_status(s)
end

-- After each test: a server it started and did not stop (it failed) is
-- killed, so no process outlives the spec.
local function kill_leftovers()
  for i = #scoped, 1, -1 do
    local s = table.remove(scoped, i)
    if alive(s.pid) then os.execute("kill -KILL " .. s.pid) end
  end
end

local function raw(s, scenario)
  return ah.json.decode(sh(("%s spec/support/http_raw.py %d %s"):format(PY,
    s.port, scenario)))
end

local function curl(args)
  return sh("curl -sS --max-time 10 " .. args .. " 2>&1")
end

describe("the http server with independent clients", function()
  local srv, dir

  setup(function()
    dir = TMP .. "/http_static"
    os.execute("mkdir -p " .. q(dir .. "/sub"))
    local f = assert(io.open(dir .. "/hello.txt", "w"))
    f:write("hello, static\n")
    f:close()
    f = assert(io.open(dir .. "/sub/index.html", "w"))
    f:write("<p>index</p>")
    f:close()
    f = assert(io.open(TMP .. "/http_secret.txt", "w"))
    f:write("secret")
    f:close()
    os.execute("head -c 3000000 /dev/urandom > " .. q(dir .. "/big.bin"))
    srv = start({HTTP_ACCESS_LOG = "1", HTTP_TIMEOUT = "1",
      HTTP_STATIC_DIR = dir}, {suite = true})
  end)

  teardown(function()
    local ok, st = pcall(stop, srv)
    if alive(srv.pid) then os.execute("kill -KILL " .. srv.pid) end
    assert(ok, st)
    assert.are.equal(0, st)
  end)

  after_each(function() H.assert_clean() end)

  it("answers curl with a JSON body and its headers", function()
    local out = curl("-i " .. srv.url .. "/")
    assert.matches("^HTTP/1%.1 200 OK\r\n", out)
    assert.matches("\r\nContent%-Type: application/json\r\n", out)
    assert.matches("\r\nContent%-Length: %d+\r\n", out)
    assert.matches("\r\nDate: %a%a%a, %d%d %a%a%a %d%d%d%d [%d:]+ GMT\r\n", out)
    local body = ah.json.decode(out:match("\r\n\r\n(.*)$"))
    assert.are.equal("world", body.hello)
  end)

  it("keeps a connection alive across curl's requests", function()
    local out = curl("-v " .. srv.url .. "/n/1 " .. srv.url .. "/n/2")
    assert.matches("n=1", out)
    assert.matches("n=2", out)
    assert.matches("Re%-using existing connection", out)
    assert.is_nil(out:find("Connection: close", 1, true))
  end)

  it("takes a chunked upload from curl", function()
    local path = TMP .. "/upload.bin"
    os.execute("head -c 200000 /dev/zero | tr '\\0' 'u' > " .. q(path))
    local out = curl(("-H 'Transfer-Encoding: chunked' --data-binary @%s %s/echo")
      :format(q(path), srv.url))
    local body = ah.json.decode(out)
    assert.are.equal(200000, body.len)
    assert.are.equal("chunked", body.te)
    assert.are.equal(("u"):rep(64), body.head)
  end)

  it("answers Expect: 100-continue from curl before the body is sent", function()
    local path = TMP .. "/expect.bin"
    os.execute("head -c 50000 /dev/zero > " .. q(path))
    local out = curl(("-v -H 'Expect: 100-continue' --data-binary @%s %s/echo")
      :format(q(path), srv.url))
    assert.matches("< HTTP/1%.1 100 Continue", out)
    assert.matches('"len":50000', out)
    assert.matches('"expect":"100%-continue"', out)
  end)

  it("refuses a too large body announced with Expect: 100-continue with 413", function()
    local r = raw(srv, "expect_too_big")
    assert.are.same({413}, r.statuses)
    assert.is_true(r.closed)
  end)

  it("refuses a chunked body that grows past max_body with 413", function()
    local r = raw(srv, "body_too_big")
    assert.are.same({413}, r.statuses)
    assert.is_true(r.closed)
  end)

  it("answers HEAD from curl with the headers and no body", function()
    local out = curl("-i -I " .. srv.url .. "/n/12345")
    assert.matches("^HTTP/1%.1 200 OK\r\n", out)
    assert.matches("\r\nContent%-Length: 7\r\n", out)
    assert.matches("\r\n\r\n$", out)
  end)

  it("streams a chunked response to curl", function()
    local out = curl("-i " .. srv.url .. "/stream")
    assert.matches("\r\nTransfer%-Encoding: chunked\r\n", out)
    assert.matches("piece 1\npiece 2\npiece 3\n$", out)
  end)

  it("serves python's http.client on one keep-alive connection", function()
    local r = ah.json.decode(sh(PY .. " spec/support/http_client.py " .. srv.port))
    assert.are.equal(1, r.connections)
    local st = {}
    for i, res in ipairs(r.responses) do
      st[i] = res.status
      assert.are.equal(11, res.version)
    end
    assert.are.same({200, 200, 200, 200, 400, 200, 404, 500, 200}, st)
    assert.are.equal("n=0", r.responses[1].body)
    assert.are.same({got = {a = {1, 2}, b = "x"}}, ah.json.decode(r.responses[4].body))
    assert.matches("^invalid JSON", ah.json.decode(r.responses[5].body).error)
    assert.are.equal("", r.responses[6].body) -- HEAD
    assert.are.equal("3", r.responses[6].length)
    assert.are.equal("application/json", r.responses[7].ctype)
    assert.is_nil(r.responses[8].body:find("secret-internal-detail", 1, true))
  end)

  it("answers pipelined requests in order, a slow first one included", function()
    local r = raw(srv, "pipeline")
    assert.are.same({200, 200, 200, 200}, r.statuses)
    assert.are.same({"slept", "n=2", '"len":3', "n=4"}, r.order)
    assert.is_true(r.closed)
  end)

  it("answers HTTP/1.0 and closes unless asked to keep alive", function()
    local r = raw(srv, "http10")
    assert.are.same({200}, r.statuses)
    assert.is_true(r.closed)
    r = raw(srv, "http10_keepalive")
    assert.are.same({200, 200}, r.statuses)
    assert.matches("Connection: keep%-alive", r.raw)
    assert.is_true(r.closed)
  end)

  it("answers Expect: 100-continue on a raw socket", function()
    local r = raw(srv, "expect_continue")
    assert.matches("^HTTP/1%.1 100 Continue\r\n\r\n", r.interim)
    assert.are.same({100, 200}, r.statuses)
    assert.matches('"len":5', r.raw)
  end)

  it("answers a bad request line with 400 and closes", function()
    local r = raw(srv, "bad_request_line")
    assert.are.same({400}, r.statuses)
    assert.is_true(r.closed)
  end)

  it("answers an unknown HTTP version with 505", function()
    local r = raw(srv, "bad_version")
    assert.are.same({505}, r.statuses)
    assert.is_true(r.closed)
  end)

  it("answers a request line without a target with 400 and closes", function()
    local r = raw(srv, "empty_target")
    assert.are.same({400}, r.statuses)
    assert.is_true(r.closed)
  end)

  it("answers a request without a target (CONNECT) with 400", function()
    local r = raw(srv, "no_target")
    assert.are.same({400}, r.statuses)
    assert.is_true(r.closed)
  end)

  it("answers huge headers with 431 and closes", function()
    local r = raw(srv, "huge_header")
    assert.are.same({431}, r.statuses)
    assert.is_true(r.closed)
    r = raw(srv, "many_headers")
    assert.are.same({431}, r.statuses)
  end)

  it("answers an invalid chunk size with 400 and closes", function()
    local r = raw(srv, "bad_chunk")
    assert.are.same({400}, r.statuses)
    assert.is_true(r.closed)
  end)

  it("refuses Content-Length with Transfer-Encoding (request smuggling)", function()
    local r = raw(srv, "smuggle")
    assert.are.same({400}, r.statuses)
    assert.is_true(r.closed)
  end)

  it("refuses a bare CR inside a request header", function()
    local r = raw(srv, "header_crlf_in_request")
    assert.are.same({400}, r.statuses)
  end)

  it("never lets a handler's header value split the response", function()
    local r = raw(srv, "inject")
    assert.are.same({500}, r.statuses)
    assert.is_false(r.evil)
    r = raw(srv, "inject_ok")
    assert.are.same({200}, r.statuses)
    assert.matches("\r\nX%-Test: plain\r\n", r.head)
  end)

  it("closes a slowloris connection at the request timeout with 408", function()
    local r = raw(srv, "slowloris")
    assert.is_true(r.closed)
    assert.are.same({408}, r.statuses)
    assert.is_true(r.seconds >= 0.9 and r.seconds < 8, "closed after " .. r.seconds)
  end)

  it("answers a handler that overruns the request timeout with 504", function()
    local out = curl("-i " .. srv.url .. "/slow?s=3")
    assert.matches("^HTTP/1%.1 504 Gateway Timeout\r\n", out)
  end)

  it("keeps serving after a client disconnects mid-request", function()
    local r = raw(srv, "disconnect")
    assert.is_true(r.done)
    assert.matches('"hello":"world"', curl(srv.url .. "/"))
    wait_for("the 499 in the access log", function()
      return slurp(srv.log):find("GET /slow?s=3 499", 1, true)
    end)
  end)

  it("serves static files with their content type", function()
    local out = curl("-i " .. srv.url .. "/files/hello.txt")
    assert.matches("^HTTP/1%.1 200 OK\r\n", out)
    assert.matches("\r\nContent%-Type: text/plain; charset=utf%-8\r\n", out)
    assert.matches("\r\nContent%-Length: 14\r\n", out)
    assert.matches("\r\nLast%-Modified: %a%a%a, ", out)
    assert.matches("\r\n\r\nhello, static\n$", out)
    assert.matches("<p>index</p>", curl(srv.url .. "/files/sub/"))
    out = curl("-I " .. srv.url .. "/files/hello.txt")
    assert.matches("\r\nContent%-Length: 14\r\n", out)
    assert.matches("\r\n\r\n$", out)
  end)

  it("serves a big static file intact", function()
    local got = TMP .. "/big.got"
    curl(("-o %s %s/files/big.bin"):format(q(got), srv.url))
    assert.are.equal(sh("md5sum < " .. q(dir .. "/big.bin")),
      sh("md5sum < " .. q(got)))
  end)

  it("refuses path traversal out of the static directory", function()
    for _, p in ipairs({"/files/../http_secret.txt", "/files/%2e%2e/http_secret.txt",
      "/files/sub/..%2f..%2fhttp_secret.txt"}) do
      local out = curl("--path-as-is -i " .. srv.url .. p)
      assert.matches("^HTTP/1%.1 403 Forbidden\r\n", out, p)
      assert.is_nil(out:find("secret\n", 1, true))
    end
    assert.matches("^HTTP/1%.1 404", curl("-i " .. srv.url .. "/files/nope.txt"))
  end)

  it("logs each request and each handler error to stderr, not to clients", function()
    local out = curl("-i " .. srv.url .. "/boom")
    assert.matches("^HTTP/1%.1 500", out)
    assert.is_nil(out:find("secret-internal-detail", 1, true))
    curl(srv.url .. "/n/77?x=1")
    local log = wait_for("the access log line", function()
      local l = slurp(srv.log)
      return l:find("GET /n/77?x=1 200", 1, true) and l
    end)
    assert.matches("%d%d:%d%d:%d%d%.%d%d%d INFO %[task %d+%] GET /n/77%?x=1 200 4 [%d.]+ms", log)
    assert.matches("ERROR %[task %d+%] http: GET /boom: [^\n]*secret%-internal%-detail", log)
    assert.matches("stack traceback:", log)
    assert.matches("GET /boom 500", log)
  end)
end)

describe("the http server's limits", function()
  after_each(function()
    kill_leftovers()
    H.assert_clean()
  end)

  it("answers connections over max_connections with 503", function()
    local srv = start({HTTP_MAX_CONNECTIONS = "1"})
    local hold = TMP .. "/holder.json"
    os.execute(("%s spec/support/http_raw.py %d holder > %s &"):format(PY,
      srv.port, q(hold)))
    ah.sleep(0.3)
    local out = curl("-i " .. srv.url .. "/n/1")
    assert.matches("^HTTP/1%.1 503 Service Unavailable\r\n", out)
    local r = ah.json.decode(wait_for("the holder", function()
      local s = slurp(hold)
      return s and s ~= "" and s
    end))
    assert.are.same({200}, r.statuses)
    assert.matches("n=2", curl(srv.url .. "/n/2"))
    assert.are.equal(0, stop(srv))
  end)
end)

describe("the http server's shutdown", function()
  after_each(function()
    kill_leftovers()
    H.assert_clean()
  end)

  it("lets a request in flight finish on SIGTERM, then exits 0", function()
    local srv = start()
    local out = TMP .. "/inflight.out"
    os.execute(("curl -s %s/slow?s=1 > %s &"):format(srv.url, q(out)))
    ah.sleep(0.3)
    os.execute("kill -TERM " .. srv.pid)
    assert.are.equal(0, exit_status(srv))
    assert.matches('"slept":1', slurp(out))
    local refused = curl(srv.url .. "/")
    assert.matches("Failed to connect", refused)
  end)

  it("exits 130 on SIGINT after the requests in flight", function()
    local srv = start()
    local out = TMP .. "/inflight2.out"
    os.execute(("curl -s %s/slow?s=0.5 > %s &"):format(srv.url, q(out)))
    ah.sleep(0.2)
    os.execute("kill -INT " .. srv.pid)
    assert.are.equal(130, exit_status(srv))
    assert.matches('"slept":0.5', slurp(out))
  end)
end)

describe("asynchost --workers", function()
  after_each(function()
    kill_leftovers()
    H.assert_clean()
  end)

  local function hit(url, times)
    local pids, workers = {}, {}
    for _ = 1, times do
      local body = curl(url .. "/")
      local ok, r = pcall(ah.json.decode, body)
      assert(ok and type(r) == "table", "bad response: " .. body)
      pids[r.pid] = true
      workers[r.worker] = r.pid
    end
    return pids, workers
  end

  it("runs the workers on one port and restarts one that is killed", function()
    local port = free_port()
    local srv = start({HTTP_PORT = tostring(port)}, {workers = 2})
    wait_for("worker 2", function() return slurp(srv.base .. ".ready.2") end)
    local _, workers = hit(srv.url, 40)
    assert.is_number(workers[1])
    assert.is_number(workers[2])
    local victim = workers[1]
    os.execute("kill -KILL " .. victim)
    wait_for("worker 1 to be gone", function() return not alive(victim) end)
    -- requests keep succeeding meanwhile (the other worker takes them)
    local _, after = hit(srv.url, 10)
    assert.is_truthy(next(after))
    wait_for("a new worker 1", function()
      local line = slurp(srv.base .. ".ready.1")
      local pid = line and tonumber(line:match("^%d+ (%d+)"))
      return pid and pid ~= victim and pid
    end)
    local seen = {}
    wait_for("the new worker 1 to answer", function()
      local _, w = hit(srv.url, 10)
      seen = w
      return w[1] and w[1] ~= victim
    end)
    assert.are_not.equal(victim, seen[1])
    assert.matches("worker 1 %(pid " .. victim .. "%) was killed by signal 9",
      slurp(srv.log))
    assert.are.equal(0, stop(srv))
    assert.is_false(alive(seen[1]))
  end)

  it("drains every worker on SIGTERM and exits 0", function()
    local port = free_port()
    local srv = start({HTTP_PORT = tostring(port)}, {workers = 2})
    wait_for("worker 2", function() return slurp(srv.base .. ".ready.2") end)
    local out = TMP .. "/workers_inflight.out"
    os.execute(("curl -s %s/slow?s=1 > %s &"):format(srv.url, q(out)))
    ah.sleep(0.3)
    os.execute("kill -TERM " .. srv.pid)
    assert.are.equal(0, exit_status(srv))
    assert.matches('"slept":1', slurp(out))
    assert.matches("Failed to connect", curl(srv.url .. "/"))
  end)

  it("refuses --workers without a number", function()
    local _, err, code = H.run({"--workers", "x", "app.lua"})
    assert.are.equal(1, code)
    assert.matches("'%-%-workers' needs a number", err)
  end)
end)

describe("scripts/api.lua", function()
  local srv

  setup(function()
    local port = free_port()
    local base = TMP .. "/api"
    -- a database of its own: other specs and scripts use a users table too
    local dbname = "api_spec_" .. math.random(1, 1e9)
    assert(os.execute(("psql -q %s -c %s >/dev/null"):format(q(H.env("AH_TEST_PG")),
      q("create database " .. dbname))))
    local dsn = H.env("AH_TEST_PG"):gsub("/[^/]*$", "/" .. dbname)
    -- (timeout: a server an aborted run leaves behind does not live on)
    os.execute(("(DATABASE_URL=%s timeout 120 %s scripts/api.lua %d >%s 2>&1 & echo $! >%s; "
      .. "wait $!; echo $? >%s) &"):format(q(dsn), q(BIN), port,
      q(base .. ".log"), q(base .. ".pid"), q(base .. ".status")))
    srv = {log = base .. ".log", status_file = base .. ".status",
      url = "http://127.0.0.1:" .. port}
    local tpid = wait_for("timeout's pid", function() return tonumber(slurp(base .. ".pid") or "") end)
    srv.pid = wait_for("api.lua's pid", function() -- signals go to asynchost itself
      return tonumber(sh("pgrep -P " .. tpid))
    end)
    wait_for("api.lua to listen", function()
      if slurp(srv.status_file) then error("api.lua exited: " .. slurp(srv.log)) end
      return (slurp(srv.log) or ""):find("listening on", 1, true)
    end)
  end)

  teardown(function()
    local ok, st = pcall(stop, srv)
    if alive(srv.pid) then os.execute("kill -KILL " .. srv.pid) end
    assert(ok, st)
    assert.are.equal(0, st)
  end)

  after_each(function() H.assert_clean() end)

  it("answers /concurrent in about 2 s, not 6", function()
    local t0 = ah.now()
    local body = ah.json.decode(curl(srv.url .. "/concurrent"))
    local took = ah.now() - t0
    assert.are.same({{result = "done"}, {result = "done"}, {result = "done"}}, body.results)
    assert.is_true(took >= 1.9 and took < 4.5, "took " .. took .. " s")
  end)

  it("creates, reads, updates and deletes users on PostgreSQL", function()
    local function call(method, path, data)
      local args = ("-i -X %s %s%s"):format(method, srv.url, path)
      if data then args = args .. " -H 'Content-Type: application/json' -d " .. q(data) end
      local out = curl(args)
      local status = tonumber(out:match("^HTTP/1%.1 (%d+)"))
      local body = out:match("\r\n\r\n(.*)$")
      return status, body ~= "" and ah.json.decode(body) or nil, out
    end
    local st, u = call("POST", "/users", '{"name":"Ada","email":"ada@example.org"}')
    assert.are.equal(201, st)
    assert.are.equal("Ada", u.name)
    assert.is_number(u.id)
    local st2, dup = call("POST", "/users", '{"name":"Ada2","email":"ada@example.org"}')
    assert.are.equal(409, st2)
    assert.matches("exists", dup.error)
    assert.are.equal(422, (call("POST", "/users", '{"name":"NoMail"}')))
    assert.are.equal(400, (call("POST", "/users", "{not json")))
    local st3, got = call("GET", "/users/" .. u.id)
    assert.are.equal(200, st3)
    assert.are.equal("ada@example.org", got.email)
    local st4, upd = call("PUT", "/users/" .. u.id, '{"name":"Ada L."}')
    assert.are.equal(200, st4)
    assert.are.equal("Ada L.", upd.name)
    assert.are.equal("ada@example.org", upd.email)
    local st5, list = call("GET", "/users")
    assert.are.equal(200, st5)
    assert.are.equal(1, #list)
    assert.are.equal(204, (call("DELETE", "/users/" .. u.id)))
    assert.are.equal(404, (call("GET", "/users/" .. u.id)))
    assert.are.equal(404, (call("DELETE", "/users/" .. u.id)))
    local _, empty, raw = call("GET", "/users")
    assert.are.same({}, empty)
    assert.matches("\r\n\r\n%[%]$", raw)
  end)
end)
