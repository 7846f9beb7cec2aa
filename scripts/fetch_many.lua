-- asynchost scripts/fetch_many.lua [options] URL...
--
-- Fetches many URLs at once with bounded concurrency and prints, per URL,
-- its status (or error), time in ms and size in bytes, then a summary.
-- The asyncio tutorial's "download 100 pages" as a tool.
local ah = require("asynchost")
local fetch, gather, now = ah.fetch, ah.gather, ah.now

local USAGE = [[
usage: asynchost scripts/fetch_many.lua [options] URL...

  -f, --file FILE      read URLs from FILE, one per line ('-': standard
                       input; blank lines and lines starting with # skipped)
  -c, --concurrency N  requests in flight at once (default 20)
      --per-host N     at most N in flight to one host (default: no limit)
  -t, --timeout S      seconds for each request (default 30)
  -r, --retries N      retry transient failures N times (default 0)
  -m, --method M       HTTP method (default GET)
  -H, --header 'Name: value'
                       add a request header (repeatable)
  -k, --insecure       do not verify TLS certificates
  -q, --quiet          print only the summary
  -h, --help           this text

Output, one line per URL as it finishes, tab-separated:
  STATUS  MS  BYTES  URL          (STATUS is "ERR" and BYTES the error on failure)
and a summary on the last line.]]

local function die(msg)
  io.stderr:write("fetch_many: ", msg, "\n", "try --help\n")
  os.exit(2)
end

local function parse(args)
  local o = {urls = {}, concurrency = 20, timeout = 30, retries = 0, headers = {}}
  local i = 1
  local function value(name)
    i = i + 1
    if args[i] == nil then die(name .. " needs a value") end
    return args[i]
  end
  local function number(name, min)
    local v = tonumber(value(name))
    if not v or v < min then die(name .. " must be a number >= " .. min) end
    return v
  end
  while i <= #args do
    local a = args[i]
    if a == "-h" or a == "--help" then
      print(USAGE)
      os.exit(0)
    elseif a == "-f" or a == "--file" then o.file = value(a)
    elseif a == "-c" or a == "--concurrency" then o.concurrency = math.floor(number(a, 1))
    elseif a == "--per-host" then o.per_host = math.floor(number(a, 1))
    elseif a == "-t" or a == "--timeout" then o.timeout = number(a, 0)
    elseif a == "-r" or a == "--retries" then o.retries = math.floor(number(a, 0))
    elseif a == "-m" or a == "--method" then o.method = value(a)
    elseif a == "-H" or a == "--header" then
      local name, v = value(a):match("^([^:%s]+):%s*(.*)$")
      if not name then die("a header is 'Name: value'") end
      o.headers[name] = v
    elseif a == "-k" or a == "--insecure" then o.insecure = true
    elseif a == "-q" or a == "--quiet" then o.quiet = true
    elseif a:sub(1, 1) == "-" and a ~= "-" then die("unknown option " .. a)
    else o.urls[#o.urls + 1] = a
    end
    i = i + 1
  end
  return o
end

local function read_urls(o)
  if not o.file then return end
  local lines
  if o.file == "-" then
    lines = ah.stdin:lines() -- does not block the loop
  else
    local f, err = io.open(o.file)
    if not f then die(err) end
    f:close()
    lines = io.lines(o.file) -- a local file: read before any fetch starts
  end
  for line in lines do
    line = line:match("^%s*(.-)%s*$")
    if line ~= "" and line:sub(1, 1) ~= "#" then o.urls[#o.urls + 1] = line end
  end
end

local o = parse(arg or {...})
read_urls(o)
if #o.urls == 0 then die("no URLs (give them as arguments or with -f FILE)") end
if o.per_host then fetch.config{per_host = o.per_host} end

local opts = {
  timeout = o.timeout > 0 and o.timeout or nil,
  retries = o.retries > 0 and o.retries or nil,
  method = o.method,
  headers = o.headers,
  verify = not o.insecure,
}

local bar = ah.progress and not o.quiet and ah.progress(#o.urls, "fetch") or nil
local statuses, errors = {}, {}
local ok, failed, bytes = 0, 0, 0
local t0 = now()

local function one(url)
  local t = now()
  local res, err = fetch(url, opts)
  local ms = (now() - t) * 1000
  if res then
    ok = ok + 1
    bytes = bytes + res.size
    statuses[res.status] = (statuses[res.status] or 0) + 1
    if not o.quiet then print(("%d\t%.0f\t%d\t%s"):format(res.status, ms, res.size, url)) end
  else
    failed = failed + 1
    local kind = err:match("^(%w+)") or "error"
    errors[kind] = (errors[kind] or 0) + 1
    if not o.quiet then print(("ERR\t%.0f\t%s\t%s"):format(ms, err, url)) end
  end
  if bar then bar:tick(1, res ~= nil) end
end

gather(o.urls, one, {limit = o.concurrency, settle = true})
if bar then bar:done() end

local elapsed = now() - t0
local function counts(t)
  local keys, parts = {}, {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. t[k] end
  return #parts > 0 and table.concat(parts, " ") or "-"
end
local s = fetch.stats()
print(("%d URLs in %.2f s (%.1f/s): %d ok, %d failed, %d bytes; status %s; errors %s; %d reused connections")
  :format(#o.urls, elapsed, #o.urls / elapsed, ok, failed, bytes, counts(statuses), counts(errors), s.reused))
if failed > 0 then os.exit(1) end
