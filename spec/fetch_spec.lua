-- fetch: the HTTP client, against servers we did not write: python3's
-- http.server (spec/support/origin.py) and nginx over TLS and HTTP/2
-- (spec/support/services/tls.sh).
local H = require("spec.support.helper")
local ah = require("asynchost")

local O = H.env("AH_TEST_ORIGIN")
local TLS = os.getenv("AH_TEST_TLS_ORIGIN")
local CA = os.getenv("AH_TEST_TLS_CA")
local has_json = type(ah.json) == "table" and type(ah.json.encode) == "function"
local tls_it = TLS and it or pending
local json_it = has_json and it or pending

-- A port nothing listens on: bound and closed again by python.
local function dead_port()
  local p = assert(io.popen([[/usr/bin/python3 -c 'import socket; s=socket.socket(); ]] ..
    [[s.bind(("127.0.0.1",0)); print(s.getsockname()[1])']]))
  local port = p:read("n")
  p:close()
  return port
end

local function sockets()
  return ah.stats()["idle.fetch.socket"] or 0
end

local unique = 0
local function key(name)
  unique = unique + 1
  return ("%s-%d-%d"):format(name, unique, math.random(1e9))
end

describe("fetch", function()
  after_each(function() H.assert_clean() end)

  describe("requests and responses", function()
    it("is a callable table with config and stats", function()
      assert.equal(ah.fetch, fetch)
      assert.equal("table", type(fetch))
      assert.equal("function", type(fetch.config))
      assert.equal("function", type(fetch.stats))
      assert.equal("fetch", tostring(fetch))
    end)

    it("gets a page with its status, body, headers, url, time and version", function()
      local res, err = fetch(O .. "/ping")
      assert.is_nil(err)
      assert.equal(200, res.status)
      assert.equal("pong", res.body)
      assert.equal("text/plain", res.headers["content-type"])
      assert.equal("4", res.headers["content-length"])
      assert.equal(O .. "/ping", res.url)
      assert.equal(1.1, res.http_version)
      assert.equal(4, res.size)
      assert.is_true(res.time > 0 and res.time < 5)
    end)

    it("returns a 404 or a 500 as a response, not an error", function()
      local res, err = fetch(O .. "/status?code=404")
      assert.is_nil(err)
      assert.equal(404, res.status)
      assert.equal("status 404", res.body)
      res = fetch(O .. "/status?code=500")
      assert.equal(500, res.status)
    end)

    it("sends the method, headers and body it is given", function()
      local res = fetch(O .. "/echo", {method = "put", body = "hello",
        headers = {["X-Token"] = "abc", ["X-Number"] = 42}})
      assert.equal(200, res.status)
      local body = res.body
      assert.matches('"method": "PUT"', body, 1, true)
      assert.matches('"x-token": "abc"', body, 1, true)
      assert.matches('"x-number": "42"', body, 1, true)
      assert.matches('"body": "hello"', body, 1, true)
      assert.matches('"content-length": "5"', body, 1, true)
      -- no 100-continue round trip and no form content type of its own
      assert.not_matches('"expect"', body, 1, true)
      assert.not_matches("x-www-form-urlencoded", body, 1, true)
    end)

    it("posts when a body is given without a method", function()
      local res = fetch(O .. "/echo", {body = "x=1"})
      assert.matches('"method": "POST"', res.body, 1, true)
      assert.matches('"body": "x=1"', res.body, 1, true)
    end)

    it("sends an empty header, and leaves out a default one given as false", function()
      local res = fetch(O .. "/echo", {headers = {["X-Empty"] = "", Accept = false}})
      assert.matches('"x-empty": ""', res.body, 1, true)
      assert.not_matches('"accept":', res.body, 1, true)
    end)

    it("sends the User-Agent of fetch.config, or the one in headers", function()
      local old = fetch.config().user_agent
      assert.matches("^asynchost/", old)
      fetch.config{user_agent = "spec-agent/1"}
      local res = fetch(O .. "/echo")
      fetch.config{user_agent = old}
      assert.matches('"user-agent": "spec-agent/1"', res.body, 1, true)
      res = fetch(O .. "/echo", {headers = {["User-Agent"] = "mine"}})
      assert.matches('"user-agent": "mine"', res.body, 1, true)
    end)

    it("carries no option of one request into the next on a recycled handle", function()
      -- one task, one request at a time: each reuses the handle just released
      assert.equal(200, fetch(O .. "/redirect?n=1").status)
      assert.equal(302, fetch(O .. "/redirect?n=1", {redirects = 0}).status)
      assert.equal(200, fetch(O .. "/redirect?n=1").status)
      local res, err = fetch(O .. "/delay?ms=300", {timeout = 0.05})
      assert.is_nil(res)
      assert.matches("^timeout: ", err)
      assert.equal("delayed", fetch(O .. "/delay?ms=300").body)
      res, err = fetch(O .. "/big?n=1000", {max_size = 10})
      assert.is_nil(res)
      assert.matches("^too_large: ", err)
      assert.equal(1000, #fetch(O .. "/big?n=1000").body)
      assert.matches('"x-one": "1"', fetch(O .. "/echo", {headers = {["X-One"] = 1}}).body, 1, true)
      local body = fetch(O .. "/echo").body
      assert.not_matches('"x-one"', body, 1, true)
      assert.matches('"method": "GET"', body, 1, true)
      assert.equal("", fetch(O .. "/ping", {method = "HEAD"}).body)
      assert.equal("pong", fetch(O .. "/ping").body)
      fetch(O .. "/echo", {method = "DELETE", body = "gone"})
      body = fetch(O .. "/echo").body
      assert.matches('"method": "GET"', body, 1, true)
      assert.matches('"body": ""', body, 1, true)
      local old = fetch.config().user_agent
      fetch.config{user_agent = "spec-agent/2"}
      body = fetch(O .. "/echo").body
      fetch.config{user_agent = old}
      assert.matches('"user-agent": "spec-agent/2"', body, 1, true)
      assert.matches('"user-agent": "' .. old .. '"', fetch(O .. "/echo").body, 1, true)
    end)

    it("makes a HEAD request that has headers but no body", function()
      local res = fetch(O .. "/ping", {method = "HEAD"})
      assert.equal(200, res.status)
      assert.equal("", res.body)
      assert.equal("4", res.headers["content-length"])
    end)

    it("joins repeated headers with a comma and keeps set-cookie a list", function()
      local res = fetch(O .. "/cookies")
      assert.equal("one, two", res.headers["x-multi"])
      assert.equal("only", res.headers["x-single"])
      assert.same({"a=1; Path=/", "b=2; Path=/"}, res.headers["set-cookie"])
      assert.equal("name over 64 bytes", res.headers["x-" .. ("long"):rep(40)])
      for name in pairs(res.headers) do assert.equal(name:lower(), name) end
    end)

    it("asks for compression and decompresses a gzip body", function()
      local res = fetch(O .. "/gzip?body=squeezed")
      assert.equal("squeezed", res.body)
      assert.equal("gzip", res.headers["content-encoding"])
      res = fetch(O .. "/echo")
      assert.matches('"accept%-encoding": "[^"]*gzip', res.body)
    end)

    it("goes through the proxy it is given", function()
      local res, err = fetch("http://never.invalid/path", {proxy = O})
      assert.is_nil(err)
      assert.equal(200, res.status)
      assert.equal("proxied GET http://never.invalid/path", res.body)
    end)

    json_it("encodes opts.json and sets the content type", function()
      local res = fetch(O .. "/echo", {json = {a = 1, list = {1, 2}}})
      local echo = assert(res:json())
      assert.equal("POST", echo.method)
      assert.equal("application/json", echo.headers["content-type"])
      assert.same({a = 1, list = {1, 2}}, ah.json.decode(echo.body))
      res = fetch(O .. "/echo", {json = {}, headers = {["Content-Type"] = "application/x+json"}})
      assert.equal("application/x+json", res:json().headers["content-type"])
    end)

    json_it("decodes a JSON body with res:json(), and a bad one is json:", function()
      local v = fetch(O .. "/json"):json()
      assert.same({ok = true, n = 3, list = {1, 2}}, v)
      local none, err = fetch(O .. "/badjson"):json()
      assert.is_nil(none)
      assert.matches("^json: ", err)
    end)
  end)

  describe("redirects", function()
    it("follows a chain and reports the final url", function()
      local res = fetch(O .. "/redirect?n=3")
      assert.equal(200, res.status)
      assert.equal("done", res.body)
      assert.equal(O .. "/redirect?n=0&code=302", res.url)
    end)

    it("returns the 3xx itself with redirects = 0", function()
      local res, err = fetch(O .. "/redirect?n=3", {redirects = 0})
      assert.is_nil(err)
      assert.equal(302, res.status)
      assert.equal("/redirect?n=2&code=302", res.headers.location)
    end)

    it("fails a loop with http: too many redirects, naming the URL", function()
      local res, err = fetch(O .. "/loop")
      assert.is_nil(res)
      assert.equal("http: " .. O .. "/loop: too many redirects", err)
    end)

    it("fails a chain longer than opts.redirects and follows one within it", function()
      local res, err = fetch(O .. "/redirect?n=3", {redirects = 2})
      assert.is_nil(res)
      assert.matches("^http: .*too many redirects", err)
      res = fetch(O .. "/redirect?n=3&code=307", {redirects = 3})
      assert.equal("done", res.body)
    end)

    it("turns a POST into a GET on 303, and keeps it on 307", function()
      local res = fetch(O .. "/redirect-to?code=303&url=/echo", {body = "data"})
      assert.matches('"method": "GET"', res.body, 1, true)
      assert.matches('"body": ""', res.body, 1, true)
      res = fetch(O .. "/redirect-to?code=307&url=/echo", {body = "data"})
      assert.matches('"method": "POST"', res.body, 1, true)
      assert.matches('"body": "data"', res.body, 1, true)
    end)

    it("does not follow a redirect to another protocol", function()
      local res, err = fetch(O .. "/redirect-to?url=file:///etc/passwd")
      assert.is_nil(res)
      assert.matches("^http: ", err)
    end)
  end)

  describe("concurrency and limits", function()
    it("runs 100 delayed requests at once in about one delay", function()
      local t0 = ah.now()
      local urls = {}
      for i = 1, 100 do urls[i] = O .. "/delay?ms=500&body=" .. i end
      local bodies = gather(urls, function(url)
        return assert(fetch(url)).body
      end)
      local elapsed = ah.now() - t0
      for i = 1, 100 do assert.equal(tostring(i), bodies[i]) end
      assert.is_true(elapsed < 3, "100 x 0.5 s took " .. elapsed .. " s")
    end)

    it("limits requests in flight per host, queueing the rest", function()
      fetch.config{per_host = 2}
      local most = 0
      local watcher = spawn(function()
        while true do
          local s = fetch.stats()
          if s.active > most then most = s.active end
          sleep(0.02)
        end
      end)
      local t0 = ah.now()
      local ok = gather({1, 2, 3, 4, 5, 6}, function(i)
        return fetch(O .. "/delay?ms=250&body=" .. i).body
      end)
      local elapsed = ah.now() - t0
      watcher:cancel()
      fetch.config{per_host = 0}
      assert.same({"1", "2", "3", "4", "5", "6", n = 6}, ok)
      assert.equal(2, most)
      assert.is_true(elapsed >= 0.7, "three waves of 0.25 s took " .. elapsed)
    end)

    it("limits requests in flight in total", function()
      local cfg = fetch.config{total = 3}
      assert.equal(3, cfg.total)
      local all = spawn(gather, {1, 2, 3, 4, 5}, function(i)
        return fetch(O .. "/delay?ms=300&body=" .. i).body
      end)
      sleep(0.1)
      local s = fetch.stats()
      assert.equal(3, s.active)
      assert.equal(2, s.queued)
      assert.same({"1", "2", "3", "4", "5", n = 5}, all:wait())
      assert.equal(0, fetch.config{total = 0}.total)
    end)

    it("starts a queued request as soon as a cancelled one leaves", function()
      fetch.config{per_host = 1}
      local blocker = spawn(function() return fetch(O .. "/hang") end)
      local waiter = spawn(function() return fetch(O .. "/ping") end)
      sleep(0.1)
      assert.equal(1, fetch.stats().queued)
      blocker:cancel()
      local res = waiter:wait()
      fetch.config{per_host = 0}
      assert.equal("pong", res.body)
      assert.has_error(function() blocker:wait() end)
    end)

    it("drops a queued request from the queue when it is cancelled", function()
      fetch.config{per_host = 1}
      local blocker = spawn(function() return fetch(O .. "/hang") end)
      sleep(0.05)
      local res, err = timeout(0.1, fetch, O .. "/ping")
      assert.is_nil(res)
      assert.matches("^timeout", err)
      assert.equal(0, fetch.stats().queued)
      assert.equal(1, ah.stats().fetch)
      blocker:cancel()
      fetch.config{per_host = 0}
    end)

    it("raises for bad limits", function()
      assert.has_error(function() fetch.config{per_host = -1} end)
      assert.has_error(function() fetch.config{total = "x"} end)
      assert.has_error(function() fetch.config{bogus = 1} end)
      assert.equal(0, fetch.config().per_host)
    end)
  end)

  describe("timeouts and cancellation", function()
    it("times out a server that never answers, quickly", function()
      local t0 = ah.now()
      local res, err = fetch(O .. "/hang", {timeout = 0.3})
      local elapsed = ah.now() - t0
      assert.is_nil(res)
      assert.matches("^timeout: " .. O:gsub("%p", "%%%0") .. "/hang: ", err)
      assert.is_true(elapsed >= 0.25 and elapsed < 2, "took " .. elapsed)
    end)

    it("applies connect_timeout to connecting only", function()
      local res, err = fetch(O .. "/delay?ms=400", {connect_timeout = 0.1})
      assert.is_nil(err)
      assert.equal("delayed", res.body)
    end)

    it("takes math.huge and other huge timeouts as no limit", function()
      -- found by fuzz/fuzz_values: the milliseconds overflowed a long
      local res, err = fetch(O .. "/ping", {timeout = math.huge,
        connect_timeout = 1e300})
      assert.is_nil(err)
      assert.equal("pong", res.body)
    end)

    it("aborts a pending fetch at once when its task is cancelled", function()
      local before = sockets()
      local t = spawn(function() return fetch(O .. "/hang") end)
      sleep(0.15)
      assert.equal(1, ah.stats().fetch)
      local during = sockets()
      t:cancel()
      -- at once: no live transfer, and its connection is closed, not kept
      assert.equal(0, ah.stats().fetch)
      assert.equal(during - 1, sockets())
      assert.is_true(during - 1 <= before)
      local ok, err = pcall(t.wait, t)
      assert.is_false(ok)
      assert.matches("^cancelled", err)
      assert.equal("cancelled", t:status())
    end)

    it("returns timeout: from an enclosing timeout()", function()
      local t0 = ah.now()
      local res, err = timeout(0.2, fetch, O .. "/hang")
      assert.is_nil(res)
      assert.matches("^timeout", err)
      assert.is_true(ah.now() - t0 < 2)
      assert.equal(0, ah.stats().fetch)
    end)

    it("cancels sibling fetches when one fails in gather", function()
      local t0 = ah.now()
      local ok, err = pcall(gather, {
        function() return fetch(O .. "/hang") end,
        function() return fetch(O .. "/hang") end,
        function() sleep(0.1) error("boom") end,
      })
      assert.is_false(ok)
      assert.matches("boom", err)
      assert.is_true(ah.now() - t0 < 2)
      assert.equal(0, ah.stats().fetch)
    end)

    it("works inside a coroutine.wrap generator within a task", function()
      local gen = coroutine.wrap(function()
        for _, path in ipairs({"/ping", "/big?n=3"}) do coroutine.yield(fetch(O .. path).body) end
      end)
      assert.equal("pong", gen())
      assert.equal("xxx", gen())
    end)

    it("cannot suspend inside a table.sort comparator, and says so", function()
      local ok, err = pcall(table.sort, {1, 2, 3}, function(a, b)
        fetch(O .. "/ping")
        return a < b
      end)
      assert.is_false(ok)
      assert.matches("fetch: cannot suspend", err)
      assert.equal(0, ah.stats().fetch)
    end)
  end)

  describe("failures", function()
    it("reports a connection closed mid-body as closed:", function()
      local res, err = fetch(O .. "/truncate")
      assert.is_nil(res)
      assert.matches("^closed: " .. O:gsub("%p", "%%%0") .. "/truncate: ", err)
    end)

    it("reports an empty reply as closed:", function()
      local res, err = fetch(O .. "/empty")
      assert.is_nil(res)
      assert.matches("^closed: " .. O:gsub("%p", "%%%0") .. "/empty: ", err)
    end)

    it("reports a refused port as connect:", function()
      local url = "http://127.0.0.1:" .. dead_port() .. "/"
      local res, err = fetch(url)
      assert.is_nil(res)
      assert.matches("^connect: ", err)
      assert.matches(url, err, 1, true)
    end)

    it("reports a name that does not resolve as dns:", function()
      local res, err = fetch("http://nonexistent.invalid/")
      assert.is_nil(res)
      assert.matches("^dns: http://nonexistent.invalid/: ", err)
    end)

    it("returns http: for a malformed URL, naming it", function()
      local res, err = fetch("not a url")
      assert.is_nil(res)
      assert.matches("^http: bad URL 'not a url'", err)
      res, err = fetch("ftp://127.0.0.1/x")
      assert.is_nil(res)
      assert.matches("^http: bad URL 'ftp://127.0.0.1/x': only http and https", err)
    end)

    it("enforces max_size from the Content-Length", function()
      local res, err = fetch(O .. "/big?n=5000", {max_size = 1000})
      assert.is_nil(res)
      assert.matches("^too_large: ", err)
      res = fetch(O .. "/big?n=1000", {max_size = 1000})
      assert.equal(1000, #res.body)
    end)

    it("enforces max_size while a body without a length arrives", function()
      local res, err = fetch(O .. "/big?n=300000&chunked=1", {max_size = 100000})
      assert.is_nil(res)
      assert.matches("^too_large: .*max_size", err)
      res = fetch(O .. "/big?n=300000&chunked=1")
      assert.equal(300000, #res.body)
    end)

    it("stops at 64 MiB by default, and max_size = false lifts the limit", function()
      local n = 64 * 1024 * 1024 + 1
      local url = O .. "/big?chunked=1&n=" .. n
      local res, err = fetch(url, {output = "/dev/null"})
      assert.is_nil(res)
      assert.matches("^too_large: .*67108864 bytes", err)
      res, err = fetch(url, {output = "/dev/null", max_size = false})
      assert.is_nil(err)
      assert.equal(n, res.size)
    end)

    it("counts requests, reused connections, bytes and errors in fetch.stats()", function()
      local s0 = fetch.stats()
      fetch(O .. "/big?n=1234")
      fetch(O .. "/big?n=1000")
      fetch("http://nonexistent.invalid/")
      local s1 = fetch.stats()
      assert.equal(s0.requests + 3, s1.requests)
      assert.is_true(s1.reused >= s0.reused + 1)
      assert.equal(s0.bytes + 2234, s1.bytes)
      assert.equal((s0.errors.dns or 0) + 1, s1.errors.dns)
      assert.equal(0, s1.running)
    end)
  end)

  describe("output files", function()
    local dir = H.env("AH_TEST_TMP")

    it("writes the body to a file instead of memory", function()
      local path = dir .. "/" .. key("out")
      local res, err = fetch(O .. "/big?n=3000000&chunked=1", {output = path})
      assert.is_nil(err)
      assert.equal(200, res.status)
      assert.is_nil(res.body)
      assert.equal(path, res.output)
      assert.equal(3000000, res.size)
      local f = assert(io.open(path, "rb"))
      local data = f:read("a")
      f:close()
      os.remove(path)
      assert.equal(3000000, #data)
      assert.equal(("x"):rep(100), data:sub(-100))
      local none, jerr = res:json()
      assert.is_nil(none)
      assert.matches("^json: ", jerr)
    end)

    it("writes to a pipe, pausing the transfer while a slow reader catches up", function()
      local fifo = dir .. "/" .. key("fifo")
      local got = fifo .. ".out"
      assert.is_true(os.execute("mkfifo " .. fifo))
      local reader = [[
import sys, time
src, dst = open(sys.argv[1], "rb"), open(sys.argv[2], "wb")
while True:
    b = src.read(1 << 20)
    if not b: break
    dst.write(b); dst.flush(); time.sleep(0.05)
]]
      os.execute(("/usr/bin/python3 -c %s %s %s &"):format(H.shell_quote(reader), fifo, got))
      local t0 = ah.now()
      local res, err = fetch(O .. "/big?n=8000000&chunked=1", {output = fifo})
      local elapsed = ah.now() - t0
      assert.is_nil(err)
      assert.equal(8000000, res.size)
      -- it could not end before the reader took all but what is buffered
      assert.is_true(elapsed >= 0.2, "ended after " .. elapsed .. " s")
      local n
      local deadline = ah.now() + 10
      repeat
        sleep(0.05)
        local f = io.open(got, "rb")
        n = f and f:seek("end")
        if f then f:close() end
      until n == 8000000 or ah.now() > deadline
      assert.equal(8000000, n)
      os.remove(fifo)
      os.remove(got)
    end)

    it("fails with io: when the file cannot be opened", function()
      local res, err = fetch(O .. "/ping", {output = dir .. "/no/such/dir/file"})
      assert.is_nil(res)
      assert.matches("^io: .*no/such/dir/file", err)
    end)

    it("fails with io: when the file cannot be written", function()
      local res, err = fetch(O .. "/big?n=3000000", {output = "/dev/full"})
      assert.is_nil(res)
      assert.matches("^io: .*/dev/full: cannot write", err)
    end)

    it("closes a file whose fetch is cancelled", function()
      local path = dir .. "/" .. key("cancelled")
      local t = spawn(function() return fetch(O .. "/hang", {output = path}) end)
      sleep(0.1)
      t:cancel()
      H.assert_clean()
      local f = assert(io.open(path, "rb"))
      assert.equal("", f:read("a"))
      f:close()
      os.remove(path)
    end)
  end)

  describe("retries", function()
    it("retries a server that fails twice, then returns its answer", function()
      local k = key("flaky")
      local res, err = fetch(O .. "/flaky?fails=2&key=" .. k, {retries = 3, retry_delay = 0.02})
      assert.is_nil(err)
      assert.equal(200, res.status)
      assert.equal("ok after 3", res.body)
      assert.equal(2, res.retries)
      assert.equal("3", fetch(O .. "/flaky-count?key=" .. k).body)
    end)

    it("returns the last response when the retries run out", function()
      local k = key("flaky")
      local res = fetch(O .. "/flaky?fails=5&status=502&key=" .. k, {retries = 1, retry_delay = 0.02})
      assert.equal(502, res.status)
      assert.equal(1, res.retries)
      assert.equal("2", fetch(O .. "/flaky-count?key=" .. k).body)
    end)

    it("waits as long as Retry-After asks", function()
      local k = key("flaky")
      local t0 = ah.now()
      local res = fetch(O .. "/flaky?fails=1&status=429&retry_after=1&key=" .. k,
        {retries = 2, retry_delay = 0.01})
      local elapsed = ah.now() - t0
      assert.equal(200, res.status)
      assert.is_true(elapsed >= 0.9, "retried after " .. elapsed .. " s")
    end)

    it("does not retry a POST or a 404", function()
      local k = key("flaky")
      local res = fetch(O .. "/flaky?fails=1&key=" .. k, {method = "POST", retries = 3})
      assert.equal(503, res.status)
      assert.equal("1", fetch(O .. "/flaky-count?key=" .. k).body)
      k = key("flaky")
      res = fetch(O .. "/flaky?fails=1&status=404&key=" .. k, {retries = 3})
      assert.equal(404, res.status)
      assert.equal(0, res.retries)
    end)

    it("retries connect errors with growing delays", function()
      local t0 = ah.now()
      local res, err = fetch("http://127.0.0.1:" .. dead_port() .. "/",
        {retries = 2, retry_delay = 0.1})
      local elapsed = ah.now() - t0
      assert.is_nil(res)
      assert.matches("^connect: ", err)
      -- two waits: at least half of 0.1 and half of 0.2
      assert.is_true(elapsed >= 0.15, "gave up after " .. elapsed .. " s")
    end)

    it("applies timeout to each attempt", function()
      local t0 = ah.now()
      local res, err = fetch(O .. "/hang", {timeout = 0.2, retries = 1, retry_delay = 0.01})
      assert.is_nil(res)
      assert.matches("^timeout: ", err)
      assert.is_true(ah.now() - t0 >= 0.38)
    end)
  end)

  describe("misuse", function()
    it("raises for a URL that is not a string", function()
      assert.has_error(function() fetch() end)
      assert.has_error(function() fetch(42) end)
      local ok, err = pcall(fetch, {})
      assert.is_false(ok)
      assert.matches("URL string expected, got table", err)
    end)

    it("raises for bad options, naming them", function()
      local function fails(opts, pattern)
        local ok, err = pcall(fetch, O .. "/ping", opts)
        assert.is_false(ok)
        assert.matches(pattern, err)
      end
      fails("x", "bad argument #2")
      fails({timeout = "soon"}, "bad option 'timeout' %(number expected, got string%)")
      fails({timeout = -1}, "'timeout' %(must be >= 0")
      fails({redirects = 1.5}, "bad option 'redirects'")
      fails({verify = "no"}, "bad option 'verify'")
      fails({headers = "x"}, "bad option 'headers'")
      fails({headers = {["Bad Name"] = "v"}}, "bad header name")
      fails({headers = {["X-A"] = "a\r\nX-B: b"}}, "bad value for header 'X%-A'")
      fails({headers = {["X-A"] = {}}}, "bad value for header")
      fails({method = "GE T"}, "bad method")
      fails({body = 42}, "bad option 'body'")
      fails({body = "a", json = {}}, "either 'body' or 'json'")
      fails({timout = 1}, "unknown option 'timout'")
      fails({retries = -1}, "bad option 'retries'")
      fails({retries = 1, retry_delay = "x"}, "bad option 'retry_delay'")
      assert.equal(0, ah.stats().fetch)
    end)

    it("blames the caller's line", function()
      local ok, err = pcall(function() fetch(O, {timeout = "x"}) end)
      assert.is_false(ok)
      assert.matches("fetch_spec.lua:%d+: fetch: bad option", err)
    end)
  end)

  describe("scripts/fetch_many.lua", function()
    it("prints status, time and size per URL and a summary", function()
      local out, err, code = H.run({"scripts/fetch_many.lua", "-c", "3",
        O .. "/ping", O .. "/status?code=404", O .. "/big?n=1000", "http://nonexistent.invalid/"})
      assert.equal(1, code, err)
      local lines = {}
      for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert.equal(5, #lines)
      local seen = {}
      for i = 1, 4 do
        local status, ms, size, url = lines[i]:match("^(%w+)\t(%d+)\t(.-)\t(%S+)$")
        assert.is_truthy(status, lines[i])
        assert.is_true(tonumber(ms) >= 0)
        seen[url] = status .. " " .. size
      end
      assert.equal("200 4", seen[O .. "/ping"])
      assert.equal("404 10", seen[O .. "/status?code=404"])
      assert.equal("200 1000", seen[O .. "/big?n=1000"])
      assert.matches("^ERR dns: ", seen["http://nonexistent.invalid/"])
      assert.matches("^4 URLs in .*: 3 ok, 1 failed, 1014 bytes; status 200=2 404=1; errors dns=1", lines[5])
    end)

    it("reads URLs from a file and rejects unknown options", function()
      local list = H.env("AH_TEST_TMP") .. "/" .. key("urls")
      local f = assert(io.open(list, "w"))
      f:write(O, "/ping\n# a comment\n\n", O, "/big?n=10\n")
      f:close()
      local out, _, code = H.run({"scripts/fetch_many.lua", "-q", "-f", list})
      os.remove(list)
      assert.equal(0, code)
      assert.matches("^2 URLs in .*: 2 ok, 0 failed, 14 bytes", out)
      local _, err2, code2 = H.run({"scripts/fetch_many.lua", "--bogus"})
      assert.equal(2, code2)
      assert.matches("unknown option %-%-bogus", err2)
    end)
  end)

  describe("the process", function()
    it("exits after the last fetch though idle connections stay open", function()
      local script = H.env("AH_TEST_TMP") .. "/" .. key("exit") .. ".lua"
      local f = assert(io.open(script, "w"))
      f:write(([[
        local res = assert(fetch(%q))
        print(res.status, res.body, require("asynchost").stats()["idle.fetch.socket"])
      ]]):format(O .. "/ping"))
      f:close()
      local bin = os.getenv("AH_TEST_BIN") or arg[-1]
      local p = assert(io.popen("timeout 20 " .. H.shell_quote(bin) .. " " .. script .. "; echo \"rc=$?\""))
      local out = p:read("a")
      p:close()
      os.remove(script)
      assert.equal("200\tpong\t1\nrc=0\n", out)
    end)
  end)

  describe("over TLS (nginx)", function()
    tls_it("fails with tls: for a self-signed certificate by default", function()
      local res, err = fetch(TLS .. "/ping")
      assert.is_nil(res)
      assert.matches("^tls: " .. TLS:gsub("%p", "%%%0") .. "/ping: ", err)
    end)

    tls_it("trusts the certificate given as cafile", function()
      local res, err = fetch(TLS .. "/ping", {cafile = CA})
      assert.is_nil(err)
      assert.equal("pong", res.body)
      local none, cerr = fetch(TLS .. "/ping", {cafile = "/nonexistent/ca.pem"})
      assert.is_nil(none)
      assert.matches("^tls: ", cerr)
    end)

    tls_it("skips verification with verify = false", function()
      local res, err = fetch(TLS .. "/ping", {verify = false})
      assert.is_nil(err)
      assert.equal(200, res.status)
    end)

    tls_it("speaks HTTP/2 and multiplexes concurrent requests on one connection", function()
      local res = fetch(TLS .. "/proto", {cafile = CA})
      assert.equal(2, res.http_version)
      assert.equal("HTTP/2.0", res.body)
      local conns = gather({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20},
        function() return fetch(TLS .. "/conn", {cafile = CA}).body end)
      local distinct = {}
      for i = 1, 20 do distinct[conns[i]] = true end
      assert.equal(1, #(function() local l = {} for c in pairs(distinct) do l[#l + 1] = c end return l end)())
    end)

    tls_it("decompresses what nginx gzips", function()
      local res = fetch(TLS .. "/big.txt", {cafile = CA})
      assert.equal(200, res.status)
      assert.equal("gzip", res.headers["content-encoding"])
      assert.equal(20000, #res.body)
      assert.equal(("a"):rep(20000), res.body)
    end)
  end)
end)
