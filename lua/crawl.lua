-- The crawler core: require "asynchost.crawl". scripts/crawl.lua (the
-- command line), scripts/demo.lua and the specs all crawl through
-- crawl.run(opts); see docs/crawl.md.
--
-- One frontier (a FIFO, so the crawl is breadth first) feeds
-- `concurrency` worker tasks. A URL is admitted to the frontier once: when
-- it is in scope, passes --include/--exclude, is allowed by its host's
-- robots.txt and the page budget is not spent. Per host, a semaphore
-- bounds requests in flight and a clock spaces their starts by `delay`.
-- With opts.frontier (a PostgreSQL DSN) the frontier and the results live
-- in PostgreSQL instead, shared by every process crawling the same id.
local M = ...

local crawl = {}

local now, sleep, spawn = M.now, M.sleep, M.spawn
local concat, floor, max = table.concat, math.floor, math.max
local find, sub, lower = string.find, string.sub, string.lower

crawl.defaults = {
  depth = 5,          -- link levels below the start URLs (0: only them)
  max_pages = 0,      -- 0: no limit
  concurrency = 16,   -- pages in flight
  per_host = 0,       -- pages in flight per host; 0: no limit beyond concurrency
  delay = 0,          -- seconds between request starts to one host
  scope = "dir",      -- "dir" | "host" | "any"
  robots = true,
  timeout = 20,       -- seconds per attempt
  retries = 2,        -- for transient failures (fetch's retries)
  max_size = 16 * 1024 * 1024,
  lease = 60,         -- seconds a shared-frontier worker owns a URL
  batch = 0,          -- URLs leased at once (0: concurrency)
}
crawl.robots_token = "asynchost"
crawl.user_agent = "asynchost/" .. M.version .. " (crawl)"

-- ---- URLs -------------------------------------------------------------------

-- The canonical form of a start URL: normalized by curl, no fragment.
local function canonical(u)
  local n, err = M.url.normalize(u)
  if not n then return nil, err end
  local scheme = n:match("^(%a[%w+.-]*):")
  if scheme ~= "http" and scheme ~= "https" then
    return nil, "http: bad URL '" .. u .. "': not an http(s) URL"
  end
  return (n:gsub("#.*$", ""))
end
crawl.canonical = canonical

-- Canonical URLs (curl's output) split simply: "http://host:port/path?q".
local function origin_of(u) return u:match("^(https?://[^/?#]+)") end
local function authority_of(u) return u:match("^https?://([^/?#]+)") end
local function path_of(u) return u:match("^https?://[^/?#]+(.*)$") end

-- The scope test for one crawl: a function(url) -> boolean.
local function make_scope(kind, starts)
  if kind == "any" then return function() return true end end
  if kind == "host" then
    local hosts = {}
    for _, s in ipairs(starts) do hosts[authority_of(s)] = true end
    return function(u) return hosts[authority_of(u)] == true end
  end
  if kind ~= "dir" then error("crawl: scope must be dir, host or any", 0) end
  -- like wget --no-parent: the start URL's directory and what is below it
  local prefixes = {}
  for _, s in ipairs(starts) do
    local o, p = origin_of(s), path_of(s)
    p = p:gsub("[?#].*$", "")
    prefixes[#prefixes + 1] = o .. p:match("^(.*/)")
  end
  return function(u)
    for i = 1, #prefixes do
      local p = prefixes[i]
      if sub(u, 1, #p) == p then return true end
    end
    return false
  end
end

-- Lua patterns from --include/--exclude: function(url) -> boolean.
local function make_filter(include, exclude)
  local function check(list, what)
    for _, p in ipairs(list or {}) do
      local ok, err = pcall(find, "", p)
      if not ok then error(("crawl: bad %s pattern '%s': %s"):format(what, p, err), 0) end
    end
  end
  check(include, "include")
  check(exclude, "exclude")
  include, exclude = include or {}, exclude or {}
  return function(u)
    for i = 1, #exclude do
      if find(u, exclude[i]) then return false end
    end
    if #include == 0 then return true end
    for i = 1, #include do
      if find(u, include[i]) then return true end
    end
    return false
  end
end

-- ---- robots.txt (RFC 9309) -----------------------------------------------------

-- A robots.txt path pattern as a Lua pattern: * is any run, a final $
-- anchors the end, everything else is literal.
local function robots_pattern(p)
  local anchored = p:sub(-1) == "$"
  if anchored then p = p:sub(1, -2) end
  p = p:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0"):gsub("%*", ".-")
  return "^" .. p .. (anchored and "$" or "")
end

-- Parses robots.txt text into the rules for the product token `agent`:
-- {rules = {{allow=, pattern=, len=}...}, delay = seconds | nil}. The
-- groups naming the agent win over the "*" groups; groups are merged.
function crawl.parse_robots(text, agent)
  agent = lower(agent or crawl.robots_token)
  local groups, cur, in_rules = {}, nil, false
  for line in (text .. "\n"):gmatch("([^\r\n]*)\r?\n?") do
    line = line:gsub("#.*$", "")
    local key, value = line:match("^%s*([%a%-]+)%s*:%s*(.-)%s*$")
    if key then
      key = lower(key)
      if key == "user-agent" then
        if not cur or in_rules then
          cur = {agents = {}, rules = {}}
          groups[#groups + 1] = cur
          in_rules = false
        end
        cur.agents[#cur.agents + 1] = lower(value:match("^[%w_%-]+") or value)
      elseif (key == "allow" or key == "disallow") and cur then
        in_rules = true
        if value ~= "" then
          cur.rules[#cur.rules + 1] = {allow = key == "allow", len = #value,
                                       pattern = robots_pattern(value)}
        end
      elseif key == "crawl-delay" and cur then
        in_rules = true
        cur.delay = tonumber(value)
      end
    end
  end
  local function pick(match)
    local out, found = {rules = {}}, false
    for _, g in ipairs(groups) do
      for _, a in ipairs(g.agents) do
        if match(a) then
          found = true
          for _, r in ipairs(g.rules) do out.rules[#out.rules + 1] = r end
          if g.delay then out.delay = max(out.delay or 0, g.delay) end
          break
        end
      end
    end
    return found and out
  end
  return pick(function(a) return a == agent end) or pick(function(a) return a == "*" end)
         or {rules = {}}
end

-- Whether the rules allow a URL path (path and query): the longest
-- matching rule decides, Allow winning a tie; no match allows.
function crawl.robots_allows(rules, path)
  local best, allow = -1, true
  for _, r in ipairs(rules.rules) do
    if r.len >= best and find(path, r.pattern) then
      if r.len > best or r.allow then allow = r.allow end
      best = r.len
    end
  end
  return allow
end

-- ---- one crawl ------------------------------------------------------------------

local Crawl = {}
Crawl.__index = Crawl

local function opt(opts, k)
  local v = opts[k]
  if v == nil then return crawl.defaults[k] end
  return v
end

local function new_crawl(opts)
  local c = setmetatable({}, Crawl)
  c.opts = opts
  c.depth = opt(opts, "depth")
  c.max_pages = opt(opts, "max_pages")
  c.concurrency = opt(opts, "concurrency")
  c.per_host = opt(opts, "per_host")
  c.delay = opt(opts, "delay")
  c.robots = opt(opts, "robots")
  assert(math.type(c.depth) == "integer" and c.depth >= 0, "crawl: depth must be an integer >= 0")
  assert(math.type(c.max_pages) == "integer" and c.max_pages >= 0,
         "crawl: max_pages must be an integer >= 0")
  assert(math.type(c.concurrency) == "integer" and c.concurrency >= 1,
         "crawl: concurrency must be an integer >= 1")
  assert(math.type(c.per_host) == "integer" and c.per_host >= 0,
         "crawl: per_host must be an integer >= 0")
  assert(type(c.delay) == "number" and c.delay >= 0, "crawl: delay must be >= 0")
  if c.per_host == 0 or c.per_host >= c.concurrency then c.per_host = nil end
  c.fetch_opts = {
    timeout = opt(opts, "timeout"),
    retries = opt(opts, "retries"),
    max_size = opt(opts, "max_size"),
    headers = {["user-agent"] = opts.user_agent or crawl.user_agent},
  }
  c.seen = {}       -- url -> true once considered for the frontier
  c.hosts = {}      -- authority -> {sem=, next=, delay=}
  c.robots_cache = {} -- origin -> rules | {waiting = tasks}
  c.stats = {pages = 0, ok = 0, failed = 0, errors = 0, redirected = 0,
             blocked = 0, bytes = 0, admitted = 0, status = {}}
  c.stopping = false
  return c
end

-- Host state: the politeness limits for one authority.
function Crawl:host(u)
  local a = authority_of(u)
  local h = self.hosts[a]
  if not h then
    h = {next = 0, delay = self.delay}
    if self.per_host then h.sem = M.semaphore(self.per_host) end
    self.hosts[a] = h
  end
  return h
end

-- The robots rules for u's origin, fetched once; concurrent callers wait
-- for the first fetch.
function Crawl:robots_for(u)
  local o = origin_of(u)
  local e = self.robots_cache[o]
  if e and e.rules then return e.rules end
  if e then -- another task is fetching it
    e.sem:acquire()
    e.sem:release()
    return e.rules or {rules = {}}
  end
  e = {sem = M.semaphore(0)}
  self.robots_cache[o] = e
  local ok, rules = pcall(self.fetch_robots, self, o)
  e.rules = ok and rules or {rules = {}}
  e.sem:release()
  if not ok then error(rules, 0) end
  return e.rules
end

function Crawl:fetch_robots(o)
  local res, err = M.fetch(o .. "/robots.txt", self.fetch_opts)
  local rules
  if res and res.status >= 200 and res.status < 300 then
    rules = crawl.parse_robots(res.body:sub(1, 512 * 1024), crawl.robots_token)
  elseif res and res.status >= 400 and res.status < 500 then
    rules = {rules = {}} -- no robots.txt: everything is allowed
  else
    -- RFC 9309: an unreachable robots.txt (5xx, network) disallows all
    self:warn(("robots.txt of %s unreachable (%s): not crawling that host"):format(
      o, res and ("status " .. res.status) or err))
    rules = {rules = {{allow = false, len = 1, pattern = "^/"}},
             unreachable = err or ("http: " .. o .. "/robots.txt: status " .. res.status)}
  end
  if rules.delay and rules.delay > 0 then
    local h = self:host(o .. "/")
    h.delay = max(h.delay, rules.delay)
  end
  return rules
end

function Crawl:warn(msg)
  if self.opts.on_warning then return self.opts.on_warning(msg) end
  if M.log then
    M.log.warn(msg)
  else
    io.stderr:write("crawl: ", msg, "\n")
  end
end

-- Whether a discovered URL should be crawled: scope, filters, robots.
-- Marks it seen either way. May fetch robots.txt (suspends).
function Crawl:wanted(u, is_start)
  local seen = self.seen
  if seen[u] then return false end
  seen[u] = true
  if not is_start and not (self.in_scope(u) and self.filter(u)) then return false end
  if self.robots then
    local rules = self:robots_for(u)
    if #rules.rules > 0 and not crawl.robots_allows(rules, path_of(u)) then
      if is_start and rules.unreachable then
        -- a start URL gets its line in --out: why it was not crawled
        self:record({url = u, depth = 0, bytes = 0, links = M.json.array({}),
                     error = rules.unreachable})
      else
        self.stats.blocked = self.stats.blocked + 1
      end
      return false
    end
  end
  return true
end

-- Waits for a request slot on u's host; returns the host to release.
function Crawl:acquire(u)
  local h = self:host(u)
  if h.sem then h.sem:acquire() end
  if h.delay > 0 then
    local t = now()
    local start = max(t, h.next)
    h.next = start + h.delay
    if start > t then
      local ok, err = pcall(sleep, start - t)
      if not ok then
        if h.sem then h.sem:release() end
        error(err, 0)
      end
    end
  end
  return h
end

local function is_html(ctype)
  if not ctype then return true end
  ctype = lower(ctype)
  return find(ctype, "html", 1, true) ~= nil
end

-- Fetches and parses one page: the record and the links to follow.
function Crawl:visit(u, depth)
  local h = self:acquire(u)
  local t0 = now()
  local ok, res, err = pcall(M.fetch, u, self.fetch_opts)
  if h.sem then h.sem:release() end
  if not ok then error(res, 0) end
  local rec = {url = u, depth = depth, links = M.json.array({})}
  local follow
  if not res then
    rec.error = err
    rec.ms = floor((now() - t0) * 1000 + 0.5)
    rec.bytes = 0
    return rec
  end
  rec.status = res.status
  rec.bytes = #res.body
  rec.ms = floor((now() - t0) * 1000 + 0.5) -- all attempts, as the crawl waited
  if res.url and res.url ~= u then
    rec.final_url = res.url
    self.seen[res.url] = true
  end
  if res.status >= 200 and res.status < 300 and is_html(res.headers["content-type"]) then
    local doc <close> = M.html.parse(res.body, {base_url = res.url or u,
                                                encoding = res.headers["content-type"]})
    rec.title = doc:title()
    rec.links = M.json.array(doc:links())
    -- links of a page we were redirected to outside the scope are not followed
    if depth < self.depth and (not rec.final_url or self.in_scope(rec.final_url)) then
      follow = rec.links
    end
  end
  return rec, follow
end

function Crawl:record(rec)
  local s = self.stats
  s.pages = s.pages + 1
  s.bytes = s.bytes + (rec.bytes or 0)
  local good = rec.status and rec.status < 400
  if rec.status then
    s.status[rec.status] = (s.status[rec.status] or 0) + 1
    if good then s.ok = s.ok + 1 else s.failed = s.failed + 1 end
  else
    s.errors = s.errors + 1
  end
  if rec.final_url then s.redirected = s.redirected + 1 end
  if self.out then
    local line = M.json.encode(rec)
    if not line then -- text that is not UTF-8 (an error message from a server?)
      rec.title = rec.title and rec.title:gsub("[\128-\255]", "?")
      rec.error = rec.error and rec.error:gsub("[\128-\255]", "?")
      line = assert(M.json.encode(rec))
    end
    self.out:write(line, "\n")
    self.out:flush()
  end
  if self.bar then self.bar:tick(1, good and true or false) end
  if self.opts.on_page then self.opts.on_page(rec) end
end

-- ---- the in-process frontier ------------------------------------------------------

local Local = {}
Local.__index = Local

local function local_frontier(c)
  return setmetatable({c = c, q = M.queue(), pending = 0}, Local)
end

function Local:add(urls, depth, is_start)
  local c = self.c
  for i = 1, #urls do
    if c.max_pages > 0 and c.stats.admitted >= c.max_pages then return end
    local u = urls[i]
    if c:wanted(u, is_start) then
      c.stats.admitted = c.stats.admitted + 1
      self.pending = self.pending + 1
      self.q:put({u, depth})
    end
  end
end

-- After the start URLs: a crawl whose every start was refused is over.
function Local:started()
  if self.pending == 0 then self.q:close() end
end

function Local:take()
  local item = self.q:get()
  if item then return item[1], item[2] end
end

function Local:done(rec, follow)
  self.c:record(rec)
  if follow and not self.c.stopping then self:add(follow, rec.depth + 1) end
  self:finish()
end

function Local:finish()
  self.pending = self.pending - 1
  if self.pending == 0 then self.q:close() end
end

function Local:stop() self.q:close() end
function Local:close() end

-- ---- the shared frontier in PostgreSQL ------------------------------------------------

crawl.schema = [[
CREATE TABLE IF NOT EXISTS crawl_runs (
  crawl      text PRIMARY KEY,
  options    jsonb NOT NULL,
  max_pages  integer NOT NULL DEFAULT 0,
  admitted   integer NOT NULL DEFAULT 0,
  started_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS crawl_frontier (
  crawl       text NOT NULL REFERENCES crawl_runs ON DELETE CASCADE,
  url         text NOT NULL,
  depth       integer NOT NULL,
  state       text NOT NULL DEFAULT 'queued'
              CHECK (state IN ('queued', 'leased', 'done')),
  lease_until timestamptz,
  worker      text,
  attempts    integer NOT NULL DEFAULT 0,
  id          bigserial,
  PRIMARY KEY (crawl, url)
);
CREATE INDEX IF NOT EXISTS crawl_frontier_todo
  ON crawl_frontier (crawl, depth, id) WHERE state <> 'done';
CREATE TABLE IF NOT EXISTS crawl_results (
  crawl      text NOT NULL REFERENCES crawl_runs ON DELETE CASCADE,
  url        text NOT NULL,
  status     integer,
  title      text,
  links      jsonb,
  bytes      bigint,
  ms         integer,
  depth      integer,
  error      text,
  final_url  text,
  worker     text,
  fetched_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (crawl, url)
);

-- Adds URLs at a depth; returns how many were new. The crawl's row is
-- locked before anything else (before the inserts' foreign-key checks
-- share-lock it), so concurrent workers neither overshoot max_pages nor
-- deadlock upgrading those share locks or inserting the same URLs.
CREATE OR REPLACE FUNCTION crawl_admit(p_crawl text, p_urls jsonb, p_depth integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_max integer;
  v_room integer;
  v_n integer;
BEGIN
  SELECT max_pages, max_pages - admitted INTO v_max, v_room FROM crawl_runs
   WHERE crawl = p_crawl FOR UPDATE;
  IF v_max IS NULL THEN RAISE EXCEPTION 'crawl % does not exist', p_crawl; END IF;
  IF v_max > 0 AND v_room <= 0 THEN RETURN 0; END IF;
  IF v_max <= 0 THEN v_room := NULL; END IF;
  INSERT INTO crawl_frontier (crawl, url, depth)
  SELECT p_crawl, t.u, p_depth
    FROM jsonb_array_elements_text(p_urls) WITH ORDINALITY AS t(u, i)
   WHERE NOT EXISTS (SELECT 1 FROM crawl_frontier f
                      WHERE f.crawl = p_crawl AND f.url = t.u)
   ORDER BY t.i
   LIMIT v_room
  ON CONFLICT DO NOTHING;
  GET DIAGNOSTICS v_n = ROW_COUNT;
  IF v_max > 0 THEN
    UPDATE crawl_runs SET admitted = admitted + v_n WHERE crawl = p_crawl;
  END IF;
  RETURN v_n;
END $$;

-- Leases up to p_n URLs that are queued or whose lease expired (their
-- worker died), shallowest first; other workers skip the locked rows.
CREATE OR REPLACE FUNCTION crawl_lease(p_crawl text, p_worker text, p_n integer,
                                       p_secs double precision)
RETURNS TABLE (url text, depth integer) LANGUAGE sql AS $$
  UPDATE crawl_frontier f
     SET state = 'leased', worker = p_worker, attempts = f.attempts + 1,
         lease_until = clock_timestamp() + make_interval(secs => p_secs)
   WHERE (f.crawl, f.url) IN (
         SELECT c.crawl, c.url FROM crawl_frontier c
          WHERE c.crawl = p_crawl
            AND (c.state = 'queued'
                 OR (c.state = 'leased' AND c.lease_until < clock_timestamp()))
          ORDER BY c.depth, c.id
          LIMIT p_n
          FOR UPDATE SKIP LOCKED)
  RETURNING f.url, f.depth
$$;

-- Records a fetched page and admits its links, atomically, if p_worker
-- still holds the lease (else whoever took it over records it). The
-- results' primary key keeps one result per URL and crawl.
CREATE OR REPLACE FUNCTION crawl_complete(p_crawl text, p_url text, p_worker text,
                                          p_result jsonb, p_links jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM crawl_runs WHERE crawl = p_crawl FOR UPDATE;
  UPDATE crawl_frontier SET state = 'done', lease_until = NULL
   WHERE crawl = p_crawl AND url = p_url AND state = 'leased' AND worker = p_worker;
  IF NOT FOUND THEN RETURN false; END IF;
  INSERT INTO crawl_results (crawl, url, status, title, links, bytes, ms, depth,
                             error, final_url, worker)
  VALUES (p_crawl, p_url, (p_result->>'status')::integer, p_result->>'title',
          p_result->'links', (p_result->>'bytes')::bigint,
          (p_result->>'ms')::integer, (p_result->>'depth')::integer,
          p_result->>'error', p_result->>'final_url', p_worker)
  ON CONFLICT DO NOTHING;
  IF p_links IS NOT NULL AND jsonb_array_length(p_links) > 0 THEN
    PERFORM crawl_admit(p_crawl, p_links, (p_result->>'depth')::integer + 1);
  END IF;
  RETURN true;
END $$;
]]

local Shared = {}
Shared.__index = Shared

local function worker_id()
  local f = io.open("/proc/sys/kernel/hostname")
  local host = f and f:read("l") or "host"
  if f then f:close() end
  return ("%s-%08x"):format(host, math.random(0, 0x7fffffff))
end

local function must(v, err)
  if v == nil then error("crawl: " .. tostring(err), 0) end
  return v
end

-- Connects, creates the schema if missing (under an advisory lock, as
-- several workers may start at once) and registers the crawl.
local function shared_frontier(c, opts)
  assert(M.db, "crawl: --frontier needs the db binding")
  local conn = must(M.db.connect(opts.frontier))
  must(conn:exec("BEGIN; SELECT pg_advisory_xact_lock(7291046); " .. crawl.schema .. " COMMIT;"))
  local s = setmetatable({c = c, conn = conn, id = opts.crawl_id, worker = opts.worker or worker_id(),
                          buf = {}, head = 1, lease = opt(opts, "lease"),
                          batch = opt(opts, "batch"), inflight = 0,
                          lock = M.semaphore(1)}, Shared)
  if s.batch <= 0 then s.batch = c.concurrency end
  if opts.reset then
    must(conn:query("DELETE FROM crawl_runs WHERE crawl = $1", s.id))
  end
  local saved = {depth = c.depth, max_pages = c.max_pages, scope = opts.scope or crawl.defaults.scope,
                 include = M.json.array(opts.include or {}), exclude = M.json.array(opts.exclude or {}),
                 urls = M.json.array(opts.urls or {}), robots = c.robots}
  must(conn:query([[INSERT INTO crawl_runs (crawl, options, max_pages) VALUES ($1, $2, $3)
                    ON CONFLICT (crawl) DO NOTHING]], s.id, saved, c.max_pages))
  return s
end

-- The options a crawl was started with, so a worker can join by id.
function crawl.shared_options(dsn, id)
  local conn = must(M.db.connect(dsn))
  local rows, err = conn:query([[SELECT options FROM crawl_runs WHERE crawl = $1]], id)
  conn:close()
  if not rows then
    if err:match("42P01") then return nil, "crawl: no crawl named '" .. id .. "'" end
    return nil, err
  end
  if not rows[1] then return nil, "crawl: no crawl named '" .. id .. "'" end
  return rows[1].options
end

function Shared:add(urls, depth, is_start)
  local c, keep = self.c, {}
  for i = 1, #urls do
    if c:wanted(urls[i], is_start) then keep[#keep + 1] = urls[i] end
  end
  if #keep > 0 then
    local rows = must(self.conn:query("SELECT crawl_admit($1, $2, $3) AS n", self.id,
                                      M.json.array(keep), depth))
    c.stats.admitted = c.stats.admitted + rows[1].n
  end
end

function Shared:started() end

-- The next leased URL; leases a batch when the local buffer is empty (one
-- task at a time). While nothing is leasable but URLs are still leased
-- (other workers' pages may add more, or their leases expire), it polls;
-- nil once nothing in the crawl is left to do.
function Shared:take()
  while true do
    if self.c.stopping or self.finished then return nil end
    if self.head <= #self.buf then
      local item = self.buf[self.head]
      self.buf[self.head] = nil
      self.head = self.head + 1
      self.inflight = self.inflight + 1
      return item[1], item[2]
    end
    self.lock:with(self.refill, self)
  end
end

function Shared:refill()
  local idle = 0.02
  while self.head > #self.buf and not self.c.stopping and not self.finished do
    local got = must(self.conn:query("SELECT url, depth FROM crawl_lease($1, $2, $3, $4)",
                                     self.id, self.worker, self.batch, self.lease))
    if #got > 0 then
      table.sort(got, function(a, b) return a.depth < b.depth end)
      self.buf, self.head = {}, 1
      for i, r in ipairs(got) do self.buf[i] = {r.url, r.depth} end
      return
    end
    if self.inflight == 0 then
      local rows = must(self.conn:query([[SELECT count(*) AS n FROM crawl_frontier
                                          WHERE crawl = $1 AND state <> 'done']], self.id))
      if rows[1].n == 0 then
        self.finished = true
        return
      end
    end
    sleep(idle)
    idle = math.min(idle * 2, 0.5)
  end
end

function Shared:done(rec, follow)
  local c = self.c
  if follow then
    local keep = {}
    for i = 1, #follow do
      if c:wanted(follow[i]) then keep[#keep + 1] = follow[i] end
    end
    follow = M.json.array(keep)
  end
  local rows = must(self.conn:query("SELECT crawl_complete($1, $2, $3, $4, $5) AS ok",
                                    self.id, rec.url, self.worker, rec, follow))
  self.inflight = self.inflight - 1
  -- false: our lease had expired and another worker took the URL over;
  -- its result is the one recorded
  if rows[1].ok then c:record(rec) end
end

function Shared:finish() self.inflight = self.inflight - 1 end
function Shared:stop() self.c.stopping = true end

-- Gives back what was leased but not started, so others need not wait
-- for the leases to expire.
function Shared:close()
  local unstarted = self:unstarted()
  pcall(function()
    if #unstarted == 0 then return end
    self.conn:query([[UPDATE crawl_frontier SET state = 'queued', lease_until = NULL
                       WHERE crawl = $1 AND worker = $2 AND state = 'leased'
                         AND url = ANY (SELECT jsonb_array_elements_text($3))]],
                    self.id, self.worker, M.json.array(unstarted))
  end)
  self.conn:close()
end

function Shared:unstarted()
  local out = {}
  for i = self.head, #self.buf do out[#out + 1] = self.buf[i][1] end
  return out
end

-- ---- running -----------------------------------------------------------------------

-- crawl.run(opts) -> stats. opts: urls (list), depth, max_pages,
-- concurrency, per_host, delay, scope, include, exclude (lists of Lua
-- patterns), robots, timeout, retries, max_size, user_agent, out (a path
-- or a file), on_page(rec), on_warning(msg), progress (bool), frontier
-- (PostgreSQL DSN), crawl_id, lease, batch, reset. Raises on bad options.
function crawl.run(opts)
  local c = new_crawl(opts)
  local starts = {}
  for _, u in ipairs(opts.urls or {}) do
    starts[#starts + 1] = assert(canonical(u))
  end
  if #starts == 0 and not opts.frontier then error("crawl: no start URL", 0) end
  if opts.frontier then
    if not opts.crawl_id then
      local sorted = {table.unpack(starts)}
      table.sort(sorted)
      opts.crawl_id = concat(sorted, " ")
    end
  end
  c.in_scope = make_scope(opts.scope or crawl.defaults.scope, starts)
  c.filter = make_filter(opts.include, opts.exclude)
  local own_out
  if type(opts.out) == "string" then
    local f, err = io.open(opts.out, "w")
    if not f then error("crawl: cannot write --out: " .. err, 0) end
    c.out = f
    own_out = true
  elseif opts.out then
    c.out = opts.out
  end
  if opts.progress and M.progress then
    c.bar = M.progress(c.max_pages > 0 and c.max_pages or nil, "crawl")
  end
  local frontier = opts.frontier and shared_frontier(c, opts) or local_frontier(c)
  c.frontier = frontier
  local t0 = now()
  local watcher = spawn(function()
    while not c.finished do
      if M.shutting_down() then
        c.stopping = true
        c.interrupted = true
        frontier:stop()
        return
      end
      sleep(0.1)
    end
  end)
  local ok, err = pcall(function()
    frontier:add(starts, 0, true)
    frontier:started()
    local function worker()
      while true do
        local u, depth = frontier:take()
        if not u then return end
        if c.stopping then
          frontier:finish()
        else
          frontier:done(c:visit(u, depth))
        end
      end
    end
    local tasks = {}
    for i = 1, c.concurrency do tasks[i] = worker end
    M.gather(tasks)
  end)
  c.finished = true
  watcher:cancel()
  pcall(watcher.wait, watcher)
  frontier:close()
  if c.bar then c.bar:done() end
  if own_out then c.out:close() end
  if not ok then error(err, 0) end
  local s = c.stats
  s.elapsed = now() - t0
  s.interrupted = c.interrupted or false
  s.crawl_id = opts.crawl_id
  s.hosts = 0
  for _ in pairs(c.hosts) do s.hosts = s.hosts + 1 end
  return s
end

-- A one-paragraph summary of crawl.run's stats.
function crawl.summary(s)
  local codes = {}
  for code, n in pairs(s.status) do codes[#codes + 1] = {code, n} end
  table.sort(codes, function(a, b) return a[1] < b[1] end)
  for i, p in ipairs(codes) do codes[i] = p[1] .. "×" .. p[2] end
  local rate = s.elapsed > 0 and s.pages / s.elapsed or 0
  local parts = {
    ("%s%d pages in %.2f s (%.0f pages/s), %.1f MB"):format(
      s.interrupted and "interrupted after " or "", s.pages, s.elapsed, rate, s.bytes / 1e6),
    ("status %s"):format(#codes > 0 and concat(codes, " ") or "-"),
  }
  if s.errors > 0 then parts[#parts + 1] = s.errors .. " failed to fetch" end
  if s.blocked > 0 then parts[#parts + 1] = s.blocked .. " blocked by robots.txt" end
  if s.redirected > 0 then parts[#parts + 1] = s.redirected .. " redirected" end
  return concat(parts, "; ")
end

return crawl
