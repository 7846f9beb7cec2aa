-- http.server inside this process, driven by asynchost's own fetch (and
-- by curl through the non-blocking exec where a raw detail matters).
-- spec/http_clients_spec.lua drives a server process with curl, python3
-- and raw sockets.
local H = require("spec.support.helper")
local ah = require("asynchost")
local http, json, fetch, sleep, spawn, gather = ah.http, ah.json, ah.fetch,
  ah.sleep, ah.spawn, ah.gather

local function wait_for(what, pred, secs)
  local deadline = ah.now() + (secs or 5)
  repeat
    local v = pred()
    if v then return v end
    sleep(0.01)
  until ah.now() > deadline
  error("timed out waiting for " .. what)
end

-- An app listening on a free port; closed after the test.
local apps = {}
local function serve(opts, setup)
  local app = http.server(opts)
  setup(app)
  assert(app:listen{port = 0})
  apps[#apps + 1] = app
  return app, "http://127.0.0.1:" .. app.port
end

local function get(url, opts)
  local res, err = fetch(url, opts)
  assert(res, err)
  return res
end

describe("http.server", function()
  after_each(function()
    for i = #apps, 1, -1 do
      apps[i]:close()
      apps[i] = nil
    end
    H.assert_clean()
  end)

  describe("responses", function()
    it("answers a table with 200 and a JSON body", function()
      local _, url = serve(nil, function(app)
        app:get("/", function() return {hello = "world", n = 3} end)
      end)
      local res = get(url .. "/")
      assert.are.equal(200, res.status)
      assert.are.equal("application/json", res.headers["content-type"])
      assert.are.same({hello = "world", n = 3}, res:json())
    end)

    it("answers a string with 200 text/html", function()
      local _, url = serve(nil, function(app)
        app:get("/", function() return "<h1>hi</h1>" end)
      end)
      local res = get(url .. "/")
      assert.are.equal(200, res.status)
      assert.are.equal("text/html; charset=utf-8", res.headers["content-type"])
      assert.are.equal("<h1>hi</h1>", res.body)
    end)

    it("answers status, body and headers as the handler returns them", function()
      local _, url = serve(nil, function(app)
        app:post("/things", function()
          return 201, {id = 7}, {["X-Thing"] = "made", ["Set-Cookie"] = {"a=1", "b=2"}}
        end)
        app:get("/plain", function()
          return 418, "teapot", {["content-type"] = "text/plain"}
        end)
      end)
      local res = get(url .. "/things", {method = "POST", body = ""})
      assert.are.equal(201, res.status)
      assert.are.equal("made", res.headers["x-thing"])
      assert.are.same({"a=1", "b=2"}, res.headers["set-cookie"])
      assert.are.same({id = 7}, res:json())
      res = get(url .. "/plain")
      assert.are.equal(418, res.status)
      assert.are.equal("text/plain", res.headers["content-type"])
      assert.are.equal("teapot", res.body)
    end)

    it("answers 204 when the handler returns nothing", function()
      local _, url = serve(nil, function(app)
        app:delete("/x", function() end)
      end)
      local res = get(url .. "/x", {method = "DELETE"})
      assert.are.equal(204, res.status)
      assert.are.equal("", res.body)
      assert.is_nil(res.headers["content-length"])
    end)

    it("encodes json.array tables as arrays", function()
      local _, url = serve(nil, function(app)
        app:get("/empty", function() return json.array({}) end)
        app:get("/list", function() return {1, 2, 3} end)
      end)
      assert.are.equal("[]", get(url .. "/empty").body)
      assert.are.equal("[1,2,3]", get(url .. "/list").body)
    end)

    it("sends a large body intact", function()
      local big = ("0123456789abcdef"):rep(65536) -- 1 MiB
      local _, url = serve(nil, function(app)
        app:get("/big", function() return 200, big, {["content-type"] = "text/plain"} end)
      end)
      local res = get(url .. "/big")
      assert.are.equal(#big, #res.body)
      assert.are.equal(big, res.body)
    end)

    -- The server writes what the socket takes at once and queues the
    -- rest: bodies bigger than the kernel's buffers (the client here is
    -- on the same loop, so nothing is read while the server writes)
    -- cross that boundary inside the head, the body and a chunk.
    it("sends bodies and chunks bigger than the socket buffers intact", function()
      local piece = ("0123456789abcdef"):rep(4096) -- 64 KiB
      local big = piece:rep(256) -- 16 MiB
      local _, url = serve(nil, function(app)
        app:get("/big", function() return 200, big, {["x-pad"] = ("p"):rep(4000)} end)
        app:get("/chunks", function(req)
          return req:stream(function(write)
            for i = 1, 8 do assert(write(piece:rep(32) .. i)) end
          end)
        end)
      end)
      local res = get(url .. "/big")
      assert.are.equal(#big, #res.body)
      assert.is_true(res.body == big)
      res = get(url .. "/chunks")
      assert.are.equal(8 * (32 * #piece + 1), #res.body)
      for i = 1, 8 do
        local at = (i - 1) * (32 * #piece + 1)
        assert.are.equal(tostring(i), res.body:sub(at + 32 * #piece + 1, at + 32 * #piece + 1))
        assert.is_true(res.body:sub(at + 1, at + 32 * #piece) == piece:rep(32))
      end
    end)

    it("answers HEAD with GET's headers and no body", function()
      local _, url = serve(nil, function(app)
        app:get("/h", function() return "twelve bytes" end)
      end)
      local res = get(url .. "/h", {method = "HEAD"})
      assert.are.equal(200, res.status)
      assert.are.equal("12", res.headers["content-length"])
      assert.are.equal("", res.body)
    end)

    it("streams a response with req:stream", function()
      local _, url = serve(nil, function(app)
        app:get("/s", function(req)
          return req:stream(function(write)
            for i = 1, 3 do
              assert(write("piece " .. i .. ";"))
              sleep(0.01)
            end
          end, 200, {["content-type"] = "text/csv"})
        end)
      end)
      local res = get(url .. "/s")
      assert.are.equal(200, res.status)
      assert.are.equal("chunked", res.headers["transfer-encoding"])
      assert.are.equal("text/csv", res.headers["content-type"])
      assert.are.equal("piece 1;piece 2;piece 3;", res.body)
    end)

    it("breaks off a stream whose handler fails after it began", function()
      local _, url = serve(nil, function(app)
        app:get("/s", function(req)
          return req:stream(function(write)
            write("start;")
            error("mid-stream")
          end)
        end)
        app:get("/ok", function() return "ok" end)
      end)
      local res, err = fetch(url .. "/s")
      assert.is_nil(res)
      assert.is_string(err)
      assert.are.equal("ok", get(url .. "/ok").body)
    end)
  end)

  describe("requests", function()
    it("gives method, path, decoded params and query, lower-case headers, body", function()
      local seen
      local _, url = serve(nil, function(app)
        app:put("/users/:id/files/:name", function(req)
          seen = {method = req.method, path = req.path, params = req.params,
            query = req.query, ua = req.headers["x-client"], body = req.body,
            addr = req.remote_addr}
          return {ok = true}
        end)
      end)
      get(url .. "/users/a%20b/files/r%C3%A9sum%C3%A9.txt?x=1&x=2&y=a+b%21&flag",
        {method = "PUT", body = "payload", headers = {["X-Client"] = "spec"}})
      assert.are.same({
        method = "PUT", path = "/users/a%20b/files/r%C3%A9sum%C3%A9.txt",
        params = {id = "a b", name = "résumé.txt"},
        query = {x = {"1", "2"}, y = "a b!", flag = ""},
        ua = "spec", body = "payload", addr = "127.0.0.1",
      }, seen)
    end)

    it("keeps a request's headers readable after its response, repeated ones joined", function()
      local reqs = {}
      local _, url = serve(nil, function(app)
        app:get("/h", function(req)
          reqs[#reqs + 1] = req
          return "ok"
        end)
      end)
      -- two requests on one keep-alive connection (curl --next reuses it)
      local r = assert(ah.exec({"curl", "-sS", "--max-time", "10",
        "-H", "X-Multi: a", "-H", "X-Multi: b  ", "-H", "Cookie: c=1",
        "-H", "Cookie: d=2", "-H", "X-Tag: one", url .. "/h",
        "--next", "-H", "X-Tag: two", url .. "/h"}))
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("okok", r.stdout)
      -- read only now, after the second request reused the connection
      local h1, h2 = reqs[1].headers, reqs[2].headers
      assert.are.equal("one", h1["x-tag"])
      assert.are.equal("a, b", h1["x-multi"])
      assert.are.equal("c=1; d=2", h1.cookie)
      assert.matches("^127%.0%.0%.1:%d+$", h1.host)
      assert.are.equal("two", h2["x-tag"])
      assert.is_nil(h2["x-multi"])
      assert.is_nil(h2.cookie)
      assert.are.equal(h1, reqs[1].headers) -- built once
    end)

    it("matches a trailing * and gives the rest as params['*']", function()
      local _, url = serve(nil, function(app)
        app:get("/files/*", function(req) return {rest = req.params["*"]} end)
      end)
      assert.are.same({rest = "a/b/c.txt"}, get(url .. "/files/a/b/c.txt"):json())
      assert.are.same({rest = ""}, get(url .. "/files/"):json())
    end)

    it("prefers exact routes, then patterns in the order they were added", function()
      local _, url = serve(nil, function(app)
        app:get("/u/:id", function() return "pattern" end)
        app:get("/u/me", function() return "exact" end)
        app:get("/u/*", function() return "wildcard" end)
        app:route("*", "/any", function(req) return req.method end)
      end)
      assert.are.equal("exact", get(url .. "/u/me").body)
      assert.are.equal("pattern", get(url .. "/u/42").body)
      assert.are.equal("wildcard", get(url .. "/u/42/x").body)
      assert.are.equal("PATCH", get(url .. "/any", {method = "PATCH", body = "x"}).body)
    end)

    it("answers 404 for an unknown path and 405 with Allow for another method", function()
      local _, url = serve(nil, function(app)
        app:get("/only", function() return "x" end)
        app:post("/only", function() return "y" end)
      end)
      local res = get(url .. "/nope")
      assert.are.equal(404, res.status)
      assert.are.same({error = "not found"}, res:json())
      res = get(url .. "/only", {method = "DELETE"})
      assert.are.equal(405, res.status)
      assert.are.equal("GET, POST", res.headers["allow"])
    end)

    it("decodes JSON with req:json() and answers bad JSON with 400", function()
      local caught
      local _, url = serve(nil, function(app)
        app:post("/j", function(req) return {got = req:json()} end)
        app:post("/mine", function(req)
          local ok, e = pcall(req.json, req)
          caught = not ok and e.status
          return 422, {error = "my message"}
        end)
      end)
      local res = get(url .. "/j", {json = {a = {1, 2}}})
      assert.are.same({got = {a = {1, 2}}}, res:json())
      res = get(url .. "/j", {method = "POST", body = "{nope"})
      assert.are.equal(400, res.status)
      assert.matches("^invalid JSON", res:json().error)
      res = get(url .. "/j", {method = "POST", body = ""})
      assert.are.equal(400, res.status)
      res = get(url .. "/mine", {method = "POST", body = "[1,"})
      assert.are.equal(422, res.status)
      assert.are.equal(400, caught)
    end)

    it("takes a large request body", function()
      local body = ("x"):rep(3 * 1024 * 1024)
      local _, url = serve(nil, function(app)
        app:post("/up", function(req) return {len = #req.body} end)
      end)
      assert.are.same({len = #body}, get(url .. "/up", {method = "POST", body = body}):json())
    end)
  end)

  describe("errors", function()
    it("answers 500 to a handler that raises, and keeps serving", function()
      local _, url = serve(nil, function(app)
        app:get("/boom", function() error("internal detail") end)
        app:get("/table", function() error({code = 1}) end)
        app:get("/nilerr", function() return nil, "db: it broke" end)
        app:get("/badstatus", function() return 42 end)
        app:get("/badbody", function() return 200, function() end end)
        app:get("/ok", function() return "ok" end)
      end)
      for _, p in ipairs({"/boom", "/table", "/nilerr", "/badstatus", "/badbody"}) do
        local res = get(url .. p)
        assert.are.equal(500, res.status, p)
        assert.is_nil(res.body:find("internal detail", 1, true))
        assert.are.equal("ok", get(url .. "/ok").body)
      end
    end)

    it("turns http.error into its response", function()
      local _, url = serve(nil, function(app)
        app:get("/teapot", function() http.error(418, {error = "short and stout"}) end)
      end)
      local res = get(url .. "/teapot")
      assert.are.equal(418, res.status)
      assert.are.same({error = "short and stout"}, res:json())
    end)

    it("answers 500 when a handler sets a header with CR or LF", function()
      local _, url = serve(nil, function(app)
        app:get("/x", function() return 200, "x", {["X-A"] = "a\r\nX-Evil: 1"} end)
        app:get("/name", function() return 200, "x", {["Bad Name"] = "v"} end)
      end)
      local res = get(url .. "/x")
      assert.are.equal(500, res.status)
      assert.is_nil(res.headers["x-evil"])
      assert.are.equal(500, get(url .. "/name").status)
    end)
  end)

  describe("middleware", function()
    it("runs in order around the handler and can change its response", function()
      local order = {}
      local _, url = serve(nil, function(app)
        app:use(function(req, next)
          order[#order + 1] = "a>"
          local s, b, h = next()
          order[#order + 1] = "<a"
          h["X-Took"] = "1"
          return s, b, h
        end)
        app:use(function(req, next)
          order[#order + 1] = "b>"
          local s, b, h = next()
          order[#order + 1] = "<b"
          b.wrapped = true
          return 202, b, h
        end)
        app:get("/", function() order[#order + 1] = "h" return {v = 1} end)
      end)
      local res = get(url .. "/")
      assert.are.equal(202, res.status)
      assert.are.equal("1", res.headers["x-took"])
      assert.are.same({v = 1, wrapped = true}, res:json())
      assert.are.same({"a>", "b>", "h", "<b", "<a"}, order)
    end)

    it("can answer without calling next, and sees 404s and errors", function()
      local _, url = serve(nil, function(app)
        app:use(function(req, next)
          if req.headers.authorization ~= "Bearer ok" then
            return 401, {error = "who are you"}
          end
          local s, b, h = next()
          h["Access-Control-Allow-Origin"] = "*"
          return s, b, h
        end)
        app:get("/boom", function() error("x") end)
      end)
      assert.are.equal(401, get(url .. "/nope").status)
      local auth = {headers = {Authorization = "Bearer ok"}}
      local res = get(url .. "/nope", auth)
      assert.are.equal(404, res.status)
      assert.are.equal("*", res.headers["access-control-allow-origin"])
      res = get(url .. "/boom", auth)
      assert.are.equal(500, res.status)
      assert.are.equal("*", res.headers["access-control-allow-origin"])
    end)

    it("answers 500 when a middleware raises", function()
      local _, url = serve(nil, function(app)
        app:use(function() error("middleware broke") end)
        app:get("/", function() return "x" end)
      end)
      assert.are.equal(500, get(url .. "/").status)
    end)
  end)

  describe("tasks", function()
    it("runs each request as its own task, concurrently", function()
      local active, most = 0, 0
      local _, url = serve(nil, function(app)
        app:get("/slow", function()
          active = active + 1
          most = math.max(most, active)
          sleep(0.2)
          active = active - 1
          return {done = true}
        end)
      end)
      local results = gather({1, 2, 3, 4}, function()
        return get(url .. "/slow").status
      end)
      assert.are.same({200, 200, 200, 200}, {table.unpack(results, 1, 4)})
      assert.are.equal(4, most)
    end)

    it("owns its request tasks, not the task that called listen", function()
      local app = http.server()
      app:get("/", function() sleep(0.01) return "still here" end)
      local t = spawn(function()
        assert(app:listen{port = 0})
        return app.port
      end)
      local port = t:wait()
      assert.are.equal("done", t:status())
      apps[#apps + 1] = app
      assert.are.equal("still here", get("http://127.0.0.1:" .. port .. "/").body)
    end)

    it("cancels the handler's task when the client disconnects", function()
      local outcome
      local _, url = serve(nil, function(app)
        app:get("/slow", function()
          local ok, err = pcall(sleep, 5)
          outcome = ok and "finished" or err
          if not ok then error(err, 0) end
        end)
      end)
      local res, err = fetch(url .. "/slow", {timeout = 0.2})
      assert.is_nil(res)
      assert.matches("^timeout", err)
      wait_for("the handler to be cancelled", function() return outcome end)
      assert.matches("^cancelled", outcome)
    end)

    it("answers 504 and cancels a handler that overruns request_timeout", function()
      local outcome
      local _, url = serve({request_timeout = 0.2}, function(app)
        app:get("/slow", function()
          local ok, err = pcall(sleep, 5)
          outcome = ok and "finished" or err
          if not ok then error(err, 0) end
        end)
        app:get("/fast", function() return "fast" end)
      end)
      local res = get(url .. "/slow")
      assert.are.equal(504, res.status)
      assert.matches("^cancelled", outcome)
      assert.are.equal("fast", get(url .. "/fast").body)
    end)

    it("stops a stream whose client went away", function()
      local ended
      local _, url = serve(nil, function(app)
        app:get("/forever", function(req)
          return req:stream(function(write)
            local _ <close> = setmetatable({}, {__close = function() ended = true end})
            while write(("x"):rep(1000)) do sleep(0.01) end
          end)
        end)
      end)
      local res, err = fetch(url .. "/forever", {timeout = 0.2})
      assert.is_nil(res)
      assert.is_string(err)
      wait_for("the stream to stop", function() return ended end)
      assert.is_true(ended)
    end)
  end)

  describe("limits", function()
    it("answers a body over max_body with 413", function()
      local _, url = serve({max_body = 1000}, function(app)
        app:post("/up", function(req) return {len = #req.body} end)
      end)
      assert.are.equal(413, get(url .. "/up", {method = "POST", body = ("x"):rep(2000)}).status)
      assert.are.same({len = 1000}, get(url .. "/up", {method = "POST", body = ("x"):rep(1000)}):json())
    end)

    it("answers headers over max_header with 431", function()
      local _, url = serve({max_header = 2048}, function(app)
        app:get("/", function() return "ok" end)
      end)
      local res = get(url .. "/", {headers = {["X-Big"] = ("b"):rep(4000)}})
      assert.are.equal(431, res.status)
      assert.are.equal("ok", get(url .. "/").body)
    end)
  end)

  describe("static files", function()
    it("serves files with content types and refuses traversal", function()
      local dir = H.env("AH_TEST_TMP") .. "/static_spec"
      os.execute("mkdir -p " .. H.shell_quote(dir))
      local f = assert(io.open(dir .. "/a.json", "w"))
      f:write('{"a":1}')
      f:close()
      local _, url = serve(nil, function(app) app:static("/s/", dir) end)
      local res = get(url .. "/s/a.json")
      assert.are.equal(200, res.status)
      assert.are.equal("application/json", res.headers["content-type"])
      assert.are.equal('{"a":1}', res.body)
      assert.are.equal(404, get(url .. "/s/missing.txt").status)
      assert.are.equal(404, get(url .. "/s/").status)
      assert.are.equal(403, get(url .. "/s/%2e%2e/%2e%2e/etc/passwd").status)
    end)

    it("refuses a content type from http.content_types that would split the head", function()
      local dir = H.env("AH_TEST_TMP") .. "/static_evil"
      os.execute("mkdir -p " .. H.shell_quote(dir))
      local f = assert(io.open(dir .. "/a.evil", "w"))
      f:write("x")
      f:close()
      http.content_types.evil = "text/plain\r\nX-Evil: 1"
      local ok, err = pcall(function()
        local _, url = serve(nil, function(app) app:static("/s/", dir) end)
        local res = get(url .. "/s/a.evil")
        assert.are.equal(500, res.status)
        assert.is_nil(res.headers["x-evil"])
      end)
      http.content_types.evil = nil
      assert(ok, err)
    end)
  end)

  describe("listen and close", function()
    it("binds before returning and tells the port", function()
      local app = http.server()
      app:get("/", function() return "x" end)
      assert.is_true(app:listen{host = "localhost", port = 0})
      apps[#apps + 1] = app
      assert.is_true(app.port > 0)
      assert.are.equal(1, ah.stats()["http.server"])
    end)

    it("returns nil, 'io: ...' when the port is taken", function()
      local a = serve(nil, function() end)
      local b = http.server()
      local ok, err = b:listen{port = a.port}
      assert.is_nil(ok)
      assert.matches("^io: cannot listen on 127%.0%.0%.1:%d+: address already in use", err)
    end)

    it("returns nil, 'dns: ...' for a host it cannot resolve", function()
      local ok, err = http.server():listen{host = "no-such-host.invalid", port = 0}
      assert.is_nil(ok)
      assert.matches("^dns: ", err)
    end)

    it("shares a port between servers that listen with reuseport", function()
      local a = http.server()
      a:get("/", function() return "a" end)
      assert(a:listen{port = 0, reuseport = true})
      apps[#apps + 1] = a
      local b = http.server()
      b:get("/", function() return "b" end)
      assert.is_true(b:listen{port = a.port, reuseport = true})
      apps[#apps + 1] = b
      assert.are.equal(2, ah.stats()["http.server"])
    end)

    it("finishes the requests in flight when closed", function()
      local app, url = serve(nil, function(app)
        app:get("/slow", function() sleep(0.2) return "done" end)
      end)
      local t = spawn(function() return get(url .. "/slow") end)
      sleep(0.05)
      assert.is_true(app:close())
      assert.are.equal(0, ah.stats()["http.conn"])
      local res = t:wait()
      assert.are.equal("done", res.body)
      assert.are.equal("close", res.headers["connection"])
      local r2, err = fetch(url .. "/slow")
      assert.is_nil(r2)
      assert.matches("^connect", err)
    end)

    it("cancels what is left when close's timeout passes", function()
      local outcome
      local app, url = serve(nil, function(app)
        app:get("/slow", function()
          local ok, err = pcall(sleep, 5)
          outcome = ok and "finished" or err
          if not ok then error(err, 0) end
        end)
      end)
      local t = spawn(function() return fetch(url .. "/slow") end)
      sleep(0.05)
      local t0 = ah.now()
      assert.is_true(app:close(0.1))
      assert.is_true(ah.now() - t0 < 3)
      assert.is_nil((t:wait()))
      wait_for("the handler to be cancelled", function() return outcome end)
      assert.matches("^cancelled", outcome)
    end)

    it("can be closed by one of its own handlers", function()
      local app, url
      app, url = serve(nil, function(a)
        a:post("/quit", function() a:close() return "bye" end)
      end)
      local res = get(url .. "/quit", {method = "POST", body = ""})
      assert.are.equal("bye", res.body)
      wait_for("the server to close", function()
        return (ah.stats()["http.server"] or 0) == 0
      end)
      assert.is_true(app:close())
    end)

    it("counts servers and connections in stats", function()
      local seen
      local app, url = serve(nil, function(app)
        app:get("/", function()
          seen = {server = ah.stats()["http.server"], conn = ah.stats()["http.conn"]}
          return "x"
        end)
      end)
      get(url .. "/")
      assert.are.same({server = 1, conn = 1}, seen)
      app:close()
      assert.are.equal(0, ah.stats()["http.server"])
      assert.are.equal(0, ah.stats()["http.conn"])
    end)
  end)

  describe("idle connections", function()
    -- a python3 client: one request on a keep-alive connection, then the
    -- seconds until the server closes it (or "open" after 3 s)
    local CLIENT = [[
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
s.settimeout(3)
got = b""
while b"\r\n\r\nok" not in got:
    got += s.recv(4096)
t0 = time.monotonic()
try:
    rest = s.recv(4096)
    print("closed %.2f %d" % (time.monotonic() - t0, len(rest)))
except socket.timeout:
    print("open")
]]

    it("closes a keep-alive connection idle for idle_timeout", function()
      local app = serve({idle_timeout = 0.3}, function(a)
        a:get("/x", function() return "ok" end)
      end)
      local r = assert(ah.exec({"python3", "-c", CLIENT, tostring(app.port)}))
      assert.are.equal(0, r.code, r.stderr)
      local secs, extra = r.stdout:match("^closed ([%d.]+) (%d+)")
      assert.is_not_nil(secs, r.stdout)
      assert.is_true(tonumber(secs) >= 0.2 and tonumber(secs) < 2.5, r.stdout)
      assert.are.equal("0", extra) -- closed quietly, nothing more sent
    end)

    it("keeps it open within idle_timeout", function()
      local app = serve({idle_timeout = 10}, function(a)
        a:get("/x", function() return "ok" end)
      end)
      local r = assert(ah.exec({"python3", "-c", CLIENT, tostring(app.port)}))
      assert.are.equal("open\n", r.stdout)
    end)
  end)

  describe("misuse", function()
    it("raises on unknown or mistyped options", function()
      assert.has_error(function() http.server{max_bodyy = 1} end,
        "http.server: unknown option 'max_bodyy'")
      assert.has_error(function() http.server{idle_timeout = "1"} end,
        "http.server: option 'idle_timeout' must be a number, not a string")
      assert.has_error(function() http.server():listen{prot = 1} end,
        "listen: unknown option 'prot'")
      assert.has_error(function() http.server():listen{port = 70000} end,
        "listen: port must be an integer from 0 to 65535")
      assert.has_error(function() http.server{max_body = 0/0} end,
        "http.server: option 'max_body' must be >= 0")
      assert.has_error(function() http.server{max_header = -1} end,
        "http.server: option 'max_header' must be >= 0")
    end)

    it("clamps huge limits instead of overflowing them", function()
      local app = http.server{max_header = math.huge, max_body = 1e300,
                              max_connections = 1e300}
      app:post("/x", function(req) return tostring(#req.body) end)
      assert(app:listen{host = "127.0.0.1", port = 0, backlog = 1e100})
      local res = assert(fetch("http://127.0.0.1:" .. app.port .. "/x",
        {body = ("b"):rep(70000), headers = {["x-big"] = ("h"):rep(40000)}}))
      assert.are.equal(200, res.status)
      assert.are.equal("70000", res.body)
      app:close()
    end)

    it("raises on bad routes", function()
      local app = http.server()
      assert.has_error(function() app:get("nopath", function() end) end)
      assert.has_error(function() app:get("/x") end)
      assert.has_error(function() app:get("/a/*/b", function() end) end)
      assert.has_error(function() app.get("/x", function() end) end)
      assert.has_error(function() app:use("not a function") end)
      assert.has_error(function() http.error(99) end)
    end)

    it("raises when an app listens twice", function()
      local app = serve(nil, function() end)
      assert.has_error(function() app:listen{port = 0} end,
        "listen: this app is already listening")
    end)
  end)
end)
