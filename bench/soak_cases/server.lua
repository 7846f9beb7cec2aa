-- Soak case "server": the HTTP server wrk drives (bench/soak runs it in a
-- process of its own and measures it from outside).
--   asynchost bench/soak_cases/server.lua PORT
-- /hello: JSON; /users/:id?q=: params and query; POST /echo: the request
-- body decoded and sent back; /stats: asynchost.stats() (the driver reads
-- it at the end: nothing may be left but the listening server).
local ah = require "asynchost"
local port = assert(tonumber(arg[1]), "usage: server.lua PORT")
local app = http.server()
app:get("/hello", function() return {message = "hello"} end)
app:get("/users/:id", function(req)
  return {id = tonumber(req.params.id), q = req.query.q, agent = req.headers["user-agent"]}
end)
app:post("/echo", function(req)
  local body = req:json()
  return 201, {got = body}
end)
app:get("/stats", function()
  local t = ah.stats()
  t.current = nil
  return t
end)
assert(app:listen{host = "127.0.0.1", port = port})
io.stderr:write("soak server listening on ", port, "\n")
