-- fuzz_values: the input is read as a little program of Lua values
-- (nil, booleans, integers, floats and their edge cases, strings, nested
-- and cyclic tables, json.null, functions), which become fetch options
-- and db parameters. A misuse raises "fetch: ..." or a bad argument; a
-- failure returns nil, "<kind>: ..."; nothing else is allowed. No input
-- reaches beyond 127.0.0.1: the URL, the proxy and the output file are
-- the harness's.

local OUT = os.tmpname()
os.remove(OUT)
local POOL = db.pool{dsn = "postgresql://fuzz@127.0.0.1:1/fuzz?connect_timeout=1",
                     size = 2}
local NULLPOOL = db.pool{dsn = "host=127.0.0.1 port=1 user=fuzz connect_timeout=1",
                         size = 1, null = json.null}

local OPTS = {"method", "headers", "body", "json", "timeout", "connect_timeout",
  "redirects", "verify", "cafile", "proxy", "output", "max_size", "retries",
  "retry_delay"}
local PROXIES = {"", "http://127.0.0.1:1", "socks5://127.0.0.1:1",
  "http://[::1]:1", "127.0.0.1:1"}
local SPECIAL = {0, -0.0, 1, -1, 0.5, 1e308, -1e308, math.huge, -math.huge,
  0/0, math.maxinteger, math.mininteger, 2^53, 2^63, -2^63, 1e-320, 2^31,
  65535, 65536, 1000.0, 10.0}
local HEADER_NAMES = {"Content-Type", "Expect", "Host", "Accept", "X-A",
  "content-length", "Transfer-Encoding", "Cookie", ""}

local function reader(s)
  local pos = 1
  local r = {}
  function r.byte()
    local b = s:byte(pos) or 0
    pos = pos + 1
    return b
  end
  function r.more() return pos <= #s end
  function r.str()
    local n = r.byte()
    if n >= 200 then n = (n - 200) * 64 + r.byte() end -- up to ~3.5 KiB
    local v = s:sub(pos, pos + n - 1)
    pos = pos + n
    return v
  end
  local tables = {}
  function r.value(depth)
    local t = r.byte() % 14
    if t == 0 then return nil
    elseif t == 1 then return r.byte() % 2 == 1
    elseif t == 2 then
      local v = ("<i8"):unpack(s:sub(pos, pos + 7) .. ("\0"):rep(8))
      pos = pos + 8
      return v
    elseif t == 3 then
      local v = ("<d"):unpack(s:sub(pos, pos + 7) .. ("\0"):rep(8))
      pos = pos + 8
      return v
    elseif t == 4 then return SPECIAL[r.byte() % #SPECIAL + 1]
    elseif t == 5 or t == 6 then return r.str()
    elseif t == 7 and depth < 5 then -- a list
      local v = {}
      tables[#tables + 1] = v
      for i = 1, r.byte() % 6 do v[i] = r.value(depth + 1) end
      if r.byte() % 4 == 0 then v.n = r.value(depth + 1) end
      return v
    elseif t == 8 and depth < 5 then -- a map
      local v = {}
      tables[#tables + 1] = v
      for _ = 1, r.byte() % 5 do
        local k = r.value(depth + 1)
        if k ~= nil and k == k then v[k] = r.value(depth + 1) end
      end
      return v
    elseif t == 9 and #tables > 0 then -- a table again: maybe a cycle
      return tables[r.byte() % #tables + 1]
    elseif t == 10 then return json.null
    elseif t == 11 then return depth < 5 and json.array{r.value(depth + 1)} or {}
    elseif t == 12 then return print
    elseif t == 13 then return HEADER_NAMES[r.byte() % #HEADER_NAMES + 1]
    end
    return r.str()
  end
  return r
end

local function headers(r)
  local h = {}
  for _ = 1, r.byte() % 5 do
    local k = r.byte() % 2 == 0 and HEADER_NAMES[r.byte() % #HEADER_NAMES + 1]
      or r.value(3)
    local v = r.value(3)
    if k ~= nil and k == k then h[k] = v end
  end
  return h
end

local function fetch_opts(r)
  local o = {}
  for _ = 1, r.byte() % 8 do
    local b = r.byte()
    local k = b < 224 and OPTS[b % #OPTS + 1] or r.value(2)
    local v
    if k == "headers" and r.byte() % 4 ~= 0 then v = headers(r)
    else v = r.value(0) end
    if k == "proxy" and type(v) == "string" then
      v = PROXIES[#v % #PROXIES + 1]
    elseif k == "output" and type(v) == "string" then
      v = OUT
    elseif k == "retries" and math.type(v) == "integer" and v > 1 then
      v = 1
    elseif k == "retry_delay" and type(v) == "number" and v > 0.001 then
      v = 0.001
    end
    if k ~= nil and k == k then o[k] = v end
  end
  return o
end

local KINDS = {timeout = true, connect = true, http = true, closed = true,
  too_large = true, io = true, tls = true, dns = true}

local function check_fetch(r)
  local path = r.byte() % 4 == 0 and r.str() or "p"
  local u = (r.byte() % 8 == 0 and "https" or "http") .. "://127.0.0.1:1/" .. path
  local p = url.parse(u)
  if p and p.host ~= "127.0.0.1" then u = "http://127.0.0.1:1/" end
  local opts = r.byte() % 16 == 0 and r.value(0) or fetch_opts(r)
  local ok, res, err = pcall(fetch, u, opts)
  if not ok then
    assert(type(res) == "string" and res:match("fetch: "),
      "fetch raised: " .. tostring(res))
  elseif res == nil then
    assert(type(err) == "string" and KINDS[err:match("^(%w+):") or ""],
      "fetch failed with: " .. tostring(err))
  else
    error("fetch of 127.0.0.1:1 answered " .. tostring(res.status))
  end
  os.remove(OUT)
end

local function check_db_error(ok, res, err, what)
  if not ok then
    assert(type(res) == "string" and (res:match("bad argument")
      or res:match("^db: ")), what .. " raised: " .. tostring(res))
  else
    assert(res == nil and type(err) == "string" and
      (err:match("^connect: ") or err:match("^db: ")),
      what .. " returned " .. tostring(res) .. ", " .. tostring(err))
  end
end

local function check_db(r)
  local pool = r.byte() % 2 == 0 and POOL or NULLPOOL
  local sql = r.byte() % 4 == 0 and r.str() or "select $1, $2"
  local n = r.byte() % 9
  local params = {}
  for i = 1, n do params[i] = r.value(0) end
  local ok, res, err = pcall(pool.query, pool, sql, table.unpack(params, 1, n))
  check_db_error(ok, res, err, "query")
  if r.byte() % 4 == 0 then
    local rows = r.value(0)
    if r.byte() % 2 == 0 then rows = {params, {r.value(1), r.value(1)}} end
    ok, res, err = pcall(pool.copy_in, pool, "copy t from stdin", rows)
    check_db_error(ok, res, err, "copy_in")
  end
end

return function(s)
  local r = reader(s)
  local which = r.byte()
  if which % 2 == 0 then check_fetch(r) else check_db(r) end
  if r.more() and which % 4 < 2 then check_db(r) end
end
