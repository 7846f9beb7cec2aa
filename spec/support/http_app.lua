-- The server that spec/http_clients_spec.lua drives from outside, as its
-- own asynchost process (also under --workers):
--   asynchost spec/support/http_app.lua READYFILE
-- Settings come from the environment: HTTP_PORT (0: any), HTTP_TIMEOUT
-- (request_timeout), HTTP_MAX_CONNECTIONS, HTTP_ACCESS_LOG=1,
-- HTTP_STATIC_DIR. When listening it writes "port pid worker" to
-- READYFILE (READYFILE.<worker> under --workers).
local ready = assert(arg[1], "usage: http_app.lua READYFILE")

local function pid()
  local f = assert(io.open("/proc/self/stat"))
  local s = f:read("l")
  f:close()
  return tonumber(s:match("^(%d+)"))
end
local PID = pid()

local app = http.server{
  request_timeout = tonumber(os.getenv("HTTP_TIMEOUT") or "5"),
  idle_timeout = 5,
  max_connections = tonumber(os.getenv("HTTP_MAX_CONNECTIONS") or "100"),
  max_body = 1024 * 1024,
  max_header = 8192,
  access_log = os.getenv("HTTP_ACCESS_LOG") == "1",
}

app:get("/", function()
  return {hello = "world", worker = http.worker, pid = PID}
end)

app:post("/echo", function(req)
  return {
    len = #req.body,
    head = req.body:sub(1, 64),
    ctype = req.headers["content-type"],
    te = req.headers["transfer-encoding"],
    expect = req.headers["expect"],
  }
end)

app:post("/json", function(req)
  local v = req:json()
  return {got = v}
end)

app:get("/slow", function(req)
  local s = tonumber(req.query.s or "0.5")
  sleep(s)
  return {slept = s, pid = PID}
end)

app:get("/n/:n", function(req)
  return "n=" .. req.params.n
end)

-- a handler putting the client's text in a header (injection attempts)
app:get("/inject", function(req)
  return 200, "ok", {["X-Test"] = req.query.v or ""}
end)

app:get("/boom", function()
  error("secret-internal-detail")
end)

app:get("/stream", function(req)
  return req:stream(function(write)
    for i = 1, 3 do
      write("piece " .. i .. "\n")
      sleep(0.05)
    end
  end)
end)

if os.getenv("HTTP_STATIC_DIR") then
  app:static("/files", os.getenv("HTTP_STATIC_DIR"))
end

local ok, err = app:listen{host = "127.0.0.1",
  port = tonumber(os.getenv("HTTP_PORT") or "0")}
if not ok then
  io.stderr:write("http_app: ", err, "\n")
  os.exit(3)
end
local name = http.worker and (ready .. "." .. http.worker) or ready
local f = assert(io.open(name .. ".tmp", "w"))
f:write(app.port, " ", PID, " ", tostring(http.worker), "\n")
f:close()
os.rename(name .. ".tmp", name)

-- A server a failed or aborted spec run left behind must not live on:
-- it exits once spec/run has removed its directory (or after 5 minutes).
local ah = require("asynchost")
local born = ah.now()
while not ah.shutting_down() do
  sleep(0.25)
  local probe = io.open(name)
  if not probe or ah.now() - born > 300 then
    io.stderr:write("http_app: orphaned, exiting\n")
    os.exit(2)
  end
  probe:close()
end
