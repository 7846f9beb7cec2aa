-- asynchost scripts/ops/pg_report.lua [options] DSN...
--
-- One look at many PostgreSQL databases at once: the largest tables and
-- the queries that have been running for a while, from every database
-- concurrently (one task each), printed as tables. A database that cannot
-- be reached is listed with its error; the others are still reported.
--
--   asynchost scripts/ops/pg_report.lua postgresql://db1/app postgresql://db2/app
--   PG_REPORT_DSNS="postgresql://a/x postgresql://b/y" asynchost scripts/ops/pg_report.lua -d 30
local ah = require("asynchost")
local db, gather, timeout = ah.db, ah.gather, ah.timeout

local USAGE = [[
usage: asynchost scripts/ops/pg_report.lua [options] DSN...

Reports the largest tables and the long-running queries of every database,
all queried at once. DSNs may also be given in $PG_REPORT_DSNS (separated by
spaces).

  -n, --top N            tables per database (default 5)
  -d, --min-duration S   queries running for at least S seconds (default 5)
  -t, --timeout S        give up on a database after S seconds (default 10)
  -h, --help             show this help

Exit status: 0, or 1 if a database could not be reported.
]]

local opts = {top = 5, min_duration = 5, timeout = 10}
local dsns = {}
local i = 1
while i <= #arg do
  local a = arg[i]
  local function number(min)
    i = i + 1
    local v = tonumber(arg[i])
    if not v or v < min then
      io.stderr:write("pg_report.lua: ", a, " needs a number >= ", min, "\n")
      os.exit(2)
    end
    return v
  end
  if a == "-h" or a == "--help" then
    io.write(USAGE)
    os.exit(0)
  elseif a == "-n" or a == "--top" then
    opts.top = math.floor(number(1))
  elseif a == "-d" or a == "--min-duration" then
    opts.min_duration = number(0)
  elseif a == "-t" or a == "--timeout" then
    opts.timeout = number(0.001)
  elseif a:sub(1, 1) == "-" and a ~= "-" then
    io.stderr:write("pg_report.lua: unknown option ", a, "\n", USAGE)
    os.exit(2)
  else
    dsns[#dsns + 1] = a
  end
  i = i + 1
end
for d in (os.getenv("PG_REPORT_DSNS") or ""):gmatch("%S+") do
  dsns[#dsns + 1] = d
end
if #dsns == 0 then
  io.stderr:write("pg_report.lua: no database given\n", USAGE)
  os.exit(2)
end

-- A DSN as it may be shown: without its password.
local function masked(dsn)
  return (dsn:gsub("(://[^:/@]*):[^@]*@", "%1:***@")
    :gsub("(password%s*=%s*)%S+", "%1***"))
end

local TABLES = [[
  select n.nspname || '.' || c.relname as name,
         pg_size_pretty(pg_total_relation_size(c.oid)) as total,
         pg_size_pretty(pg_relation_size(c.oid)) as heap,
         pg_size_pretty(pg_indexes_size(c.oid)) as indexes,
         c.reltuples::bigint as est_rows
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
  where c.relkind in ('r', 'm', 'p')
    and n.nspname not in ('pg_catalog', 'information_schema')
    and n.nspname not like 'pg_toast%'
  order by pg_total_relation_size(c.oid) desc, 1
  limit $1]]

local RUNNING = [[
  select pid, coalesce(usename, '') as usr, state,
         extract(epoch from now() - query_start)::float8 as secs,
         left(regexp_replace(query, '\s+', ' ', 'g'), 70) as query
  from pg_stat_activity
  where state is not null and state <> 'idle' and pid <> pg_backend_pid()
    and query_start <= now() - make_interval(secs => $1)
  order by query_start]]

local WHO = [[
  select current_database() as db,
         coalesce(host(inet_server_addr()), 'local') as host,
         current_setting('port') as port, current_setting('server_version') as version]]

-- Everything about one database, or nil, err.
local function report(dsn)
  local conn, err = db.connect(dsn)
  if not conn then return nil, err end
  local c <close> = conn
  local who, tables, running
  who, err = c:query(WHO)
  if not who then return nil, err end
  tables, err = c:query(TABLES, opts.top)
  if not tables then return nil, err end
  running, err = c:query(RUNNING, opts.min_duration)
  if not running then return nil, err end
  local w = who[1]
  return {
    label = string.format("%s@%s:%s", w.db, w.host, w.port),
    version = w.version, tables = tables, running = running,
  }
end

local results, errors = gather(dsns, function(dsn)
  return timeout(opts.timeout, report, dsn)
end, {settle = true})

-- Prints rows (lists of strings) under headers, columns aligned.
local function print_table(title, headers, rows)
  local width = {}
  for c, h in ipairs(headers) do width[c] = #h end
  for _, r in ipairs(rows) do
    for c, v in ipairs(r) do width[c] = math.max(width[c], utf8.len(v) or #v) end
  end
  local function line(r)
    local cells = {}
    for c, v in ipairs(r) do
      local pad = width[c] - (utf8.len(v) or #v)
      cells[c] = v .. string.rep(" ", c < #r and pad or 0)
    end
    print(table.concat(cells, "  "))
  end
  print(title)
  line(headers)
  local rule = {}
  for c = 1, #headers do rule[c] = string.rep("-", width[c]) end
  line(rule)
  if #rows == 0 then print("(none)") end
  for _, r in ipairs(rows) do line(r) end
  print()
end

local tables, running, failed = {}, {}, {}
for n, dsn in ipairs(dsns) do
  local r = results[n]
  if r then
    for _, t in ipairs(r.tables) do
      tables[#tables + 1] = {r.label, t.name, t.total, t.heap, t.indexes,
        t.est_rows < 0 and "?" or tostring(t.est_rows)}
    end
    for _, q in ipairs(r.running) do
      running[#running + 1] = {r.label, tostring(q.pid), q.usr, q.state,
        string.format("%.1f s", q.secs), q.query}
    end
  else
    failed[#failed + 1] = {masked(dsn), tostring(errors[n])}
  end
end

print_table(string.format("Largest tables (top %d per database)", opts.top),
  {"database", "table", "total", "heap", "indexes", "rows (est.)"}, tables)
print_table(string.format("Queries running for %g s or more", opts.min_duration),
  {"database", "pid", "user", "state", "running", "query"}, running)
if #failed > 0 then
  print_table("Not reported", {"database", "error"}, failed)
  os.exit(1)
end
