-- scripts/crawl.lua and require "asynchost.crawl", run as separate
-- asynchost processes against python3's http.server serving a generated
-- site (spec/support/site_server.py, spec/support/crawl_site.lua), and
-- sharing a crawl through the test PostgreSQL.
local ah = require("asynchost")
local H = require("spec.support.helper")
local S = require("spec.support.crawl_site")
local crawl = require("asynchost.crawl")

local TMP = H.env("AH_TEST_TMP") .. "/crawl"
local SITE = TMP .. "/site"
local N = 500 -- tree pages: the site has N + 10 pages (see crawl_site.lua)

local function set(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

local function keys(s)
  local out = {}
  for k in pairs(s) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function read_jsonl(path)
  local out = {}
  for line in assert(io.open(path)):lines() do
    local rec, err = ah.json.decode(line)
    assert(rec, "bad JSON line: " .. tostring(err) .. ": " .. line)
    out[#out + 1] = rec
  end
  return out
end

-- The paths the server was asked for with GET (robots.txt included).
local function fetched(srv)
  local out = {}
  for _, r in ipairs(srv.requests()) do
    if r.method == "GET" then out[#out + 1] = r.path end
  end
  return out
end

local function crawl_cli(args)
  local full = {"scripts/crawl.lua", "--no-progress"}
  for _, a in ipairs(args) do full[#full + 1] = a end
  return H.run(full)
end

-- Starts asynchost with args in the background; returns a handle to
-- wait for it (without blocking the loop) or signal it.
local function start_bg(name, args)
  local dir = TMP .. "/bg-" .. name
  os.execute("rm -rf " .. dir .. " && mkdir -p " .. dir)
  local cmd = {H.shell_quote(H.env("AH_TEST_BIN"))}
  for _, a in ipairs(args) do cmd[#cmd + 1] = H.shell_quote(a) end
  assert(os.execute(("(sh -c 'echo $$ >%s/pid.tmp && mv %s/pid.tmp %s/pid && exec \"$@\"' sh %s"
                     .. " >%s/out 2>%s/err </dev/null; echo $? >%s/code) &")
                    :format(dir, dir, dir, table.concat(cmd, " "), dir, dir, dir)))
  local p = {dir = dir}
  for _ = 1, 400 do
    local pid = S.slurp(dir .. "/pid")
    if pid then
      p.pid = pid:match("%d+")
      break
    end
    ah.sleep(0.01)
  end
  assert(p.pid, "the process did not start")
  function p.signal(sig) os.execute("kill -" .. sig .. " " .. p.pid .. " 2>/dev/null") end
  -- waits up to `within` seconds: exit code, stdout, stderr (nil if still running)
  function p.wait(within)
    local deadline = ah.now() + (within or 60)
    repeat
      local code = S.slurp(dir .. "/code")
      if code and code:match("%d") then
        return tonumber(code:match("%d+")), S.slurp(dir .. "/out"), S.slurp(dir .. "/err")
      end
      ah.sleep(0.05)
    until ah.now() > deadline
    p.signal("KILL")
    return nil, S.slurp(dir .. "/out"), S.slurp(dir .. "/err")
  end
  return p
end

local function count_lines(path)
  local n = 0
  for _ in (S.slurp(path) or ""):gmatch("[^\n]+") do n = n + 1 end
  return n
end

local srv, other

setup(function()
  os.execute("rm -rf " .. TMP .. " && mkdir -p " .. TMP .. "/other")
  other = S.start(TMP .. "/other", TMP, "other")
  S.write(SITE, N, other.origin)
  local f = assert(io.open(TMP .. "/other/ext.html", "w"))
  f:write("<title>Other</title><a href='/more.html'>more</a>")
  f:close()
  f = assert(io.open(TMP .. "/other/more.html", "w"))
  f:write("<title>More</title>")
  f:close()
  srv = S.start(SITE, TMP, "site")
end)

teardown(function()
  if srv then srv.stop() end
  if other then other.stop() end
end)

before_each(function()
  srv.clear_log()
  other.clear_log()
end)

describe("robots.txt parsing", function()
  local rules = crawl.parse_robots(S.ROBOTS, "asynchost")

  it("uses the group naming our token, not the * group", function()
    assert.is_true(crawl.robots_allows(rules, "/docs/b.html"))
    assert.is_false(crawl.robots_allows(rules, "/secret/x.html"))
  end)

  it("lets the longest match win and Allow win a tie", function()
    assert.is_false(crawl.robots_allows(rules, "/private/a.html"))
    assert.is_true(crawl.robots_allows(rules, "/private/open.html"))
    local r = crawl.parse_robots("User-agent: *\nDisallow: /a\nAllow: /a\n")
    assert.is_true(crawl.robots_allows(r, "/a/x"))
  end)

  it("understands * wildcards and the $ anchor", function()
    assert.is_false(crawl.robots_allows(rules, "/files/report.pdf"))
    assert.is_true(crawl.robots_allows(rules, "/files/report.pdf.html"))
    local r = crawl.parse_robots("user-agent: *\ndisallow: /*?session=\n")
    assert.is_false(crawl.robots_allows(r, "/shop/item?session=1"))
    assert.is_true(crawl.robots_allows(r, "/shop/item?id=1"))
  end)

  it("falls back to the * group, merges groups and reads Crawl-delay", function()
    local r = crawl.parse_robots("User-agent: a\nUser-agent: *\nDisallow: /x\n\n"
                                 .. "User-agent: *\nDisallow: /y\nCrawl-delay: 2\n", "asynchost")
    assert.is_false(crawl.robots_allows(r, "/x"))
    assert.is_false(crawl.robots_allows(r, "/y/z"))
    assert.equal(2, r.delay)
  end)

  it("allows everything for an empty file or an empty Disallow", function()
    assert.is_true(crawl.robots_allows(crawl.parse_robots(""), "/anything"))
    assert.is_true(crawl.robots_allows(crawl.parse_robots("User-agent: *\nDisallow:\n"), "/x"))
  end)
end)

describe("scripts/crawl.lua", function()
  after_each(function() H.assert_clean() end)

  it("prints its usage for --help and refuses bad options", function()
    local out, _, code = crawl_cli({"--help"})
    assert.equal(0, code)
    assert.matches("usage: asynchost scripts/crawl.lua", out, 1, true)
    assert.matches("--frontier DSN", out, 1, true)
    local _, err
    _, err, code = crawl_cli({"--depth", "x", srv.origin})
    assert.equal(2, code)
    assert.matches("--depth wants a non-negative integer", err, 1, true)
    _, err, code = crawl_cli({"--scope", "moon", srv.origin})
    assert.equal(2, code)
    assert.matches("--scope is dir, host or any", err, 1, true)
    _, err, code = crawl_cli({"--bogus", srv.origin})
    assert.equal(2, code)
    assert.matches("unknown option --bogus", err, 1, true)
    _, err, code = crawl_cli({})
    assert.equal(2, code)
    assert.matches("no URL to crawl", err, 1, true)
    _, err, code = crawl_cli({"ftp://example.com/"})
    assert.equal(2, code)
    assert.matches("not an http(s) URL", err, 1, true)
    _, err, code = crawl_cli({"--exclude", "[", srv.origin .. "/p/1.html"})
    assert.equal(1, code)
    assert.matches("bad exclude pattern", err, 1, true)
    _, err, code = crawl_cli({"-o", TMP .. "/no/such/dir/x.jsonl", srv.origin .. "/p/1.html"})
    assert.equal(1, code)
    assert.matches("^crawl: cannot write %-%-out: .*No such file or directory", err)
    assert.same({}, fetched(srv))
  end)

  it("crawls the whole 510-page site once per page, obeying robots.txt", function()
    local out = TMP .. "/all.jsonl"
    local stdout, stderr, code = crawl_cli({"--scope", "host", "--depth", "20", "-c", "32",
                                           "-q", "-o", out, srv.origin .. "/"})
    assert.equal(0, code, stderr)
    assert.equal("", stdout)
    local expected = {"/", "/robots.txt", "/index.html", "/docs/index.html", "/docs/a.html",
                      "/docs/b.html", "/docs/sub/c.html", "/private/open.html",
                      "/files/data.txt", "/files/report.pdf.html", "/p/missing.html"}
    for i = 1, N do expected[#expected + 1] = "/p/" .. i .. ".html" end
    local got = fetched(srv)
    table.sort(got)
    table.sort(expected)
    assert.same(expected, got) -- each exactly once: nothing else, no repeats
    assert.same({}, fetched(other)) -- another origin is out of scope
    local recs = read_jsonl(out)
    assert.equal(#expected - 1, #recs)
    assert.matches("510 pages in", stderr, 1, true)
    assert.matches("3 blocked by robots.txt", stderr, 1, true)
  end)

  it("stays inside the start URL's directory by default", function()
    local out = TMP .. "/docs.jsonl"
    local _, stderr, code = crawl_cli({"-q", "-o", out, srv.origin .. "/docs/index.html"})
    assert.equal(0, code, stderr)
    local urls = {}
    for _, r in ipairs(read_jsonl(out)) do urls[#urls + 1] = r.url:sub(#srv.origin + 1) end
    table.sort(urls)
    assert.same({"/docs/a.html", "/docs/b.html", "/docs/index.html", "/docs/sub/c.html"}, urls)
    local paths = fetched(srv)
    table.sort(paths)
    assert.same({"/docs/a.html", "/docs/b.html", "/docs/index.html", "/docs/sub/c.html",
                 "/robots.txt"}, paths)
  end)

  it("follows links exactly --depth levels deep", function()
    local out = TMP .. "/depth.jsonl"
    local _, stderr, code = crawl_cli({"-q", "--depth", "2", "-o", out, srv.origin .. "/p/1.html"})
    assert.equal(0, code, stderr)
    local depths = {}
    for _, r in ipairs(read_jsonl(out)) do depths[r.url:match("/p/(%w+)%.html$")] = r.depth end
    assert.same({["1"] = 0, ["2"] = 1, ["3"] = 1, ["4"] = 2, ["5"] = 2, ["6"] = 2, ["7"] = 2,
                 missing = 2}, depths)
    local _, _, code0 = crawl_cli({"-q", "--depth", "0", "-o", out, srv.origin .. "/p/1.html"})
    assert.equal(0, code0)
    assert.equal(1, #read_jsonl(out))
  end)

  it("skips URLs matching --exclude and keeps to --include", function()
    local out = TMP .. "/exclude.jsonl"
    local _, stderr, code = crawl_cli({"-q", "--depth", "20", "--exclude", "[05]%.html$",
                                       "-o", out, srv.origin .. "/p/1.html"})
    assert.equal(0, code, stderr)
    local want = {}
    for i = 1, N do
      local ok, j = true, i
      while j >= 1 do
        if j % 5 == 0 then ok = false end
        j = j // 2
      end
      if ok then want[#want + 1] = srv.origin .. "/p/" .. i .. ".html" end
    end
    want[#want + 1] = srv.origin .. "/p/missing.html"
    local got = {}
    for _, r in ipairs(read_jsonl(out)) do got[#got + 1] = r.url end
    table.sort(got)
    table.sort(want)
    assert.same(want, got)
    -- --include: only /docs/ beyond the start page
    _, stderr, code = crawl_cli({"-q", "--scope", "host", "--include", "/docs/", "-o", out,
                                 srv.origin .. "/index.html"})
    assert.equal(0, code, stderr)
    got = {}
    for _, r in ipairs(read_jsonl(out)) do got[#got + 1] = r.url:sub(#srv.origin + 1) end
    table.sort(got)
    assert.same({"/docs/a.html", "/docs/b.html", "/docs/index.html", "/docs/sub/c.html",
                 "/index.html"}, got)
  end)

  it("fetches robots.txt once per host and obeys it, unless told not to", function()
    local out = TMP .. "/robots.jsonl"
    local _, stderr, code = crawl_cli({"-q", "--scope", "any", "--depth", "1", "-c", "16",
                                       "-o", out, srv.origin .. "/index.html"})
    assert.equal(0, code, stderr)
    local paths = fetched(srv)
    table.sort(paths)
    assert.same({"/docs/index.html", "/files/data.txt", "/files/report.pdf.html",
                 "/index.html", "/p/1.html", "/private/open.html", "/robots.txt"}, paths)
    -- the other origin: its own robots.txt (a 404: all allowed), then the page
    assert.same({"/robots.txt", "/ext.html"}, fetched(other))
    srv.clear_log()
    other.clear_log()
    _, stderr, code = crawl_cli({"-q", "--ignore-robots", "--depth", "1", "-o", out,
                                 srv.origin .. "/index.html"})
    assert.equal(0, code, stderr)
    paths = set(fetched(srv))
    assert.is_nil(paths["/robots.txt"])
    assert.is_true(paths["/private/a.html"])
    assert.is_true(paths["/secret/x.html"])
    assert.is_true(paths["/files/report.pdf"])
  end)

  it("writes a complete, valid JSON line per page", function()
    local out = TMP .. "/records.jsonl"
    local stdout, stderr, code = crawl_cli({"--depth", "2", "-o", out, srv.origin .. "/p/1.html"})
    assert.equal(0, code, stderr)
    local recs = read_jsonl(out)
    assert.equal(8, #recs) -- pages 1-7 and the missing page
    local lines = 0
    for _ in stdout:gmatch("[^\n]+") do lines = lines + 1 end
    assert.equal(8, lines) -- one line per page on stdout without -q
    for _, r in ipairs(recs) do
      local i = tonumber(r.url:match("/p/(%d+)%.html$"))
      assert.is_number(r.ms)
      assert.is_true(r.ms >= 0)
      assert.is_nil(r.error)
      if i then
        assert.equal(200, r.status)
        assert.equal("Page " .. i, r.title)
        assert.equal(S.tree_depth(i), r.depth)
        local size = #assert(S.slurp(SITE .. "/p/" .. i .. ".html"))
        assert.equal(size, r.bytes)
        assert.equal(srv.origin .. "/p/" .. (2 * i) .. ".html", r.links[1])
        assert.equal(srv.origin .. "/p/" .. (2 * i + 1) .. ".html", r.links[2])
        assert.matches("Page " .. i, stdout, 1, true)
      else
        assert.equal(404, r.status)
        assert.is_nil(r.title)
        assert.same({}, r.links)
        assert.equal(2, r.depth)
      end
    end
  end)

  it("writes a start URL whose host is unreachable to --out with the error", function()
    local out = TMP .. "/dead.jsonl"
    local _, stderr, code = crawl_cli({"-q", "-o", out, "http://127.0.0.1:1/x.html"})
    assert.equal(0, code, stderr)
    local recs = read_jsonl(out)
    assert.equal(1, #recs)
    assert.equal("http://127.0.0.1:1/x.html", recs[1].url)
    assert.equal(0, recs[1].depth)
    assert.is_nil(recs[1].status)
    assert.matches("^connect: http://127%.0%.0%.1:1/robots%.txt: ", recs[1].error)
    assert.matches("robots.txt of http://127.0.0.1:1 unreachable", stderr, 1, true)
    assert.matches("1 failed to fetch", stderr, 1, true)
  end)

  it("records transport errors, retries transient failures and follows redirects", function()
    local f = assert(io.open(SITE .. "/odd.html", "w"))
    f:write(([[<title>Odd</title><a href="/flaky/p/2.html">flaky</a>
      <a href="/go/p/3.html">redirect</a><a href="http://127.0.0.1:1/closed">closed</a>]]))
    f:close()
    local out = TMP .. "/odd.jsonl"
    local _, stderr, code = crawl_cli({"-q", "--ignore-robots", "--scope", "any", "--depth", "1",
                                       "--retries", "2", "--timeout", "5", "-o", out,
                                       srv.origin .. "/odd.html"})
    assert.equal(0, code, stderr)
    local by = {}
    for _, r in ipairs(read_jsonl(out)) do by[r.url] = r end
    local flaky = by[srv.origin .. "/flaky/p/2.html"]
    assert.equal(200, flaky.status)
    assert.equal("Page 2", flaky.title)
    local moved = by[srv.origin .. "/go/p/3.html"]
    assert.equal(200, moved.status)
    assert.equal(srv.origin .. "/p/3.html", moved.final_url)
    local closed = by["http://127.0.0.1:1/closed"]
    assert.is_nil(closed.status)
    assert.matches("^connect", closed.error)
    local n503 = 0
    for _, r in ipairs(srv.requests()) do
      if r.path == "/flaky/p/2.html" and r.status == 503 then n503 = n503 + 1 end
    end
    assert.equal(1, n503)
    os.remove(SITE .. "/odd.html")
  end)

  it("keeps --per-host requests in flight and spaces them by --delay", function()
    local slow = S.start(SITE, TMP, "slow", 0.05)
    local _, stderr, code = crawl_cli({"-q", "--ignore-robots", "--depth", "4", "-c", "8",
                                       "--per-host", "2", slow.origin .. "/p/1.html"})
    assert.equal(0, code, stderr)
    local reqs = slow.requests()
    assert.equal(31 + 1, #reqs) -- pages 1-31 and the missing page
    local peak = 0
    for _, a in ipairs(reqs) do
      local n = 0
      for _, b in ipairs(reqs) do
        if b.t0 <= a.t0 and b.t1 > a.t0 then n = n + 1 end
      end
      if n > peak then peak = n end
    end
    assert.is_true(peak <= 2, "peak concurrency " .. peak)
    slow.clear_log()
    _, stderr, code = crawl_cli({"-q", "--ignore-robots", "--depth", "2", "-c", "8",
                                 "--delay", "0.2", slow.origin .. "/p/1.html"})
    assert.equal(0, code, stderr)
    reqs = slow.requests()
    table.sort(reqs, function(a, b) return a.t0 < b.t0 end)
    assert.equal(8, #reqs)
    for i = 2, #reqs do
      local gap = reqs[i].t0 - reqs[i - 1].t0
      assert.is_true(gap >= 0.15, ("requests %d and %d only %.3f s apart"):format(i - 1, i, gap))
    end
    slow.stop()
  end)

  it("stops at Ctrl-C and keeps every line it wrote", function()
    local slow = S.start(SITE, TMP, "slow3", 0.1)
    local out = TMP .. "/int.jsonl"
    local p = start_bg("int", {"scripts/crawl.lua", "-q", "--no-progress", "--depth", "20",
                               "-c", "4", "-o", out, slow.origin .. "/p/1.html"})
    local deadline = ah.now() + 20
    while count_lines(out) < 10 and ah.now() < deadline do ah.sleep(0.05) end
    local t0 = ah.now()
    p.signal("INT")
    local code, _, err = p.wait(20)
    local took = ah.now() - t0
    slow.stop()
    assert.equal(130, code, err)
    assert.is_true(took < 5, ("took %.1f s to stop"):format(took))
    assert.matches("interrupted after %d+ pages", err)
    local recs = read_jsonl(out) -- every line is whole JSON
    assert.is_true(#recs >= 10)
    assert.is_true(#recs < N)
    local served = 0
    for _, r in ipairs(slow.requests()) do
      if r.path:match("^/p/") then served = served + 1 end
    end
    -- pages in flight at Ctrl-C finished and were written; none was lost
    assert.is_true(served - #recs <= 4, ("served %d, recorded %d"):format(served, #recs))
  end)

  it("stops at --max-pages", function()
    local out = TMP .. "/max.jsonl"
    local _, stderr, code = crawl_cli({"-q", "--depth", "20", "--max-pages", "25", "-o", out,
                                       srv.origin .. "/p/1.html"})
    assert.equal(0, code, stderr)
    assert.equal(25, #read_jsonl(out))
    assert.equal(25 + 1, #fetched(srv)) -- and robots.txt
  end)
end)

describe("a crawl shared through PostgreSQL", function()
  local PG = H.env("AH_TEST_PG")
  local conn, big
  local BIG = 2000

  setup(function()
    S.write(TMP .. "/site2k", BIG)
    big = S.start(TMP .. "/site2k", TMP, "site2k", 0.004)
  end)
  teardown(function()
    if big then big.stop() end
  end)
  before_each(function()
    big.clear_log()
    conn = assert(ah.db.connect(PG))
  end)
  after_each(function()
    conn:close()
    H.assert_clean()
  end)

  local function q(sql, ...) return assert(conn:query(sql, ...)) end

  it("is done by three processes, each page once, though one is killed mid-crawl", function()
    local id = "spec-" .. math.random(1, 1e9)
    local start = big.origin .. "/p/1.html"
    local common = {"-q", "--no-progress", "--frontier", PG, "--crawl-id", id, "--lease", "2",
                    "-c", "8"}
    local function worker(name, extra)
      local args = {"scripts/crawl.lua", "--worker", name, "-o", TMP .. "/" .. name .. ".jsonl"}
      for _, a in ipairs(common) do args[#args + 1] = a end
      for _, a in ipairs(extra or {}) do args[#args + 1] = a end
      return start_bg(name, args)
    end
    local w1 = worker("w1", {"--depth", "20", start})
    -- the others join by id, with the options the crawl was started with
    local deadline = ah.now() + 20
    local rows
    repeat
      ah.sleep(0.05)
      rows = conn:query("SELECT count(*) AS n FROM crawl_frontier WHERE crawl = $1", id)
    until (rows and rows[1].n > 0) or ah.now() > deadline
    local w2, w3 = worker("w2"), worker("w3")
    repeat
      ah.sleep(0.05)
      rows = q("SELECT count(*) AS n FROM crawl_results WHERE crawl = $1", id)
    until rows[1].n >= 300 or ah.now() > deadline
    -- freeze w1 at a moment it holds leases, note them, and kill it
    local held
    repeat
      w1.signal("STOP")
      -- queries w1 sent before it stopped still run on the server: let
      -- them land before reading what it holds
      ah.sleep(0.3)
      held = q([[SELECT url FROM crawl_frontier
                  WHERE crawl = $1 AND worker = 'w1' AND state = 'leased']], id)
      if #held == 0 then
        w1.signal("CONT")
        ah.sleep(0.02)
      end
    until #held > 0 or ah.now() > deadline + 20
    w1.signal("KILL")
    local c1 = w1.wait(10)
    local c2, _, e2 = w2.wait(120)
    local c3, _, e3 = w3.wait(120)
    assert.equal(137, c1) -- 128 + SIGKILL
    assert.equal(0, c2, e2)
    assert.equal(0, c3, e3)

    local want = {}
    for i = 1, BIG do want[#want + 1] = big.origin .. "/p/" .. i .. ".html" end
    want[#want + 1] = big.origin .. "/p/missing.html"
    table.sort(want)
    local got = {}
    for i, r in ipairs(q("SELECT url FROM crawl_results WHERE crawl = $1 ORDER BY url", id)) do
      got[i] = r.url
    end
    table.sort(got)
    assert.equal(#want, #got) -- the primary key (crawl, url) makes each one row
    assert.same(want, got)
    local undone = q("SELECT count(*) AS n FROM crawl_frontier WHERE crawl = $1 AND state <> 'done'", id)
    assert.equal(0, undone[1].n)
    local by = q("SELECT worker, count(*) AS n FROM crawl_results WHERE crawl = $1 GROUP BY worker", id)
    local per = {}
    for _, r in ipairs(by) do per[r.worker] = r.n end
    assert.is_true((per.w1 or 0) > 0 and (per.w2 or 0) > 0 and (per.w3 or 0) > 0)
    -- what w1 held when it died was taken over by the others once its lease expired
    assert.is_true(#held > 0, "w1 held no lease when killed")
    for _, r in ipairs(held) do
      local res = q("SELECT worker FROM crawl_results WHERE crawl = $1 AND url = $2", id, r.url)
      assert.equal(1, #res)
      assert.not_equal("w1", res[1].worker)
    end
    -- pages fetched more than once are only ones w1 held when it died
    local heldset, count = {}, {}
    for _, r in ipairs(held) do heldset[r.url:sub(#big.origin + 1)] = true end
    for _, r in ipairs(big.requests()) do
      if r.path:match("^/p/") then count[r.path] = (count[r.path] or 0) + 1 end
    end
    for path, n in pairs(count) do
      if n > 1 then assert.is_true(heldset[path], path .. " fetched " .. n .. " times") end
    end
    q("DELETE FROM crawl_runs WHERE crawl = $1", id)
  end)

  it("resumes a finished crawl without fetching again, and --reset starts over", function()
    local id = "spec-resume-" .. math.random(1, 1e9)
    local args = {"scripts/crawl.lua", "-q", "--no-progress", "--frontier", PG, "--crawl-id", id,
                  "--depth", "2", big.origin .. "/p/1.html"}
    local _, err, code = H.run(args)
    assert.equal(0, code, err)
    assert.equal(8, q("SELECT count(*) AS n FROM crawl_results WHERE crawl = $1", id)[1].n)
    big.clear_log()
    _, err, code = H.run(args)
    assert.equal(0, code, err)
    assert.matches("^0 pages", err)
    assert.same({"/robots.txt"}, fetched(big)) -- to check the start URL; no page
    args[#args + 1] = "--reset"
    _, err, code = H.run(args)
    assert.equal(0, code, err)
    assert.matches("^8 pages", err)
    assert.equal(8, q("SELECT count(*) AS n FROM crawl_results WHERE crawl = $1", id)[1].n)
    q("DELETE FROM crawl_runs WHERE crawl = $1", id)
  end)

  it("gives back its leases at Ctrl-C, and a second run finishes the crawl", function()
    local slow = S.start(TMP .. "/site2k", TMP, "slow2k", 0.1)
    local id = "spec-int-" .. math.random(1, 1e9)
    local args = {"scripts/crawl.lua", "-q", "--no-progress", "--frontier", PG, "--crawl-id", id,
                  "--depth", "4", "-c", "3", "--lease", "60", slow.origin .. "/p/1.html"}
    local p = start_bg("int-shared", args)
    local deadline = ah.now() + 20
    local rows
    repeat
      ah.sleep(0.05)
      rows = conn:query("SELECT count(*) AS n FROM crawl_results WHERE crawl = $1", id)
    until (rows and rows[1].n >= 5) or ah.now() > deadline
    p.signal("INT")
    local code, _, err = p.wait(20)
    assert.equal(130, code, err)
    local leased = q("SELECT count(*) AS n FROM crawl_frontier WHERE crawl = $1 AND state = 'leased'", id)
    assert.equal(0, leased[1].n)
    local done = q("SELECT count(*) AS n FROM crawl_results WHERE crawl = $1", id)[1].n
    assert.is_true(done >= 5 and done < 32, "done " .. done)
    local _, err2, code2 = H.run(args)
    assert.equal(0, code2, err2)
    assert.matches("^" .. (32 - done) .. " pages", err2)
    assert.equal(32, q("SELECT count(DISTINCT url) AS n FROM crawl_results WHERE crawl = $1", id)[1].n)
    slow.stop()
    q("DELETE FROM crawl_runs WHERE crawl = $1", id)
  end)

  it("keeps to --max-pages across workers", function()
    local id = "spec-max-" .. math.random(1, 1e9)
    local common = {"scripts/crawl.lua", "-q", "--no-progress", "--frontier", PG, "--crawl-id", id,
                    "--depth", "20", "--max-pages", "50", big.origin .. "/p/1.html"}
    local a, b = start_bg("m1", common), start_bg("m2", common)
    local ca, _, ea = a.wait(60)
    local cb, _, eb = b.wait(60)
    assert.equal(0, ca, ea)
    assert.equal(0, cb, eb)
    assert.equal(50, q("SELECT count(*) AS n FROM crawl_results WHERE crawl = $1", id)[1].n)
    q("DELETE FROM crawl_runs WHERE crawl = $1", id)
  end)

  it("refuses to join a crawl that does not exist", function()
    local _, err, code = H.run({"scripts/crawl.lua", "--frontier", PG, "--crawl-id", "nope-" .. math.random(1e9)})
    assert.equal(1, code)
    assert.matches("no crawl named", err, 1, true)
  end)
end)

describe("scripts/demo.lua", function()
  it("serves a 200-page site with http.server and crawls it, offline", function()
    local out, err, code = H.run({"scripts/demo.lua"})
    assert.equal(0, code, err)
    assert.matches("200 pages in", out, 1, true)
    assert.matches("status 200×200", out, 1, true)
    assert.matches("Recipe 189: ", out, 1, true)
    local titles = 0
    for _ in out:gmatch("\n  200  ") do titles = titles + 1 end
    assert.equal(200, titles)
  end)
end)

describe("crawl.run", function()
  after_each(function() H.assert_clean() end)

  it("crawls in this process, calling on_page for each page", function()
    local titles = {}
    local stats = crawl.run({urls = {srv.origin .. "/docs/"}, robots = false,
                             on_page = function(rec) titles[#titles + 1] = rec.title end})
    -- /docs/ is served by python as a directory listing whose links are relative
    assert.equal(stats.pages, #titles)
    assert.is_true(stats.pages >= 4)
    assert.equal(0, stats.errors)
  end)

  it("raises on bad options", function()
    assert.has_error(function() crawl.run({urls = {}}) end, "crawl: no start URL")
    assert.has_error(function() crawl.run({urls = {"http://x/"}, scope = "moon"}) end)
    assert.has_error(function() crawl.run({urls = {"http://x/"}, concurrency = 0}) end)
    assert.has_error(function() crawl.run({urls = {"http://x/"}, depth = -1}) end)
  end)

  it("can be cancelled, leaving nothing behind", function()
    local slow = S.start(SITE, TMP, "slow2", 0.2)
    local t = spawn(crawl.run, {urls = {slow.origin .. "/p/1.html"}, depth = 20})
    sleep(0.5)
    t:cancel()
    local ok, err = pcall(t.wait, t)
    assert.is_false(ok)
    assert.matches("^cancelled", err)
    slow.stop()
  end)
end)
