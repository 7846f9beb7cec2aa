-- asynchost scripts/db_demo.lua [DSN] [--users N] [--concurrency N] [--reset]
--
-- The users table of scripts/api.lua, filled and read by many tasks at
-- once through one db.pool: concurrent INSERTs, concurrent SELECTs by id,
-- a transaction, and the errors PostgreSQL returns (not raises).
--
--   DATABASE_URL=postgresql://localhost/mydb asynchost scripts/db_demo.lua
--   asynchost scripts/db_demo.lua postgresql://postgres@127.0.0.1/postgres --users 2000
local ah = require("asynchost")
local db, gather, now = ah.db, ah.gather, ah.now

local USAGE = [[
usage: asynchost scripts/db_demo.lua [DSN] [options]

  DSN                  a PostgreSQL URI or key=value string (default: $DATABASE_URL)
  -n, --users N        users to insert (default 1000)
  -c, --concurrency N  tasks at once (default 100)
      --pool N         connections in the pool (default 4)
      --reset          drop the demo's users first (those with @example.com)
  -h, --help           show this help
]]

local opts = {users = 1000, concurrency = 100, pool = 4}
local i = 1
while i <= #arg do
  local a = arg[i]
  local function value()
    i = i + 1
    local v = tonumber(arg[i])
    if not v or v < 1 then
      io.stderr:write("db_demo.lua: ", a, " needs a positive number\n", USAGE)
      os.exit(2)
    end
    return math.floor(v)
  end
  if a == "-h" or a == "--help" then
    io.write(USAGE)
    os.exit(0)
  elseif a == "-n" or a == "--users" then
    opts.users = value()
  elseif a == "-c" or a == "--concurrency" then
    opts.concurrency = value()
  elseif a == "--pool" then
    opts.pool = value()
  elseif a == "--reset" then
    opts.reset = true
  elseif a:sub(1, 1) == "-" then
    io.stderr:write("db_demo.lua: unknown option ", a, "\n", USAGE)
    os.exit(2)
  else
    opts.dsn = a
  end
  i = i + 1
end
opts.dsn = opts.dsn or os.getenv("DATABASE_URL")
if not opts.dsn or opts.dsn == "" then
  io.stderr:write("db_demo.lua: give a DSN or set DATABASE_URL\n", USAGE)
  os.exit(2)
end

local function check(v, err)
  if v == nil then
    io.stderr:write("db_demo.lua: ", tostring(err), "\n")
    os.exit(1)
  end
  return v
end

local pool = check(db.pool{dsn = opts.dsn, size = opts.pool})

check(pool:exec([[
  create table if not exists users (
    id bigserial primary key,
    name text not null,
    email text not null unique,
    created_at timestamptz not null default now())]]))
if opts.reset then
  check(pool:query("delete from users where email like '%@example.com'"))
end

-- 1. concurrent inserts: each task runs one INSERT; the pool pipelines
-- them over its connections.
local run = tostring(os.time()) .. "-" .. math.random(1000000)
local list = {}
for n = 1, opts.users do list[n] = n end
local t0 = now()
local ids, errs = gather(list, function(n)
  local rows, err = pool:query(
    "insert into users (name, email) values ($1, $2) returning id",
    "User " .. n, string.format("user%d-%s@example.com", n, run))
  if not rows then return nil, err end
  return rows[1].id
end, {limit = opts.concurrency, settle = true})
local inserted = 0
for n = 1, opts.users do
  if ids[n] then inserted = inserted + 1 end
end
local dt = now() - t0
print(string.format("inserted %d users in %.3f s (%.0f/s)", inserted, dt,
  inserted / dt))
for n = 1, opts.users do
  if errs[n] then print("  insert failed: " .. tostring(errs[n])) break end
end

-- 2. concurrent selects by id
t0 = now()
local names = gather(list, function(n)
  if not ids[n] then return nil end
  local rows = check(pool:query("select name from users where id = $1", ids[n]))
  return rows[1] and rows[1].name
end, {limit = opts.concurrency})
local found = 0
for n = 1, opts.users do
  if names[n] == "User " .. n then found = found + 1 end
end
dt = now() - t0
print(string.format("read back %d users by id in %.3f s (%.0f/s)", found, dt,
  found / dt))

-- 3. expected failures are returned: a duplicate email is SQLSTATE 23505
if ids[1] then
  local rows, err = pool:query(
    "insert into users (name, email) values ($1, $2)", "Again",
    string.format("user1-%s@example.com", run))
  print("duplicate email: " .. tostring(rows and "inserted?!" or err))
end

-- 4. a transaction: both renames or neither
local ok, err = pool:transaction(function(tx)
  check(tx:query("update users set name = name || ' (renamed)' where id = $1",
    ids[1]))
  local r, e = tx:query("update users set email = $1 where id = $2",
    string.format("user3-%s@example.com", run), ids[2]) -- taken: fails
  if not r then return nil, e end
  return true
end)
print("transaction: " .. (ok and "committed" or "rolled back (" .. err .. ")"))
local rows = check(pool:query("select name from users where id = $1", ids[1]))
print("user 1 is still called: " .. tostring(rows[1] and rows[1].name))

local total = check(pool:query(
  "select count(*) as n from users where email like $1", "%-" .. run .. "@example.com"))
print(string.format("users from this run: %d (pool: %d connections)",
  total[1].n, pool:stats().open))
pool:close()
