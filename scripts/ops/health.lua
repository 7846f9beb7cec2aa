-- asynchost scripts/ops/health.lua [options] TARGET...
--
-- Probes HTTP endpoints and TCP ports, all at once, every few seconds, and
-- prints a table per round. An HTTP target is fetched with GET (fetch:
-- up when the status is below 400, or one of --expect); a TCP target is up
-- when a connection can be made (net.probe: connect, nothing sent, then
-- close). Each probe has its own deadline; a slow one never delays the
-- others or the next round.
--
--   asynchost scripts/ops/health.lua --once https://example.com/ tcp://127.0.0.1:5432
--   asynchost scripts/ops/health.lua -i 5 -f targets.txt
local ah = require("asynchost")
local fetch, net, fs, gather, json = ah.fetch, ah.net, ah.fs, ah.gather, ah.json
local now, sleep = ah.now, ah.sleep

local USAGE = [[
usage: asynchost scripts/ops/health.lua [options] TARGET...

TARGET is an http:// or https:// URL, or a TCP port as tcp://HOST:PORT or
HOST:PORT ([v6::addr]:PORT for IPv6).

  -i, --interval S   seconds between rounds (default 10)
  -t, --timeout S    deadline of each probe (default 5)
  -e, --expect LIST  HTTP statuses that count as up, e.g. 200,204 or 2xx
                     (default: any status below 400)
  -f, --file FILE    read more targets from FILE (one per line, # comments)
      --once         probe once and exit: status 0 if every target is up
      --json         print one JSON object per target and round instead
  -h, --help         show this help

Runs until interrupted (Ctrl-C) unless --once is given.
Exit status: 0 all up (--once), 1 something down (--once), 2 usage.
]]

local function usage_error(msg)
  io.stderr:write("health.lua: ", msg, "\n", USAGE)
  os.exit(2)
end

local opts = {interval = 10, timeout = 5}
local specs, files = {}, {}
local i = 1
while i <= #arg do
  local a = arg[i]
  local function value()
    i = i + 1
    if arg[i] == nil then usage_error(a .. " needs a value") end
    return arg[i]
  end
  local function number(min)
    local v = tonumber(value())
    if not v or v < min then usage_error(a .. " needs a number >= " .. min) end
    return v
  end
  if a == "-h" or a == "--help" then
    io.write(USAGE)
    os.exit(0)
  elseif a == "-i" or a == "--interval" then
    opts.interval = number(0.01)
  elseif a == "-t" or a == "--timeout" then
    opts.timeout = number(0.001)
  elseif a == "-e" or a == "--expect" then
    opts.expect = value()
  elseif a == "-f" or a == "--file" then
    files[#files + 1] = value()
  elseif a == "--once" then
    opts.once = true
  elseif a == "--json" then
    opts.json = true
  elseif a:sub(1, 1) == "-" then
    usage_error("unknown option " .. a)
  else
    specs[#specs + 1] = a
  end
  i = i + 1
end

for _, path in ipairs(files) do
  local ok, err = pcall(function()
    for line in fs.lines(path) do
      line = line:gsub("#.*", ""):match("^%s*(.-)%s*$")
      if line ~= "" then specs[#specs + 1] = line end
    end
  end)
  if not ok then usage_error(tostring(err)) end
end
if #specs == 0 then usage_error("no target given") end

-- --expect: a predicate on the status.
local expected
if opts.expect then
  local set, classes = {}, {}
  for item in opts.expect:gmatch("[^,%s]+") do
    local class = item:match("^(%d)xx$")
    if class then
      classes[tonumber(class)] = true
    elseif tonumber(item) then
      set[tonumber(item)] = true
    else
      usage_error("bad --expect item " .. item)
    end
  end
  expected = function(status) return set[status] or classes[status // 100] or false end
else
  expected = function(status) return status < 400 end
end

-- A target: {kind = "http", url} or {kind = "tcp", host, port}.
local function parse_target(s)
  if s:match("^https?://") then return {kind = "http", name = s, url = s} end
  local hostport = s:match("^tcp://(.+)$") or s
  local host, port = hostport:match("^%[(.+)%]:(%d+)$")
  if not host then host, port = hostport:match("^([^:/]+):(%d+)$") end
  port = tonumber(port)
  if not host or not port or port < 1 or port > 65535 then
    usage_error("bad target " .. s .. " (an http(s) URL or HOST:PORT)")
  end
  return {kind = "tcp", name = "tcp://" .. hostport, host = host, port = port}
end

local targets = {}
for n, s in ipairs(specs) do targets[n] = parse_target(s) end

-- One probe: {up = bool, ms = number, detail = string}.
local function probe(t)
  local t0 = now()
  if t.kind == "tcp" then
    local secs, err = net.probe(t.host, t.port, opts.timeout)
    if not secs then return {up = false, ms = (now() - t0) * 1000, detail = err} end
    return {up = true, ms = secs * 1000, detail = "connected"}
  end
  local res, err = fetch(t.url, {timeout = opts.timeout})
  local ms = (now() - t0) * 1000
  if not res then return {up = false, ms = ms, detail = err} end
  local up = expected(res.status)
  return {up = up, ms = ms, status = res.status,
    detail = ("HTTP %d%s"):format(res.status, up and "" or " (not expected)")}
end

-- Prints rows (lists of strings) under headers, columns aligned.
local function print_table(headers, rows)
  local width = {}
  for c, h in ipairs(headers) do width[c] = #h end
  for _, r in ipairs(rows) do
    for c, v in ipairs(r) do width[c] = math.max(width[c], utf8.len(v) or #v) end
  end
  local function line(r)
    local cells = {}
    for c, v in ipairs(r) do
      cells[c] = v .. (c < #r and string.rep(" ", width[c] - (utf8.len(v) or #v)) or "")
    end
    print(table.concat(cells, "  "))
  end
  line(headers)
  for _, r in ipairs(rows) do line(r) end
end

local function round()
  local started = os.date("%Y-%m-%d %H:%M:%S")
  local results = gather(targets, probe)
  local up = 0
  for n = 1, #targets do if results[n].up then up = up + 1 end end
  if opts.json then
    for n, t in ipairs(targets) do
      local r = results[n]
      print(json.encode({time = started, target = t.name, up = r.up,
        ms = math.floor(r.ms + 0.5), status = r.status, detail = r.detail}))
    end
  else
    local rows = {}
    for n, t in ipairs(targets) do
      local r = results[n]
      rows[n] = {t.name, r.up and "up" or "DOWN", ("%.0f ms"):format(r.ms), r.detail}
    end
    print(("%s  %d/%d up"):format(started, up, #targets))
    print_table({"target", "state", "time", "detail"}, rows)
    print()
  end
  io.stdout:flush()
  return up == #targets
end

if opts.once then os.exit(round() and 0 or 1) end

-- A monitor has nothing to drain: Ctrl-C or SIGTERM stops it at once.
ah.shutdown_timeout(0)
while true do
  local t0 = now()
  round()
  sleep(math.max(0, opts.interval - (now() - t0)))
end
