-- The server spec/load_spec.lua puts under load, as its own asynchost
-- process (started under a raised `ulimit -n`):
--   asynchost spec/support/load_app.lua READYFILE
-- When listening it writes "port pid" to READYFILE. Settings from the
-- environment: LOAD_MAX_CONNECTIONS (default 12000: above the 10,000
-- held connections the spec opens), LOAD_REQUEST_TIMEOUT (default 3).
local ah = require("asynchost")
local ready = assert(arg[1], "usage: load_app.lua READYFILE")

local f = assert(io.open("/proc/self/stat"))
local PID = tonumber(f:read("l"):match("^(%d+)"))
f:close()

local app = http.server{
  max_connections = tonumber(os.getenv("LOAD_MAX_CONNECTIONS") or "12000"),
  request_timeout = tonumber(os.getenv("LOAD_REQUEST_TIMEOUT") or "3"),
  idle_timeout = 60,
}

local served = 0
app:get("/", function()
  served = served + 1
  return {ok = true, n = served}
end)

app:get("/stats", function()
  return {served = served, conns = ah.stats()["http.conn"]}
end)

local ok, err = app:listen{host = "127.0.0.1", port = 0, backlog = 4096}
if not ok then
  io.stderr:write("load_app: ", err, "\n")
  os.exit(3)
end
local o = assert(io.open(ready .. ".tmp", "w"))
o:write(app.port, " ", PID, "\n")
o:close()
os.rename(ready .. ".tmp", ready)

-- Left behind by a failed or aborted run, it must not live on: it exits
-- once spec/run removed its directory (or after 2 minutes).
local born = ah.now()
while not ah.shutting_down() do
  sleep(0.25)
  local probe = io.open(ready)
  if not probe or ah.now() - born > 120 then
    io.stderr:write("load_app: orphaned, exiting\n")
    os.exit(2)
  end
  probe:close()
end
