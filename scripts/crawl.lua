-- asynchost scripts/crawl.lua [options] URL...
--
-- A polite, fast web crawler: breadth first from the start URLs, inside
-- their host and directory unless told otherwise, obeying robots.txt,
-- writing one JSON object per page. With --frontier postgres://... any
-- number of these processes, on any number of machines, share one crawl.
-- The crawling itself is require "asynchost.crawl" (lua/crawl.lua).
local ah = require("asynchost")
local crawl = require("asynchost.crawl")

local USAGE = [[
usage: asynchost scripts/crawl.lua [options] URL...

Crawls from the start URLs, breadth first, and prints one line per page
(status, URL, title) and a summary at the end.

What to crawl:
  -d, --depth N          follow links N levels below the start URLs (default 5;
                         0: the start URLs only)
  -n, --max-pages N      fetch at most N pages (default: no limit)
      --scope dir|host|any
                         dir (default): the start URLs' host and directory and
                         below (like wget --no-parent); host: their whole host;
                         any: follow links anywhere
      --include PATTERN  follow only URLs matching this Lua pattern (repeatable)
      --exclude PATTERN  never follow URLs matching this Lua pattern (repeatable)
      --ignore-robots    do not fetch or obey robots.txt

How fast (be polite to sites that are not yours):
  -c, --concurrency N    pages in flight at once (default 16)
      --per-host N       pages in flight per host (default: no limit but -c)
      --delay S          at least S seconds between requests to one host
                         (default 0; a robots.txt Crawl-delay can raise it)
      --timeout S        seconds per attempt (default 20)
      --retries N        retries of transient failures (default 2)
      --user-agent S     (default "]] .. crawl.user_agent .. [[")

Output:
  -o, --out FILE         write one JSON object per page, flushed per line:
                         url, status, title, links, bytes, ms, depth, error
  -q, --quiet            no line per page on stdout; a progress bar on stderr
                         instead (a line every few seconds when not a terminal)
      --no-progress      no progress bar with --quiet

A crawl shared through PostgreSQL (see docs/crawl.md):
      --frontier DSN     keep the frontier and results in PostgreSQL; every
                         process given the same DSN and crawl id shares the work
      --crawl-id ID      names the crawl (default: the start URLs); run more
                         workers with just --frontier and --crawl-id
      --lease S          seconds a worker owns a URL before others may take it
                         over (default 60)
      --worker NAME      this worker's name in the tables (default: host-random)
      --reset            forget an earlier crawl with the same id first

  -h, --help             show this help

Ctrl-C stops scheduling pages, lets the ones in flight finish (2 s at most)
and keeps everything written so far.
]]

local function usage_error(msg)
  io.stderr:write("crawl: ", msg, "\n(try --help)\n")
  os.exit(2)
end

local numeric = {depth = "integer", ["max-pages"] = "integer", concurrency = "integer",
                 ["per-host"] = "integer", delay = "number", timeout = "number",
                 retries = "integer", lease = "number"}
local short = {d = "depth", n = "max-pages", c = "concurrency", o = "out", q = "quiet",
               h = "help"}
local flags = {quiet = true, help = true, ["ignore-robots"] = true, ["no-progress"] = true,
               reset = true}
local valued = {scope = true, include = true, exclude = true, out = true, frontier = true,
                ["crawl-id"] = true, ["user-agent"] = true, worker = true}

local function parse_args(args)
  local o = {urls = {}, include = {}, exclude = {}}
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, value
    if a == "--" then
      for j = i + 1, #args do o.urls[#o.urls + 1] = args[j] end
      break
    elseif a:match("^%-%-") then
      name, value = a:match("^%-%-([^=]+)=(.*)$")
      if not name then name = a:sub(3) end
    elseif a:match("^%-%a$") then
      name = short[a:sub(2)]
      if not name then usage_error("unknown option " .. a) end
    else
      o.urls[#o.urls + 1] = a
    end
    if name then
      if flags[name] then
        if value then usage_error("--" .. name .. " takes no value") end
        o[name] = true
      elseif numeric[name] or valued[name] then
        if not value then
          i = i + 1
          value = args[i]
          if not value then usage_error("--" .. name .. " needs a value") end
        end
        if numeric[name] then
          local n = tonumber(value)
          if not n or n < 0 or (numeric[name] == "integer" and math.type(n) ~= "integer") then
            usage_error(("--%s wants a non-negative %s, not '%s'"):format(name, numeric[name], value))
          end
          o[name] = n
        elseif name == "include" or name == "exclude" then
          local list = o[name]
          list[#list + 1] = value
        else
          o[name] = value
        end
      else
        usage_error("unknown option --" .. name)
      end
    end
    i = i + 1
  end
  return o
end

local o = parse_args(arg)
if o.help then
  io.stdout:write(USAGE)
  return
end
if o.scope and o.scope ~= "dir" and o.scope ~= "host" and o.scope ~= "any" then
  usage_error("--scope is dir, host or any")
end
if (o.concurrency and o.concurrency < 1) then usage_error("--concurrency must be at least 1") end
for _, u in ipairs(o.urls) do
  local ok, err = crawl.canonical(u)
  if not ok then usage_error(err) end
end
if #o.urls == 0 then
  if not (o.frontier and o["crawl-id"]) then
    usage_error("no URL to crawl (or --frontier DSN --crawl-id ID to join a shared crawl)")
  end
  -- join a shared crawl with the options it was started with
  local saved, err = crawl.shared_options(o.frontier, o["crawl-id"])
  if not saved then
    io.stderr:write(err, "\n")
    os.exit(1)
  end
  o.urls = saved.urls
  for k, v in pairs({depth = saved.depth, ["max-pages"] = saved.max_pages, scope = saved.scope,
                     include = saved.include, exclude = saved.exclude}) do
    if o[k] == nil or (type(o[k]) == "table" and #o[k] == 0) then o[k] = v end
  end
  if saved.robots == false then o["ignore-robots"] = true end
end

-- Ctrl-C: pages in flight get 2 s to finish, then they are cancelled
ah.shutdown_timeout(2)

local quiet = o.quiet
local ok, stats = pcall(crawl.run, {
  urls = o.urls,
  depth = o.depth,
  max_pages = o["max-pages"],
  concurrency = o.concurrency,
  per_host = o["per-host"],
  delay = o.delay,
  scope = o.scope,
  include = o.include,
  exclude = o.exclude,
  robots = not o["ignore-robots"],
  timeout = o.timeout,
  retries = o.retries,
  user_agent = o["user-agent"],
  out = o.out,
  frontier = o.frontier,
  crawl_id = o["crawl-id"],
  lease = o.lease,
  worker = o.worker,
  reset = o.reset,
  -- the page lines are the progress; a bar redrawn under them would garble both
  progress = quiet and not o["no-progress"],
  on_page = not quiet and function(rec)
    print(("%s  %s%s"):format(rec.status or "ERR", rec.url,
                              rec.error and ("  " .. rec.error) or rec.title and ("  " .. rec.title) or ""))
  end or nil,
})
if not ok then
  if tostring(stats):match("^cancelled") then error(stats, 0) end
  io.stderr:write(tostring(stats), "\n")
  os.exit(1)
end
io.stderr:write(crawl.summary(stats), "\n")
