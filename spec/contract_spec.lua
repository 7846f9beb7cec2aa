-- DESIGN.md's own examples and names, checked literally end to end
-- against the real services spec/run starts.
local H = require("spec.support.helper")
local ah = require("asynchost")

local ORIGIN = os.getenv("AH_TEST_ORIGIN")
local PG = os.getenv("AH_TEST_PG")

describe("the contract of DESIGN.md", function()
  after_each(function() H.assert_clean() end)

  it("installs every API name as a global and in require 'asynchost'", function()
    for _, name in ipairs({"sleep", "now", "spawn", "gather", "wait", "timeout",
        "queue", "semaphore", "fetch", "db", "http", "html", "json", "fs",
        "exec", "log", "progress", "url", "stdin", "env", "signal"}) do
      assert.is_not_nil(_G[name], name)
      assert.equal(ah[name], _G[name], name)
    end
  end)

  it("runs the crawl example: gather over fetch with html titles, settled", function()
    local urls = {ORIGIN .. "/echo", ORIGIN .. "/nope-404", "http://127.0.0.1:1/"}
    local titles, errs = gather(urls, function(u)
      local res, err = fetch(u, {timeout = 10})
      if not res then return nil, err end
      return html.parse("<title>" .. res.status .. "</title>"):title()
    end, {limit = 100, settle = true})
    assert.equal("200", titles[1])
    assert.equal("404", titles[2]) -- a 404 is a response, not an error
    assert.is_nil(titles[3])
    assert.matches("^connect: ", errs[3])
    assert.equal(3, titles.n)
  end)

  it("returns expected failures as nil, '<kind>: detail' and raises cancellation", function()
    local r, err = fetch("http://nonexistent.invalid/", {timeout = 10})
    assert.is_nil(r)
    assert.matches("^dns: .*nonexistent%.invalid", err)
    local t = spawn(function() return fetch(ORIGIN .. "/delay?ms=5000") end)
    sleep(0.05)
    t:cancel()
    local ok, cerr = pcall(t.wait, t)
    assert.is_false(ok)
    assert.matches("^cancelled: ", cerr)
    local v, terr = timeout(0.05, fetch, ORIGIN .. "/delay?ms=5000")
    assert.is_nil(v)
    assert.matches("^timeout: ", terr)
  end)

  it("serves the http example with a pool behind it, driven by fetch", function()
    local pool = db.pool{dsn = PG, size = 2}
    assert(pool:query("create temp table if not exists c_users (id int primary key, name text)"))
    local app = http.server()
    app:get("/users/:id", function(req)
      local rows = pool:query("select $1::int as id, 'ada' as name where $1::int = 1", req.params.id)
      if not rows[1] then return 404, {error = "not found"} end
      return rows[1]
    end)
    app:post("/echo", function(req) return req:json() end)
    app:get("/nothing", function() end)
    app:get("/text", function() return "<p>hi</p>" end)
    assert.is_true(app:listen{host = "127.0.0.1", port = 0})
    local base = "http://127.0.0.1:" .. app.port
    local res = assert(fetch(base .. "/users/1"))
    assert.equal(200, res.status)
    assert.matches("application/json", res.headers["content-type"])
    assert.same({id = 1, name = "ada"}, res:json())
    res = assert(fetch(base .. "/users/2"))
    assert.equal(404, res.status)
    assert.same({error = "not found"}, res:json())
    res = assert(fetch(base .. "/echo", {json = {a = {1, 2}}}))
    assert.same({a = {1, 2}}, res:json())
    res = assert(fetch(base .. "/echo", {method = "POST", body = "{bad"}))
    assert.equal(400, res.status)
    assert.equal(204, assert(fetch(base .. "/nothing")).status)
    res = assert(fetch(base .. "/text"))
    assert.matches("text/html", res.headers["content-type"])
    assert.equal("<p>hi</p>", res.body)
    app:close()
    pool:close()
  end)

  it("converts PostgreSQL types as the db section lists", function()
    local c = assert(db.connect(PG))
    local rows = assert(c:query([[select 1::int2 as a, 2::int4 as b, 3::int8 as c,
      1.5::float8 as d, 1.25::numeric as e, true as f, '{"x":[1,2]}'::jsonb as g,
      '\x00ff'::bytea as h, null::text as i, 'txt'::text as j]]))
    local r = rows[1]
    assert.equal(math.type(r.a), "integer")
    assert.equal(3, r.c)
    assert.equal(1.5, r.d)
    assert.equal("1.25", r.e)
    assert.is_true(r.f)
    assert.same({x = {1, 2}}, r.g)
    assert.equal("\0\255", r.h)
    assert.is_nil(r.i)
    assert.equal("txt", r.j)
    assert.same({"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}, rows.columns)
    local n = select("#", nil)
    local p = assert(c:query("select $1::int is null as isnull, $2::text as s", nil, "x"))
    assert.is_true(p[1].isnull)
    assert.equal(1, n)
    local bad, err = c:query("select * from no_such_table")
    assert.is_nil(bad)
    assert.matches("^db: .*%(SQLSTATE 42P01%)", err)
    c:close()
  end)

  it("keeps 64-bit integers and floats exact through json", function()
    assert.equal(math.maxinteger, json.decode(json.encode(math.maxinteger)))
    assert.equal(0.1, json.decode(json.encode(0.1)))
    assert.equal("integer", math.type(json.decode("3")))
    assert.equal("[]", json.encode(json.array({})))
    local v, err = json.decode("{bad")
    assert.is_nil(v)
    assert.matches("^json: ", err)
  end)

  it("runs programs and files without blocking, with the documented results", function()
    local r = assert(exec({"sh", "-c", "echo out; echo err >&2; exit 3"}))
    assert.equal(3, r.code)
    assert.equal("out\n", r.stdout)
    assert.equal("err\n", r.stderr)
    local none, perr = exec({"no-such-program-asynchost"})
    assert.is_nil(none)
    assert.matches("^process: ", perr)
    local killed, terr = exec({"sleep", "5"}, {timeout = 0.05})
    assert.is_nil(killed)
    assert.matches("^timeout: ", terr)
    local path = os.getenv("AH_TEST_TMP") .. "/contract.txt"
    assert(fs.write(path, "a\nb\n"))
    assert.equal("a\nb\n", fs.read(path))
    local lines = {}
    for l in fs.lines(path) do lines[#lines + 1] = l end
    assert.same({"a", "b"}, lines)
    local missing, ferr = fs.read(path .. ".missing")
    assert.is_nil(missing)
    assert.matches("^io: ", ferr)
  end)
end)
