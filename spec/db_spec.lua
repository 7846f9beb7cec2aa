-- db: PostgreSQL through libpq's non-blocking API, against the throwaway
-- cluster spec/run starts (AH_TEST_PG...). Connections, pools, every type
-- both ways, pipelining, transactions, LISTEN/NOTIFY, COPY, cancellation,
-- and connections the server takes away.
local ah = require("asynchost")
local H = require("spec.support.helper")
local db, json = ah.db, ah.json
local sleep, spawn, gather, timeout, now = ah.sleep, ah.spawn, ah.gather,
  ah.timeout, ah.now

local DSN = H.env("AH_TEST_PG")
local SOCKET = H.env("AH_TEST_PG_SOCKET")
local PORT = H.env("AH_TEST_PG_PORT")

local function connect(opts)
  local c, err = db.connect(DSN, opts)
  assert(c, err)
  return c
end

-- The PostgreSQL server's own view, through a connection of its own.
local function admin(sql, ...)
  local c <close> = connect()
  local rows, err = c:query(sql, ...)
  assert(rows, err)
  return rows
end

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok
end

local function restart_server_in_background(marker)
  local ctl = H.env("AH_TEST_PG_CTL")
  local data = H.env("AH_TEST_PG_DATA")
  sh(string.format("(%s -D %s -l %s -w -t 60 -m fast restart >/dev/null 2>&1; "
    .. "echo $? > %s) &", ctl, H.shell_quote(data),
    H.shell_quote(SOCKET .. "/log"), H.shell_quote(marker)))
end

local function wait_file(path, within)
  local deadline = now() + within
  while now() < deadline do
    local f = io.open(path)
    if f then
      local s = f:read("a")
      f:close()
      if s:match("%d") then return s end
    end
    sleep(0.05)
  end
  error("timed out waiting for " .. path)
end

describe("db.connect", function()
  after_each(function() H.assert_clean() end)

  it("connects with a URI and runs a query", function()
    local c <close> = connect()
    local rows = assert(c:query("select 1 as one"))
    assert.are.equal(1, rows[1].one)
    assert.is_true(c:pid() > 0)
    assert.matches("^db%.conn %(ready, pid %d+%)$", tostring(c))
  end)

  it("connects with a key=value string over the unix socket", function()
    local c <close> = assert(db.connect(string.format(
      "host=%s port=%s user=postgres dbname=postgres", SOCKET, PORT)))
    assert.are.equal("postgres", c:query("select current_user as u")[1].u)
  end)

  it("accepts a table with dsn and options", function()
    local c <close> = assert(db.connect{dsn = DSN, null = json.null})
    assert.are.equal(json.null, c:query("select null as x")[1].x)
  end)

  it("resolves a host name off the loop and connects", function()
    local c <close> = assert(db.connect(string.format(
      "postgresql://postgres@localhost:%s/postgres", PORT)))
    assert.are.equal(2, c:query("select 2 as x")[1].x)
  end)

  it("counts an open connection as db.conn until it is closed", function()
    local c = connect()
    assert.are.equal(1, ah.stats()["db.conn"])
    c:close()
    c:close() -- twice is fine
    assert.are.equal(0, ah.stats()["db.conn"])
    assert.are.equal("db.conn (closed)", tostring(c))
    assert.has_error(function() c:query("select 1") end,
      "db: attempt to use a closed connection")
  end)

  it("closes a connection that is garbage", function()
    do local c = connect() end
    collectgarbage()
    collectgarbage()
    assert.are.equal(0, ah.stats()["db.conn"])
  end)

  it("returns db: for a string that is not a connection string", function()
    local c, err = db.connect("nonsense=1")
    assert.is_nil(c)
    assert.are.equal('db: invalid connection string: invalid connection '
      .. 'option "nonsense"', err)
    c, err = db.connect("postgresql://[::1")
    assert.is_nil(c)
    assert.matches("^db: invalid connection string: ", err)
    c, err = db.connect(DSN .. "?sslmode=bogus")
    assert.is_nil(c)
    assert.matches('^db: invalid sslmode value: "bogus"', err)
  end)

  it("returns connect: naming host and port when nothing listens", function()
    local c, err = db.connect("postgresql://postgres@127.0.0.1:1/postgres")
    assert.is_nil(c)
    assert.matches('^connect: connection to server at "127%.0%.0%.1", '
      .. 'port 1 failed: Connection refused', err)
  end)

  it("returns connect: naming a unix socket that does not exist", function()
    local c, err = db.connect("host=/nonexistent/dir port=5432 user=x")
    assert.is_nil(c)
    assert.matches('^connect: connection to server on socket '
      .. '"/nonexistent/dir/%.s%.PGSQL%.5432" failed: No such file', err)
  end)

  it("tries every host of a list, resolving names off the loop", function()
    local c <close> = assert(db.connect(string.format(
      "host=no-such-host.invalid,localhost,127.0.0.1 port=%s,1,%s "
        .. "user=postgres dbname=postgres", PORT, PORT)))
    assert.are.equal(tonumber(PORT),
      c:query("select inet_server_port() as p")[1].p)
    local bad, err = db.connect(
      "host=127.0.0.1,no-such-host.invalid port=1,2 user=x")
    assert.is_nil(bad)
    assert.matches('^connect: connection to server at "127%.0%.0%.1", port 1 '
      .. 'failed: .*; dns: could not resolve host "no%-such%-host%.invalid"',
      err)
  end)

  it("returns dns: for a host name that does not resolve", function()
    local c, err = db.connect("host=no-such-host.invalid user=x")
    assert.is_nil(c)
    assert.matches('^dns: could not resolve host "no%-such%-host%.invalid"',
      err)
  end)

  it("returns db: with the SQLSTATE for a wrong password", function()
    local user = H.env("AH_TEST_PG_PWUSER")
    local good = string.format("postgresql://%s:%s@127.0.0.1:%s/postgres",
      user, H.env("AH_TEST_PG_PASSWORD"), PORT)
    local c <close> = assert(db.connect(good))
    assert.are.equal(user, c:query("select current_user as u")[1].u)
    local bad, err = db.connect(string.format(
      "postgresql://%s:wrong@127.0.0.1:%s/postgres", user, PORT))
    assert.is_nil(bad)
    assert.are.equal(string.format('db: connection to server at "127.0.0.1",'
      .. ' port %s failed: password authentication failed for user "%s" '
      .. '(SQLSTATE 28P01)', PORT, user), err)
    bad, err = db.connect(string.format(
      "postgresql://%s@127.0.0.1:%s/postgres", user, PORT))
    assert.is_nil(bad)
    assert.matches("^db: .*no password supplied", err)
  end)

  it("returns db: with the SQLSTATE for a database that does not exist",
    function()
      local c, err = db.connect(string.format(
        "postgresql://postgres@127.0.0.1:%s/no_such_db", PORT))
      assert.is_nil(c)
      assert.matches('database "no_such_db" does not exist %(SQLSTATE 3D000%)$',
        err)
    end)

  it("leaves nothing behind when a connection attempt is cancelled",
    function()
      local hole = string.format("postgresql://x@127.0.0.1:%s/x",
        H.env("AH_TEST_BLACKHOLE_PORT"))
      local r, err = timeout(0.2, db.connect, hole)
      assert.is_nil(r)
      assert.matches("^timeout:", err)
      assert.are.equal(0, ah.stats()["db.conn"])
    end)

  it("gives up after the DSN's connect_timeout", function()
    local t0 = now()
    local c, err = db.connect(string.format(
      "postgresql://x@127.0.0.1:%s/x?connect_timeout=2",
      H.env("AH_TEST_BLACKHOLE_PORT")))
    assert.is_nil(c)
    assert.are.equal(string.format('connect: timed out after 2 s connecting '
      .. 'to "127.0.0.1", port %s', H.env("AH_TEST_BLACKHOLE_PORT")), err)
    assert.is_true(now() - t0 >= 1.9)
  end)

  it("raises for arguments that are not a connection string", function()
    assert.has_error(function() db.connect() end)
    assert.has_error(function() db.connect({}) end)
    assert.has_error(function() db.connect(DSN, {statement_cache = -1}) end,
      "db: option 'statement_cache' must be an integer >= 0")
  end)
end)

describe("conn:query", function()
  local c
  before_each(function() c = connect() end)
  after_each(function()
    c:close()
    H.assert_clean()
  end)

  it("returns a plain array of rows with columns and affected behind it",
    function()
      local rows = assert(c:query(
        "select g as n, 'r' || g as name from generate_series(1, 3) g"))
      assert.are.equal(3, #rows)
      assert.are.same({n = 2, name = "r2"}, rows[2])
      assert.are.same({"n", "name"}, rows.columns)
      assert.are.equal(3, rows.affected)
      assert.are.equal("SELECT 3", rows.command)
      assert.is_nil(rawget(rows, "columns"))
      assert.is_nil(next(rows, #rows))
      assert.are.equal('[{"n":1,"name":"r1"},{"n":2,"name":"r2"},'
        .. '{"n":3,"name":"r3"}]', json.encode(rows, {sort_keys = true}))
      local none = assert(c:query("select 1 as x where false"))
      assert.are.equal(0, #none)
      assert.are.equal("[]", json.encode(none))
    end)

  it("reports rows affected by a command", function()
    c:query("create temp table a (x int)")
    local rows = assert(c:query("insert into a select generate_series(1, 5)"))
    assert.are.equal(5, rows.affected)
    assert.are.equal(0, #rows)
    rows = assert(c:query("update a set x = x + 1 where x > $1", 2))
    assert.are.equal(3, rows.affected)
    assert.are.equal("UPDATE 3", rows.command)
    rows = assert(c:query("delete from a returning x"))
    assert.are.equal(5, rows.affected)
    assert.are.equal(5, #rows)
  end)

  it("converts every type from PostgreSQL", function()
    local r = assert(c:query([[select
      1::int2 as i2, (-2147483648)::int4 as i4, 9223372036854775807::int8 as i8,
      1.5::float4 as f4, 0.1::float8 as f8, 'NaN'::float8 as nan,
      '-Infinity'::float8 as ninf,
      12345678901234567890.123456789::numeric as num,
      true as t, false as f, 'héllo'::text as txt, 'v'::varchar(3) as vc,
      '{"a": [1, 2.5, "x", null], "b": {"c": true}}'::json as js,
      '[1, {"k": "v"}]'::jsonb as jb,
      '\x00ff41'::bytea as by, '2024-02-29'::date as d,
      '2024-02-29 12:34:56+00'::timestamptz at time zone 'UTC' as ts,
      '0e7cb8d2-3c1a-4d4b-9d4e-3a4f6a1c2b7e'::uuid as u,
      array[1, 2, 3] as arr, null::int as nothing, ''::text as empty]]))[1]
    assert.are.equal(1, r.i2)
    assert.are.equal(-2147483648, r.i4)
    assert.are.equal(math.maxinteger, r.i8)
    assert.are.equal("integer", math.type(r.i8))
    assert.are.equal(1.5, r.f4)
    assert.are.equal(0.1, r.f8)
    assert.are.equal("float", math.type(r.f8))
    assert.is_true(r.nan ~= r.nan)
    assert.are.equal(-math.huge, r.ninf)
    assert.are.equal("12345678901234567890.123456789", r.num)
    assert.is_true(r.t)
    assert.is_false(r.f)
    assert.are.equal("héllo", r.txt)
    assert.are.equal("v", r.vc)
    assert.are.same({a = {1, 2.5, "x", json.null}, b = {c = true}}, r.js)
    assert.are.equal("integer", math.type(r.js.a[1]))
    assert.are.same({1, {k = "v"}}, r.jb)
    assert.are.equal("\0\255A", r.by)
    assert.are.equal("2024-02-29", r.d)
    assert.are.equal("2024-02-29 12:34:56", r.ts)
    assert.are.equal("0e7cb8d2-3c1a-4d4b-9d4e-3a4f6a1c2b7e", r.u)
    assert.are.equal("{1,2,3}", r.arr)
    assert.is_nil(r.nothing)
    assert.are.equal("", r.empty)
  end)

  it("sends every kind of parameter", function()
    local r = assert(c:query([[select $1::int as i, $2::int8 as big,
      $3::float8 as f, $4::float8 = 0.1 as tenth, $5::bool as b,
      $6::text as s, $7::jsonb as j, $8::int as fromstr, $9::text as ftext,
      $10::numeric as num, $11::float8 as inf]],
      42, math.mininteger, 1 / 3, 0.1, false, "text", {a = {1, 2}, b = "x"},
      "17", 3.0, "0.30000000000000004", math.huge))[1]
    assert.are.equal(42, r.i)
    assert.are.equal(math.mininteger, r.big)
    assert.are.equal(1 / 3, r.f)
    assert.is_true(r.tenth)
    assert.is_false(r.b)
    assert.are.equal("text", r.s)
    assert.are.same({a = {1, 2}, b = "x"}, r.j)
    assert.are.equal(17, r.fromstr)
    assert.are.equal("3", r.ftext) -- an integer-valued float goes as integer
    assert.are.equal("0.30000000000000004", r.num)
    assert.are.equal(math.huge, r.inf)
  end)

  it("sends nil as NULL, counting trailing nils", function()
    local r = assert(c:query(
      "select $1::int is null as a, $2::text as b, $3::int is null as c",
      nil, "x", nil))[1]
    assert.is_true(r.a)
    assert.are.equal("x", r.b)
    assert.is_true(r.c)
    r = assert(c:query("select $1::jsonb is null as n", json.null))[1]
    assert.is_true(r.n)
    -- two parameters given for a statement with one: the server says so
    local rows, err = c:query("select $1::int as x", 1, nil)
    assert.is_nil(rows)
    assert.matches("SQLSTATE 08P01", err)
  end)

  it("round-trips raw bytes through bytea", function()
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local all = table.concat(bytes)
    c:query("create temp table blobs (id int, b bytea)")
    assert(c:query("insert into blobs values (1, $1), (2, $2), (3, $3)", all,
      "plain \\ text", ""))
    local rows = assert(c:query("select b from blobs order by id"))
    assert.are.equal(all, rows[1].b)
    assert.are.equal("plain \\ text", rows[2].b)
    assert.are.equal("", rows[3].b)
    assert.are.equal(256, c:query("select length($1::bytea) as n", all)[1].n)
  end)

  it("stores SQL injection attempts literally", function()
    c:query("create temp table users (name text)")
    local evil = {
      "'; drop table users; --", "x' or '1'='1", "\\'; select 1; --",
      "$1", "Robert'); DROP TABLE students;--", "\0"
    }
    for i = 1, #evil - 1 do
      assert(c:query("insert into users values ($1)", evil[i]))
    end
    local rows = assert(c:query("select name from users order by name"))
    assert.are.equal(#evil - 1, #rows)
    local names = {}
    for _, r in ipairs(rows) do names[r.name] = true end
    for i = 1, #evil - 1 do assert.is_true(names[evil[i]]) end
    -- a zero byte cannot be text: the server refuses it, nothing runs
    local ok, err = c:query("insert into users values ($1)", evil[#evil])
    assert.is_nil(ok)
    assert.matches("^db: .*SQLSTATE 22021", err)
    assert.are.equal(#evil - 1, c:query("select count(*) as n from users")[1].n)
  end)

  it("returns db: with the SQLSTATE for a syntax error and stays usable",
    function()
      local rows, err = c:query("selec 1")
      assert.is_nil(rows)
      assert.are.equal('db: syntax error at or near "selec" (SQLSTATE 42601)',
        err)
      rows, err = c:query("select * from no_such_table")
      assert.is_nil(rows)
      assert.are.equal(
        'db: relation "no_such_table" does not exist (SQLSTATE 42P01)', err)
      -- the same bad SQL twice (it is never cached as prepared)
      rows, err = c:query("selec 1")
      assert.are.equal('db: syntax error at or near "selec" (SQLSTATE 42601)',
        err)
      assert.are.equal(3, c:query("select 3 as x")[1].x)
      rows, err = c:query("select 1 / $1 as x", 0)
      assert.are.equal("db: division by zero (SQLSTATE 22012)", err)
      c:query("create temp table u (id int primary key)")
      c:query("insert into u values (1)")
      rows, err = c:query("insert into u values (1)")
      assert.matches("^db: duplicate key value violates unique constraint "
        .. '"u_pkey" %(SQLSTATE 23505%)$', err)
    end)

  it("runs a statement again after the table under it changed", function()
    c:query("create temp table shape (a int)")
    c:query("insert into shape values (1)")
    assert.are.same({a = 1}, c:query("select * from shape")[1])
    c:query("alter table shape add column b text default 'x'")
    assert.are.same({a = 1, b = "x"}, c:query("select * from shape")[1])
    c:query("deallocate all")
    assert.are.same({a = 1, b = "x"}, c:query("select * from shape")[1])
  end)

  it("keeps results apart for many tasks sharing one connection", function()
    local n = 300
    local results = gather((function()
      local fns = {}
      for i = 1, n do
        fns[i] = function()
          if i % 7 == 0 then -- failures in the middle of the pipeline
            local rows, err = c:query("select 1 / ($1::int - $1::int)", i)
            assert.is_nil(rows)
            return err
          end
          local sql = i % 2 == 0 and "select $1::int as v, $2::text as s"
            or "select $2::text as s, $1::int * 1 as v"
          local rows = assert(c:query(sql, i, "t" .. i))
          assert.are.equal(i, rows[1].v)
          assert.are.equal("t" .. i, rows[1].s)
          return rows[1].v
        end
      end
      return fns
    end)())
    for i = 1, n do
      if i % 7 == 0 then
        assert.are.equal("db: division by zero (SQLSTATE 22012)", results[i])
      else
        assert.are.equal(i, results[i])
      end
    end
  end)

  it("raises for values that cannot be parameters", function()
    assert.has_error(function() c:query("select $1", print) end)
    assert.has_error(function() c:query("select $1", coroutine.create(print)) end)
    assert.has_error(function() c:query({}) end)
    assert.has_error(function() c:query("select 1\0") end)
    assert.has_error(function() c:query("copy x from stdin") end)
    local t = {}
    t.self = t
    assert.has_error(function() c:query("select $1", t) end)
  end)

  it("runs a multi-statement script with exec", function()
    local rows = assert(c:exec([[
      create temp table s (x int);
      insert into s values (1), (2);
      select sum(x) as total from s;]]))
    assert.are.equal(3, tonumber(rows[1].total))
    local bad, err = c:exec("insert into s values (3); selec; insert into s values (4)")
    assert.is_nil(bad)
    assert.matches("SQLSTATE 42601", err)
    -- a script is one transaction: nothing of it stayed
    assert.are.equal(2, c:query("select count(*) as n from s")[1].n)
  end)

  it("returns an error for COPY inside exec and stays usable", function()
    c:query("create temp table e (x int)")
    local r, err = c:exec("copy e from stdin")
    assert.is_nil(r)
    assert.matches("^db: ", err)
    r, err = c:exec("copy (select 1) to stdout")
    assert.is_nil(r)
    assert.are.equal("db: COPY TO STDOUT is not supported", err)
    assert.are.equal(1, c:query("select 1 as x")[1].x)
    assert.are.equal(0, #assert(c:exec("")))
  end)

  it("keeps order between exec and pipelined queries of other tasks",
    function()
      c:query("create temp table o (x int)")
      local seen = gather{
        function() return c:query("insert into o values (1) returning x")[1].x end,
        function() return c:exec("insert into o values (2); select count(*) as n from o")[1].n end,
        function() return c:query("select count(*) as n from o")[1].n end,
      }
      assert.are.same({1, 2, 2, n = 3}, seen)
    end)
end)

describe("prepared statements", function()
  after_each(function() H.assert_clean() end)

  it("keeps at most statement_cache statements prepared", function()
    local c <close> = connect({statement_cache = 2})
    local fns = {}
    for i = 1, 60 do
      fns[i] = function()
        local k = i % 6
        local rows = assert(c:query("select $1::int + " .. k .. " as v", i))
        return rows[1].v - k
      end
    end
    local r = gather(fns)
    for i = 1, 60 do assert.are.equal(i, r[i]) end
    local n = c:query("select count(*) as n from pg_prepared_statements")[1].n
    assert.is_true(n <= 3, "prepared: " .. n) -- this query's own included
  end)

  it("works without a statement cache, raw bytes included", function()
    local c <close> = connect({statement_cache = 0})
    local bytes = "\0\1\2\255\254 binary"
    assert.are.equal(bytes, c:query("select $1::bytea as b", bytes)[1].b)
    assert.are.equal(7, c:query("select $1::int as v", 7)[1].v)
    assert.are.equal(0,
      c:query("select count(*) as n from pg_prepared_statements")[1].n)
  end)

  it("fails every user of SQL that does not prepare, in order", function()
    local c <close> = connect()
    local results = gather{
      function() return select(2, c:query("selec $1", "x")) end,
      function() return select(2, c:query("selec $1", 1)) end,
      function() return c:query("select 1 as ok")[1].ok end,
      function() return select(2, c:query("selec $1")) end,
    }
    assert.are.equal('db: syntax error at or near "selec" (SQLSTATE 42601)',
      results[1])
    assert.are.equal(results[1], results[2])
    assert.are.equal(1, results[3])
    assert.are.equal(results[1], results[4])
  end)

  it("keeps the order of statements from many tasks", function()
    local c <close> = connect()
    c:query("create temp table seq (n int, at timestamptz default clock_timestamp())")
    local fns = {}
    for i = 1, 40 do
      fns[i] = function()
        -- new SQL every few tasks, with and without string parameters
        if i % 3 == 0 then
          return c:query("insert into seq (n) values ($1::text::int)", tostring(i))
        end
        return c:query("insert into seq (n) values ($1 + " .. (i % 4) .. " - "
          .. (i % 4) .. ")", i)
      end
    end
    gather(fns)
    local rows = c:query("select n from seq order by at, n")
    assert.are.equal(40, #rows)
    for i = 1, 40 do assert.are.equal(i, rows[i].n) end
  end)
end)

describe("conn:copy_in", function()
  local c
  before_each(function()
    c = connect()
    c:query("create temp table cp (id int, name text, score float8, "
      .. "ok bool, doc jsonb, raw bytea)")
  end)
  after_each(function()
    c:close()
    H.assert_clean()
  end)

  it("loads many rows, escaping what COPY needs escaped", function()
    local rows = {}
    local n = 20000
    for i = 1, n do
      rows[i] = {i, "name\t" .. i .. "\n\\", i / 4, i % 2 == 0, {i = i},
        string.char(0, i % 256)}
    end
    rows[7] = {7, nil, nil, nil, nil, nil, n = 6}
    rows[8] = {8, json.null, json.null, true, json.null, json.null}
    assert.are.equal(n, c:copy_in("copy cp from stdin", rows))
    local r = c:query("select count(*) as n, sum(id) as s from cp")[1]
    assert.are.equal(n, r.n)
    assert.are.equal(tostring(n * (n + 1) // 2), tostring(r.s))
    local x = c:query("select * from cp where id = 5")[1]
    assert.are.same({id = 5, name = "name\t5\n\\", score = 1.25, ok = false,
      doc = {i = 5}, raw = "\0\5"}, x)
    assert.are.same({id = 7}, c:query("select * from cp where id = 7")[1])
    assert.are.same({id = 8, ok = true},
      c:query("select * from cp where id = 8")[1])
  end)

  it("copies rows that begin with an empty string", function()
    -- found by fuzz/fuzz_values: an empty first field was copied into
    -- a buffer not yet allocated
    assert.are.equal(2, c:copy_in("copy cp (name) from stdin", {{""}, {""}}))
    local rows = c:query("select name from cp")
    assert.are.equal(2, #rows)
    assert.are.equal("", rows[1].name)
    assert.are.equal("", rows[2].name)
  end)

  it("returns db: for bad data and stays usable", function()
    local count, err = c:copy_in("copy cp (id) from stdin", {{1}, {"x"}})
    assert.is_nil(count)
    assert.matches("SQLSTATE 22P02", err)
    assert.are.equal(0, c:query("select count(*) as n from cp")[1].n)
    count, err = c:copy_in("select 1", {{1}})
    assert.is_nil(count)
    assert.are.equal("db: copy_in needs a COPY ... FROM STDIN statement", err)
    assert.are.equal(1, c:query("select 1 as x")[1].x)
    assert.has_error(function() c:copy_in("copy cp from stdin", {1}) end)
  end)
end)

describe("transactions", function()
  local c
  before_each(function()
    c = connect()
    c:query("create table if not exists tx (id int primary key)")
    c:query("truncate tx")
  end)
  after_each(function()
    c:query("drop table tx")
    c:close()
    H.assert_clean()
  end)

  local function ids()
    local t = {}
    for i, r in ipairs(c:query("select id from tx order by id")) do t[i] = r.id end
    return t
  end

  it("commits and returns the function's results", function()
    local a, b = c:transaction(function(tx, x)
      assert(tx:query("insert into tx values ($1)", x))
      assert(tx:query("insert into tx values ($1)", x + 1))
      return "done", x
    end, 10)
    assert.are.equal("done", a)
    assert.are.equal(10, b)
    assert.are.same({10, 11}, ids())
    assert.is_true(c:transaction(function(tx) tx:query("select 1") end))
  end)

  it("rolls back and returns nil, err when the function does", function()
    local r, err = c:transaction(function(tx)
      tx:query("insert into tx values (1)")
      return nil, "changed my mind"
    end)
    assert.is_nil(r)
    assert.are.equal("changed my mind", err)
    assert.are.same({}, ids())
  end)

  it("rolls back and re-raises when the function raises", function()
    local ok, err = pcall(c.transaction, c, function(tx)
      tx:query("insert into tx values (1)")
      error({code = 7})
    end)
    assert.is_false(ok)
    assert.are.same({code = 7}, err)
    assert.are.same({}, ids())
  end)

  it("returns db: when a statement failed inside and was ignored", function()
    local r, err = c:transaction(function(tx)
      tx:query("insert into tx values (1)")
      tx:query("insert into tx values (1)") -- fails; the function goes on
      return true
    end)
    assert.is_nil(r)
    assert.matches("^db: the transaction was rolled back", err)
    assert.are.same({}, ids())
  end)

  it("rolls back when the task is cancelled while it waits", function()
    local p = db.pool{dsn = DSN, size = 1}
    local entered = false
    local t = spawn(function()
      p:transaction(function(tx)
        tx:query("insert into tx values (1)")
        entered = true
        sleep(10)
      end)
    end)
    while not entered do sleep(0.01) end
    t:cancel()
    assert.has_error(function() t:wait() end)
    -- the one connection went back clean: no transaction left open
    local r = assert(p:query(
      "select count(*) as n, now() = statement_timestamp() as fresh from tx"))
    assert.are.equal(0, r[1].n)
    assert.are.same({}, ids())
    assert.are.equal(1, p:stats().open)
    p:close()
  end)

  it("rolls back when the task is cancelled inside a query", function()
    local p = db.pool{dsn = DSN, size = 1}
    local started = now()
    local r, err = timeout(0.3, p.transaction, p, function(tx)
      tx:query("insert into tx values (1)")
      tx:query("select pg_sleep(10)")
    end)
    assert.is_nil(r)
    assert.matches("^timeout:", err)
    assert.are.equal(0, p:query("select count(*) as n from tx")[1].n)
    assert.is_true(now() - started < 5)
    p:close()
  end)

  it("nests as savepoints", function()
    local r = c:transaction(function(tx)
      tx:query("insert into tx values (1)")
      local _, err = tx:transaction(function(inner)
        inner:query("insert into tx values (2)")
        return nil, "inner fails"
      end)
      assert.are.equal("inner fails", err)
      assert(tx:transaction(function(inner)
        return inner:query("insert into tx values (3)")
      end))
      local ok = pcall(tx.transaction, tx, function(inner)
        inner:query("insert into tx values (4)")
        error("raised")
      end)
      assert.is_false(ok)
      return "outer"
    end)
    assert.are.equal("outer", r)
    assert.are.same({1, 3}, ids())
  end)

  it("holds the connection: other tasks' queries wait until it ends",
    function()
      local order = {}
      local other
      c:transaction(function(tx)
        tx:query("insert into tx values (1)")
        other = spawn(function()
          local n = c:query("select count(*) as n from tx")[1].n
          order[#order + 1] = "other saw " .. n
        end)
        sleep(0.1)
        order[#order + 1] = "commit"
      end)
      other:wait()
      assert.are.same({"commit", "other saw 1"}, order)
    end)

  it("lets tasks spawned inside use the transaction", function()
    local n = c:transaction(function(tx)
      gather({1, 2, 3, 4, 5}, function(i)
        assert(tx:query("insert into tx values ($1)", i))
      end)
      return tx:query("select count(*) as n from tx")[1].n
    end)
    assert.are.equal(5, n)
    assert.are.same({1, 2, 3, 4, 5}, ids())
  end)

  it("gives a lent connection back on close() and with()", function()
    local pid = c:pid()
    local got = c:with(function(lent)
      assert.are.equal(pid, lent:pid())
      return "inside"
    end)
    assert.are.equal("inside", got)
    c:with(function(lent)
      lent:query("begin")
      lent:query("insert into tx values (1)")
      lent:close() -- gives it back early, rolling back
      assert.has_error(function() lent:query("select 1") end)
    end)
    assert.are.same({}, ids())
    assert.are.equal(1, c:query("select 1 as x")[1].x)
  end)

  it("refuses a lent connection once its transaction ended", function()
    local kept
    c:transaction(function(tx) kept = tx end)
    assert.has_error(function() kept:query("select 1") end)
  end)
end)

describe("LISTEN/NOTIFY", function()
  after_each(function() H.assert_clean() end)

  it("delivers a notification with channel, payload and pid", function()
    local l <close> = connect()
    local n <close> = connect()
    assert.is_true(l:listen("ah_chan"))
    spawn(function()
      sleep(0.05)
      n:query("select pg_notify('ah_chan', $1)", "hello ✓")
    end)
    local got, err = l:notification(5)
    assert(got, err)
    assert.are.same({channel = "ah_chan", payload = "hello ✓", pid = n:pid()},
      got)
    n:query("notify ah_chan")
    got = assert(l:notification(5))
    assert.are.equal("", got.payload)
  end)

  it("times out when nothing comes", function()
    local l <close> = connect()
    assert.is_true(l:listen("quiet channel"))
    local t0 = now()
    local got, err = l:notification(0.1)
    assert.is_nil(got)
    assert.are.equal("timeout: no notification within 0.1 s", err)
    assert.is_true(now() - t0 >= 0.09)
  end)

  it("queues notifications and serves waiters in order", function()
    local l <close> = connect()
    local n <close> = connect()
    l:listen("q")
    for i = 1, 3 do n:query("select pg_notify('q', $1)", tostring(i)) end
    local a = spawn(function() return l:notification(5).payload end)
    local b = spawn(function() return l:notification(5).payload end)
    assert.are.equal("1", a:wait())
    assert.are.equal("2", b:wait())
    -- queries on the listening connection go on meanwhile
    assert.are.equal(1, l:query("select 1 as x")[1].x)
    assert.are.equal("3", l:notification(5).payload)
    assert.is_true(l:unlisten("q"))
    n:query("select pg_notify('q', 'late')")
    assert.is_nil(l:notification(0.2))
  end)

  it("polls with a zero timeout", function()
    local l <close> = connect()
    l:listen("poll")
    local got, err = l:notification(0)
    assert.is_nil(got)
    assert.matches("^timeout:", err)
    admin("notify poll, 'now'")
    sleep(0.1)
    assert.are.equal("now", assert(l:notification(0)).payload)
  end)

  it("keeps a notification for others when a waiter is cancelled", function()
    local l <close> = connect()
    local n <close> = connect()
    l:listen("k")
    local t = spawn(function() return l:notification() end)
    sleep(0.05)
    t:cancel()
    assert.has_error(function() t:wait() end)
    n:query("notify k, 'kept'")
    assert.are.equal("kept", assert(l:notification(5)).payload)
  end)
end)

describe("pool:listen / pool:notification", function()
  after_each(function() H.assert_clean() end)

  it("listens on one connection the pool keeps lent, queries go on", function()
    local p = db.pool{dsn = DSN, size = 2}
    assert.is_true(p:listen("pool_chan"))
    assert.is_true(p:listen("pool_chan2")) -- the same connection
    local st = p:stats()
    assert.are.same({1, 1}, {st.open, st.busy}) -- one connection, kept lent
    spawn(function()
      sleep(0.05)
      assert(p:query("select pg_notify('pool_chan', 'one')"))
      assert(p:query("select pg_notify('pool_chan2', 'two')"))
    end)
    local a = assert(p:notification(5))
    local b = assert(p:notification(5))
    assert.are.same({"pool_chan", "one"}, {a.channel, a.payload})
    assert.are.same({"pool_chan2", "two"}, {b.channel, b.payload})
    local _, err = p:notification(0.05)
    assert.are.equal("timeout: no notification within 0.05 s", err)
    -- unlisten() of all gives the connection back (UNLISTEN * runs)
    assert.is_true(p:unlisten())
    local none, err2 = p:notification(0)
    assert.is_nil(none)
    assert.matches("^db: this pool listens on no channel", err2)
    p:close()
  end)

  it("pins one connection when tasks listen at once, even on a pool of one", function()
    local p = db.pool{dsn = DSN, size = 1}
    local oks = gather({"pa", "pb", "pc"}, function(ch)
      return timeout(5, p.listen, p, ch)
    end)
    assert.are.same({true, true, true}, {oks[1], oks[2], oks[3]})
    assert.are.equal(1, p:stats().open)
    p:unlisten()
    assert.are.same({{x = 1}}, assert(p:query("select 1 as x")))
    p:close()
  end)

  it("lets go of a lost connection; listen again gets a new one", function()
    local p = db.pool{dsn = DSN, size = 2}
    assert.is_true(p:listen("pool_lost"))
    local pid = assert(p:with(function(c) return c:pid() end))
    local listener_pid = assert(admin(
      "select pid from pg_stat_activity where query ilike 'listen%pool_lost%'")[1]).pid
    assert.are_not.equal(pid, listener_pid)
    admin("select pg_terminate_backend($1)", listener_pid)
    local n, err = p:notification(5)
    assert.is_nil(n)
    assert.matches("^db: ", err)
    assert.is_true(p:listen("pool_lost"))
    spawn(function() sleep(0.05) p:query("notify pool_lost, 'again'") end)
    assert.are.equal("again", assert(p:notification(5)).payload)
    p:close()
  end)
end)

describe("TLS", function()
  after_each(function() H.assert_clean() end)

  it("connects, pipelines and reads big results over TLS", function()
    local c <close> = assert(db.connect(H.env("AH_TEST_PGTLS")))
    local r = assert(c:query("select ssl, version from pg_stat_ssl "
      .. "where pid = pg_backend_pid()"))[1]
    assert.is_true(r.ssl)
    assert.matches("^TLS", r.version)
    -- results far bigger than a TLS record, many tasks at once
    local sizes = {1, 100, 7000, 8191, 8192, 8193, 16384, 20000, 100000, 1000000}
    local got = gather(sizes, function(n)
      return #c:query("select repeat('x', $1::int) as s", n)[1].s
    end)
    for i, n in ipairs(sizes) do assert.are.equal(n, got[i]) end
    local rows = assert(c:query(
      "select g, md5(g::text) as h from generate_series(1, 20000) g"))
    assert.are.equal(20000, #rows)
    assert.are.equal("c4ca4238a0b923820dcc509a6f75849b", rows[1].h)
    local list = {}
    for i = 1, 5000 do list[i] = {i, string.rep("y", i % 300)} end
    c:query("create temp table t (a int, b text)")
    assert.are.equal(5000, c:copy_in("copy t from stdin", list))
  end)

  it("cancels a query over TLS", function()
    local c <close> = assert(db.connect(H.env("AH_TEST_PGTLS")))
    local t0 = now()
    local r, err = timeout(0.2, c.query, c, "select pg_sleep(10)")
    assert.is_nil(r)
    assert.matches("^timeout:", err)
    assert.are.equal(1, c:query("select 1 as x")[1].x)
    assert.is_true(now() - t0 < 5)
  end)
end)

describe("db.pool", function()
  after_each(function() H.assert_clean() end)

  it("runs 50 concurrent queries on a pool of 4", function()
    local p = db.pool{dsn = DSN, size = 4}
    local fns = {}
    for i = 1, 50 do
      fns[i] = function()
        local r = assert(p:query(
          "select $1::int as i, pg_backend_pid() as pid, pg_sleep(0.01)", i))
        return r[1]
      end
    end
    local rows = gather(fns)
    local pids, n = {}, 0
    for i = 1, 50 do
      assert.are.equal(i, rows[i].i)
      if not pids[rows[i].pid] then
        pids[rows[i].pid] = true
        n = n + 1
      end
    end
    assert.is_true(n >= 1 and n <= 4)
    assert.is_true(p:stats().open <= 4)
    assert.are.equal(0, ah.stats()["db.conn"])
    assert.is_true(ah.stats()["idle.db.conn"] >= 1)
    p:close()
  end)

  it("gives slow queries connections of their own while it can grow",
    function()
      local p = db.pool{dsn = DSN, size = 2}
      local pids = gather({1, 2}, function()
        return p:query("select pg_backend_pid() as pid, pg_sleep(0.2)")[1].pid
      end)
      assert.are_not.equal(pids[1], pids[2])
      p:close()
    end)

  it("keeps serving when one more connection cannot be opened", function()
    admin("create role ah_limited login connection limit 1")
    finally(function() admin("drop role ah_limited") end)
    local p = db.pool{dsn = string.format(
      "postgresql://ah_limited@127.0.0.1:%s/postgres", PORT), size = 3}
    assert(p:query("select 1")) -- one connection: the role's limit
    local rows = gather({1, 2, 3, 4}, function(i)
      local r, err = p:query("select $1::int as i, pg_sleep(0.05)", i)
      assert(r, err)
      return r[1].i
    end)
    assert.are.same({1, 2, 3, 4, n = 4}, rows)
    assert.are.equal(1, p:stats().open)
    p:close()
  end)

  it("spreads work over its connections when each holds a lease", function()
    local p = db.pool{dsn = DSN, size = 4}
    local fns = {}
    for i = 1, 8 do
      fns[i] = function()
        return p:with(function(conn)
          local pid = conn:pid()
          conn:query("select pg_sleep(0.05)")
          assert.are.equal(pid, conn:query("select pg_backend_pid() as p")[1].p)
          return pid
        end)
      end
    end
    local pids, n = {}, 0
    for _, pid in ipairs(gather(fns)) do
      if not pids[pid] then n = n + 1 end
      pids[pid] = true
    end
    assert.are.equal(4, n)
    assert.are.same({size = 4, open = 4, idle = 4, busy = 0, connecting = 0,
      waiting = 0}, p:stats())
    p:close()
  end)

  it("waits while every connection is held", function()
    local p = db.pool{dsn = DSN, size = 1}
    local order = {}
    local release = ah.queue()
    local holder = spawn(function()
      p:with(function(conn)
        order[#order + 1] = "held"
        release:get()
        order[#order + 1] = "released"
      end)
    end)
    sleep(0.05)
    local q = spawn(function()
      p:query("select 1")
      order[#order + 1] = "query ran"
    end)
    sleep(0.1)
    assert.are.equal(1, p:stats().waiting)
    release:put(true)
    holder:wait()
    q:wait()
    assert.are.same({"held", "released", "query ran"}, order)
    p:close()
  end)

  it("forgets a waiting query whose task is cancelled", function()
    local p = db.pool{dsn = DSN, size = 1}
    local release = ah.queue()
    local holder = spawn(function() p:with(function() release:get() end) end)
    sleep(0.05)
    local r, err = timeout(0.1, p.query, p, "select 1")
    assert.is_nil(r)
    assert.matches("^timeout:", err)
    assert.are.equal(0, p:stats().waiting)
    release:put(true)
    holder:wait()
    assert.are.equal(1, p:query("select 1 as x")[1].x)
    p:close()
  end)

  it("never lends one connection twice", function()
    local p = db.pool{dsn = DSN, size = 3}
    local inside, most = 0, 0
    local pids = {}
    gather({1, 2, 3, 4, 5, 6, 7, 8, 9}, function()
      p:transaction(function(tx)
        local pid = tx:pid()
        assert.is_nil(pids[pid])
        pids[pid] = true
        inside = inside + 1
        most = math.max(most, inside)
        tx:query("select pg_sleep(0.02)")
        inside = inside - 1
        pids[pid] = nil
      end)
    end)
    assert.is_true(most <= 3)
    p:close()
  end)

  it("gives a lent connection back when the function raises", function()
    local p = db.pool{dsn = DSN, size = 1}
    local ok, err = pcall(p.with, p, function(conn)
      conn:query("begin")
      conn:query("create temp table leak (x int)")
      error("oops")
    end)
    assert.is_false(ok)
    assert.matches("oops", err)
    -- the open transaction was rolled back: the table is gone
    local rows, qerr = p:query("select * from leak")
    assert.is_nil(rows)
    assert.matches("SQLSTATE 42P01", qerr)
    p:close()
  end)

  it("stops listening when a lent connection goes back", function()
    local p = db.pool{dsn = DSN, size = 1}
    local n <close> = connect()
    p:with(function(conn)
      assert.is_true(conn:listen("pooled"))
      n:query("notify pooled, 'one'")
      assert.are.equal("one", conn:notification(5).payload)
    end)
    local rows = p:query("select count(*) as n from pg_listening_channels()")
    assert.are.equal(0, rows[1].n)
    p:close()
  end)

  it("runs transactions", function()
    local p = db.pool{dsn = DSN, size = 2}
    p:query("create table if not exists ptx (x int)")
    assert.are.equal(2, p:transaction(function(tx)
      tx:query("insert into ptx values (1), (2)")
      return tx:query("select count(*) as n from ptx")[1].n
    end))
    assert.is_nil(p:transaction(function(tx)
      tx:query("insert into ptx values (3)")
      return nil, "no"
    end))
    assert.are.equal(2, p:query("select count(*) as n from ptx")[1].n)
    p:query("drop table ptx")
    p:close()
  end)

  it("reads NULL as the null sentinel it was given", function()
    local p = db.pool{dsn = DSN, null = json.null}
    local r = assert(p:query("select null::int as a, 1 as b, $1::text as c",
      json.null))[1]
    assert.are.equal(json.null, r.a)
    assert.are.equal(json.null, r.c)
    assert.are.equal('{"a":null,"b":1,"c":null}',
      json.encode(r, {sort_keys = true}))
    p:close()
  end)

  it("closes idle connections after idle_timeout", function()
    local p = db.pool{dsn = DSN, size = 2, idle_timeout = 0.2}
    assert(p:query("select 1"))
    assert.are.equal(1, p:stats().open)
    assert.are.equal(1, ah.stats()["idle.db.conn"])
    sleep(0.5)
    assert.are.equal(0, p:stats().open)
    assert.are.equal(0, ah.stats()["idle.db.conn"])
    assert(p:query("select 1")) -- and opens one again
    p:close()
  end)

  it("returns closed: after close, also to the ones waiting", function()
    local p = db.pool{dsn = DSN, size = 1}
    local release = ah.queue()
    local holder = spawn(function()
      p:with(function() release:get() end)
    end)
    sleep(0.05)
    local waiter = spawn(function() return p:query("select 1") end)
    sleep(0.05)
    p:close()
    local r, err = waiter:wait()
    assert.is_nil(r)
    assert.are.equal("closed: the pool is closed", err)
    r, err = p:query("select 1")
    assert.are.equal("closed: the pool is closed", err)
    release:put(true)
    holder:wait()
  end)

  it("returns nil, err for a bad DSN and connect: for a dead server",
    function()
      local p, err = db.pool{dsn = "bogus=1"}
      assert.is_nil(p)
      assert.matches("^db: invalid connection string", err)
      p = db.pool{dsn = "postgresql://postgres@127.0.0.1:1/postgres", size = 2}
      local results = gather({
        function() return select(2, p:query("select 1")) end,
        function() return select(2, p:query("select 1")) end,
        function() return select(2, p:query("select 1")) end,
      })
      for i = 1, 3 do assert.matches("^connect: .*port 1 failed", results[i]) end
      assert.has_error(function() db.pool{dsn = DSN, size = 0} end)
      assert.has_error(function() db.pool("x") end)
      p:close()
    end)

  it("replaces a connection killed with pg_terminate_backend", function()
    local p = db.pool{dsn = DSN, size = 1}
    local pid = p:query("select pg_backend_pid() as p")[1].p
    local t = spawn(function() return p:query("select pg_sleep(5)") end)
    sleep(0.1)
    admin("select pg_terminate_backend($1)", pid)
    local r, err = t:wait()
    assert.is_nil(r)
    assert.matches("^db: connection lost", err)
    local again = assert(p:query("select pg_backend_pid() as p"))
    assert.are_not.equal(pid, again[1].p)
    -- an idle one killed meanwhile is noticed and replaced too
    admin("select pg_terminate_backend($1)", again[1].p)
    sleep(0.2)
    assert.are.equal(0, p:stats().open)
    assert(p:query("select 1"))
    p:close()
  end)

  it("recovers when the server restarts under it", function()
    local p = db.pool{dsn = DSN, size = 3}
    assert(p:query("select 1"))
    local inflight = spawn(function() return p:query("select pg_sleep(5)") end)
    sleep(0.1)
    local marker = os.tmpname()
    os.remove(marker)
    restart_server_in_background(marker)
    finally(function() -- later specs need the server back
      wait_file(marker, 60)
      os.remove(marker)
    end)
    local r, err = inflight:wait()
    assert.is_nil(r)
    assert.matches("^db: connection lost", err)
    -- queries while it is down fail, they do not hang
    local failures, ok = 0, false
    local deadline = now() + 60
    while now() < deadline do
      local rows, qerr = p:query("select 42 as x")
      if rows then
        assert.are.equal(42, rows[1].x)
        ok = true
        break
      end
      assert.matches("^[a-z]+: ", qerr)
      failures = failures + 1
      sleep(0.05)
    end
    assert.are.equal("0", wait_file(marker, 60):match("%d+"))
    assert.is_true(ok)
    assert(p:query("select 1"))
    assert.is_true(p:stats().open <= 3)
    p:close()
  end)
end)

describe("cancellation", function()
  after_each(function() H.assert_clean() end)

  it("stops pg_sleep(10) at a timeout and the connection stays usable",
    function()
      local c <close> = connect()
      local t0 = now()
      local r, err = timeout(0.2, c.query, c, "select pg_sleep(10)")
      assert.is_nil(r)
      assert.matches("^timeout:", err)
      assert.is_true(now() - t0 < 1.5)
      -- the server was told: the next query does not wait 10 s
      assert.are.equal(5, c:query("select 5 as x")[1].x)
      assert.is_true(now() - t0 < 5)
      local active = admin(
        "select count(*) as n from pg_stat_activity where query like "
          .. "'select pg_sleep(10)%' and state = 'active'")
      assert.are.equal(0, active[1].n)
    end)

  it("cancels one task's query without touching the others", function()
    local c <close> = connect()
    local slow = spawn(function() return c:query("select pg_sleep(0.3), 1 as x") end)
    local victim = spawn(function() return c:query("select 2 as x") end)
    local after = spawn(function() return c:query("select 3 as x") end)
    victim:cancel()
    assert.are.equal(1, slow:wait()[1].x)
    assert.has_error(function() victim:wait() end)
    assert.are.equal("cancelled", victim:status())
    assert.are.equal(3, after:wait()[1].x)
  end)

  it("raises cancelled in a task:cancel()led query", function()
    local c <close> = connect()
    local t = spawn(function() return c:query("select pg_sleep(10)") end)
    sleep(0.05)
    t:cancel()
    local ok, err = pcall(t.wait, t)
    assert.is_false(ok)
    assert.matches("^cancelled:", err)
    assert.are.equal(1, c:query("select 1 as x")[1].x)
  end)

  it("aborts a COPY when its task is cancelled", function()
    local c <close> = connect()
    c:query("create temp table big (x int, pad text)")
    local rows = {}
    for i = 1, 200000 do rows[i] = {i, "padding padding padding"} end
    local r, err = timeout(0.001, c.copy_in, c, "copy big from stdin", rows)
    assert.is_nil(r)
    assert.matches("^timeout", err)
    assert.are.equal(0, c:query("select count(*) as n from big")[1].n)
  end)
end)

describe("the process", function()
  after_each(function() H.assert_clean() end)

  it("exits when the script ends, with idle connections open", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      local p = db.pool{dsn = os.getenv("AH_TEST_PG"), size = 2}
      assert(p:query("select 1"))
      local c = assert(db.connect(os.getenv("AH_TEST_PG")))
      assert(c:listen("nobody"))
      assert(c:query("select 1"))
      print("done")
    ]])
    f:close()
    local out, _, code = H.run({script})
    os.remove(script)
    assert.are.equal("done\n", out)
    assert.are.equal(0, code)
  end)
end)

describe("the db scripts", function()
  after_each(function() H.assert_clean() end)

  it("db_demo.lua inserts and reads users concurrently", function()
    -- a database of its own: the users table is scripts/api.lua's too
    admin("drop database if exists ah_db_demo")
    admin("create database ah_db_demo")
    finally(function() admin("drop database ah_db_demo with (force)") end)
    local demo = DSN:gsub("/postgres$", "/ah_db_demo")
    local out, err, code = H.run({"scripts/db_demo.lua", demo, "--users", "300",
      "--concurrency", "50"})
    assert.are.equal(0, code, err)
    assert.matches("inserted 300 users in", out)
    assert.matches("read back 300 users by id", out)
    assert.matches("duplicate email: db: duplicate key value violates unique "
      .. 'constraint "users_email_key" %(SQLSTATE 23505%)', out)
    assert.matches("transaction: rolled back", out)
    assert.matches("user 1 is still called: User 1\n", out)
    assert.matches("users from this run: 300", out)
    local _, uerr, ucode = H.run({"scripts/db_demo.lua"}, {env = {DATABASE_URL = ""}})
    assert.are.equal(2, ucode)
    assert.matches("give a DSN", uerr)
  end)

  it("pg_report.lua reports several databases at once", function()
    local c <close> = connect()
    c:query("create table if not exists report_me (x int)")
    local sleeper = spawn(function() return c:query("select pg_sleep(1.5)") end)
    sleep(0.2)
    local out, err, code = H.run({"scripts/ops/pg_report.lua", "-d", "0.1",
      "-n", "50", DSN, "postgresql://u:secret@127.0.0.1:1/x"})
    assert(sleeper:wait())
    c:query("drop table report_me")
    assert.are.equal(1, code, err) -- one database could not be reported
    assert.matches("Largest tables", out)
    assert.matches("public%.report_me", out)
    assert.matches("Queries running for 0%.1 s or more", out)
    assert.matches("select pg_sleep%(1%.5%)", out)
    assert.matches("Not reported", out)
    assert.matches("postgresql://u:%*%*%*@127%.0%.0%.1:1/x +connect: ", out)
    assert.is_nil(out:find("secret", 1, true))
  end)
end)
