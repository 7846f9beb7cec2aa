-- fuzz_http_request: the app every input is sent to (fuzz_http_request.c
-- feeds raw bytes to it through a socketpair). Its routes reach what a
-- request can: parameters, query strings, bodies and JSON, middleware,
-- errors, a handler that suspends, streaming, large bodies, and
-- responses whose status and headers come from the request (they must
-- be refused, never written, when they would break the response).

return function()
  local app = http.server{max_body = 8192, max_header = 2048,
    request_timeout = 2, idle_timeout = 2, max_connections = 4}
  app:use(function(req, nxt)
    local mw = req.headers["x-mw"]
    if mw == "stop" then return 403, "stopped" end
    if mw == "raise" then http.error(418, {teapot = true}) end
    return nxt()
  end)
  app:get("/", function() return "hello" end)
  app:get("/users/:id", function(req)
    return {id = req.params.id, q = req.query}
  end)
  app:post("/echo", function(req)
    return 200, req.body, {["Content-Type"] = req.headers["content-type"]}
  end)
  app:post("/json", function(req) return {v = req:json()} end)
  app:put("/sleep", function()
    sleep(0.001)
    return 201, "slept"
  end)
  app:get("/headers", function(req) return req.headers end)
  app:get("/query", function(req) return req.query end)
  app:route("*", "/status/:code", function(req)
    local q = req.query
    return math.tointeger(tonumber(req.params.code)) or 200,
      type(q.body) == "string" and q.body or nil,
      {["X-Q"] = q.h, [type(q.name) == "string" and q.name or "X-N"] = "v"}
  end)
  app:get("/stream", function(req)
    req:stream(function(write)
      write("a")
      sleep(0)
      write(req.query.x or "b")
    end)
  end)
  app:get("/error", function() error("boom") end)
  app:get("/big", function() return ("x"):rep(20000) end)
  app:get("/addr", function(req) return {a = req.remote_addr} end)
  app:route("*", "/any/*", function(req)
    return {method = req.method, path = req.path, body = req.body}
  end)
  assert(app:listen{host = "127.0.0.1", port = 0})
  FUZZ_APP = app
end
