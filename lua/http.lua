-- http.server: apps, routing, middleware, requests and responses. The
-- sockets, the HTTP protocol (llhttp), limits and timeouts are in
-- bindings/http.c, which runs each request as a task calling the app's
-- dispatcher below and writes what it returns:
--   status, body (string or nil), headers (table or nil), content type
-- (status 0: the handler streamed its response itself; -1: it failed after
-- the head was out, so the connection is broken off).
local M, C = ...

local type, select, pairs, ipairs, tostring, tonumber, error, xpcall =
  type, select, pairs, ipairs, tostring, tonumber, error, xpcall
local rawget, rawset, setmetatable, getmetatable =
  rawget, rawset, setmetatable, getmetatable
local concat, sfind, ssub, schar, sformat = table.concat, string.find,
  string.sub, string.char, string.format
local traceback = debug.traceback

local http = {}
M.http = http

-- ---- errors ---------------------------------------------------------------

-- http.error(status [, body [, headers]]) raises an error that becomes
-- that response (req:json() raises one with 400 on a bad body).
local HttpError = {__name = "http.error"}
HttpError.__index = HttpError
HttpError.__tostring = function(e)
  local b = e.body
  if type(b) == "table" then b = b.error or b.message end
  return sformat("http error %d%s", e.status, b and (": " .. tostring(b)) or "")
end

function http.error(status, body, headers)
  if math.type(status) ~= "integer" or status < 200 or status > 999 then
    error("bad argument #1 to 'error' (an HTTP status expected)", 2)
  end
  error(setmetatable({status = status, body = body, headers = headers},
    HttpError), 2)
end

local function log_error(msg)
  local log = M.log
  if type(log) == "table" and type(log.error) == "function" then
    log.error(msg)
  else
    C.log("error", msg)
  end
end

-- A failure with its traceback, taken where it was raised.
local Failure = {}

-- The traceback without the dispatcher's own frames.
local function trim(tb)
  return (tb:gsub("\n\t%(%.%.%.tail calls%.%.%.%)", "")
    :gsub("\n\t%[C%]: in function 'xpcall'", "")
    :gsub("\n\tasynchost%.http:[^\n]*", ""))
end

local function msgh(e)
  if type(e) == "string" and sfind(e, "^cancelled:") then return e end
  if getmetatable(e) == HttpError then return e end
  local text = type(e) == "string" and e or tostring(e)
  return setmetatable({err = e, tb = trim(traceback(text, 2))}, Failure)
end

local function is_cancel(e)
  return type(e) == "string" and sfind(e, "^cancelled:") ~= nil
end

-- ---- requests ---------------------------------------------------------------

local function unhex(h)
  return schar(tonumber(h, 16))
end

local function unescape(s)
  if not sfind(s, "%", 1, true) then return s end
  return (s:gsub("%%(%x%x)", unhex))
end
http.unescape = unescape

local function unescape_form(s)
  if sfind(s, "+", 1, true) then s = s:gsub("+", " ") end
  return unescape(s)
end

-- "a=1&b=x+y&a=2&flag" -> {a = {"1", "2"}, b = "x y", flag = ""}
local function parse_query(q)
  local t = {}
  if not q or q == "" then return t end
  for pair in q:gmatch("[^&;]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k, v = unescape_form(k), unescape_form(v)
    local old = t[k]
    if old == nil then
      t[k] = v
    elseif type(old) == "table" then
      old[#old + 1] = v
    else
      t[k] = {old, v}
    end
  end
  return t
end
http.parse_query = parse_query

local Req = {}

local req_mt = {__name = "http.request"}
req_mt.__index = function(req, k)
  local m = Req[k]
  if m ~= nil then return m end
  if k == "headers" then
    local h = C.headers(rawget(req, "_r"))
    rawset(req, "headers", h)
    return h
  elseif k == "query" then
    local q = parse_query(rawget(req, "_query"))
    rawset(req, "query", q)
    return q
  elseif k == "params" then
    local p = {}
    rawset(req, "params", p)
    return p
  elseif k == "remote_addr" then
    local a = C.remote_addr(rawget(req, "_r"))
    rawset(req, "remote_addr", a)
    return a
  end
end

-- req:json() -> the decoded body; a body that is not JSON raises
-- http.error 400 (the client gets it unless the handler catches it).
local NOTHING = {}
function Req:json()
  local v = rawget(self, "_json")
  if v == NOTHING then return nil end
  if v ~= nil then return v end
  if self.body == "" then
    http.error(400, {error = "a JSON body was expected"})
  end
  local val, err = C.decode(self.body)
  if val == nil and err then
    http.error(400, {error = "invalid JSON: " .. err})
  end
  rawset(self, "_json", val == nil and NOTHING or val)
  return val
end

-- req:stream(fn [, status [, headers]]): sends the head at once and calls
-- fn(write); write(data) sends a piece (chunked transfer) and returns
-- true, or nil, "closed: ..." once the client is gone.
function Req:stream(fn, status, headers)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'stream' (function expected)", 2)
  end
  if status ~= nil and math.type(status) ~= "integer" then
    error("bad argument #2 to 'stream' (integer status expected)", 2)
  end
  if headers ~= nil and type(headers) ~= "table" then
    error("bad argument #3 to 'stream' (table expected)", 2)
  end
  if rawget(self, "_streamed") then error("the response has begun", 2) end
  local r = rawget(self, "_r")
  local ok, err = C.stream_begin(r, status or 200, headers,
    "text/plain; charset=utf-8")
  if not ok then return nil, err end
  rawset(self, "_streamed", true)
  fn(function(data)
    if type(data) ~= "string" then data = tostring(data) end
    return C.stream_write(r, data)
  end)
  return true
end

-- ---- responses -----------------------------------------------------------------

-- A handler's (or middleware's) return values -> status, body, headers;
-- false, message when they are not a response. Status 0: the response
-- was streamed (it is out).
local function shape(req, a, b, c)
  if req._streamed then return 0 end -- false from the start: no __index
  local ta = type(a)
  if ta == "table" or ta == "string" or ta == "userdata" then
    return 200, a, b ~= nil and type(b) == "table" and b or nil
  elseif ta == "number" then
    if math.type(a) ~= "integer" or a < 200 or a > 999 then
      return false, "the handler returned an invalid status " .. tostring(a)
    end
    return a, b, c
  elseif a == nil then
    if b ~= nil then -- the nil, err convention: a failure
      return false, type(b) == "string" and b or tostring(b)
    end
    return 204, nil, nil
  end
  return false, "the handler returned a " .. ta
end

-- shape that raises what is not a response.
local function normalize(req, a, b, c)
  local s, x, y = shape(req, a, b, c)
  if s == false then error(x, 0) end
  return s, x, y
end

-- An error in a handler: http.error becomes its response; anything else
-- is logged with its traceback and answered 500. Cancellation goes on.
local function failed(req, e)
  if is_cancel(e) then error(e, 0) end
  rawset(req, "_failed", true)
  if getmetatable(e) == HttpError then
    return e.status, e.body, e.headers
  end
  local text = getmetatable(e) == Failure and e.tb or tostring(e)
  log_error(sformat("http: %s %s: %s", req.method, req.path, text))
  return 500, {error = "internal server error"}, nil
end

local JSON_500 = '{"error":"internal server error"}'

-- status, body, headers (shaped) -> what bindings/http.c writes.
local function finalize(req, s, b, h)
  if s == 0 then return rawget(req, "_failed") and -1 or 0 end -- streamed
  local tb = type(b)
  if tb == "table" or tb == "userdata" then
    local js, err = C.encode(b)
    if js then return s, js, h, "application/json" end
    log_error(sformat("http: %s %s: cannot encode the response body: %s",
      req.method, req.path, tostring(err)))
    return 500, JSON_500, nil, "application/json"
  end
  if tb == "string" then return s, b, h, "text/html; charset=utf-8" end
  if b == nil then return s, nil, h end
  if tb == "number" or tb == "boolean" then
    return s, tostring(b), h, "text/plain; charset=utf-8"
  end
  log_error(sformat("http: %s %s: a %s is not a response body", req.method,
    req.path, tb))
  return 500, JSON_500, nil, "application/json"
end

-- ---- routing ---------------------------------------------------------------------

-- "/users/:id/*" -> {"users", {name = "id"}, {rest = true}}
local function split(path)
  local parts, n = {}, 0
  for seg in ssub(path .. "/", 2):gmatch("([^/]*)/") do
    n = n + 1
    parts[n] = seg
  end
  return parts, n
end

local function compile(pattern, fn)
  local segs, n = split(pattern)
  local rt = {fn = fn, n = n, pattern = pattern}
  for i = 1, n do
    local s = segs[i]
    if s == "*" then
      if i ~= n then error("'*' must end the pattern: " .. pattern, 3) end
      rt.wild = true
    elseif ssub(s, 1, 1) == ":" then
      if #s == 1 then error("a parameter needs a name: " .. pattern, 3) end
      segs[i] = {name = ssub(s, 2)}
    elseif sfind(s, "*", 1, true) then
      error("'*' must be a whole last segment: " .. pattern, 3)
    end
  end
  rt.segs = segs
  return rt
end

local function match_route(rt, parts, np)
  local segs, n = rt.segs, rt.n
  local last = n
  if rt.wild then
    last = n - 1
    if np < last then return nil end
  elseif np ~= n then
    return nil
  end
  local params
  for i = 1, last do
    local s, p = segs[i], parts[i]
    if type(s) == "string" then
      if s ~= p then return nil end
    else
      if p == "" then return nil end
      params = params or {}
      params[s.name] = unescape(p)
    end
  end
  params = params or {}
  if rt.wild then params["*"] = unescape(concat(parts, "/", n, np)) end
  return params
end

local function find(app, method, path)
  local ex = app._exact[method]
  local fn = ex and ex[path]
  if fn then return fn end
  local list = app._patterns[method]
  if list then
    local parts, np = split(path)
    for i = 1, #list do
      local params = match_route(list[i], parts, np)
      if params then return list[i].fn, params end
    end
  end
end

local function not_found(app, req)
  local allow = {}
  for m in pairs(app._methods) do
    if m ~= "*" and find(app, m, req.path) then allow[#allow + 1] = m end
  end
  if #allow > 0 then
    table.sort(allow)
    return 405, {error = "method not allowed"}, {Allow = concat(allow, ", ")}
  end
  return 404, {error = "not found"}, nil
end

-- xpcall(handler, msgh, req)'s results -> status, body, headers.
local function outcome(req, ok, a, b, c)
  if ok then
    if not req._streamed then -- the usual answers, as shape gives them
      local ta = type(a)
      if ta == "table" or ta == "string" then
        return 200, a, b ~= nil and type(b) == "table" and b or nil
      end
    end
    local s, x, y = shape(req, a, b, c)
    if s ~= false then return s, x, y end
    a = x -- not a response: a failure (raised where the handler returned)
  end
  return normalize(req, failed(req, a))
end

-- Routes the request and runs its handler -> status, body, headers.
local function handle(app, req)
  local method, path = req.method, req.path
  local fn, params = find(app, method, path)
  if not fn then fn, params = find(app, "*", path) end
  if not fn and method == "HEAD" then fn, params = find(app, "GET", path) end
  if not fn then return not_found(app, req) end
  if params then rawset(req, "params", params) end
  return outcome(req, xpcall(fn, msgh, req))
end

local function run_chain(app, req, i)
  local mw = app._mw[i]
  if not mw then return handle(app, req) end
  local called = false
  local function nxt()
    if called then error("next() was already called", 2) end
    called = true
    local s, b, h = run_chain(app, req, i + 1)
    return s, b, h or {}
  end
  return normalize(req, mw(req, nxt))
end

-- The function each request's task runs. An exact route without
-- middleware is the short way: the call stack stays shallow, since each
-- level a request reaches costs its fresh coroutine an allocation.
local function dispatcher(app)
  local mws, exact = app._mw, app._exact
  return function(req)
    if not mws[1] then
      local ex = exact[req.method]
      local fn = ex and ex[req.path]
      if fn then return finalize(req, outcome(req, xpcall(fn, msgh, req))) end
      return finalize(req, handle(app, req))
    end
    local ok, s, b, h = xpcall(run_chain, msgh, app, req, 1)
    if not ok then s, b, h = normalize(req, failed(req, s)) end
    return finalize(req, s, b, h)
  end
end

-- ---- apps --------------------------------------------------------------------------

local App = {}
App.__index = App

local SERVER_OPTS = {
  max_body = "number", max_header = "number", idle_timeout = "number",
  request_timeout = "number", max_connections = "number",
  access_log = "boolean",
}
local LISTEN_OPTS = {
  host = "string", port = "number", backlog = "number", reuseport = "boolean",
}

local function check_opts(opts, allowed, fname)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(sformat("bad argument #1 to '%s' (table expected, got %s)", fname,
      type(opts)), 3)
  end
  local out = {}
  for k, v in pairs(opts) do
    local want = allowed[k]
    if not want then
      error(sformat("%s: unknown option '%s'", fname, tostring(k)), 3)
    end
    if type(v) ~= want then
      error(sformat("%s: option '%s' must be a %s, not a %s", fname, k, want,
        type(v)), 3)
    end
    if want == "number" and not (v >= 0) then
      error(sformat("%s: option '%s' must be >= 0", fname, k), 3)
    end
    out[k] = v
  end
  return out
end

-- http.server([opts]) -> app
function http.server(opts)
  local cfg = check_opts(opts, SERVER_OPTS, "http.server")
  return setmetatable({_cfg = cfg, _exact = {}, _patterns = {}, _methods = {},
    _mw = {}}, App)
end

-- app:route(method, pattern, fn): method "*" matches any method
function App:route(method, pattern, fn)
  if type(method) ~= "string" then
    error("bad argument #1 to 'route' (method string expected)", 2)
  end
  if type(pattern) ~= "string" or ssub(pattern, 1, 1) ~= "/" then
    error("bad argument #2 to 'route' (a pattern starting with '/' expected)", 2)
  end
  if type(fn) ~= "function" and not (getmetatable(fn) or {}).__call then
    error("bad argument #3 to 'route' (function expected)", 2)
  end
  method = method:upper()
  self._methods[method] = true
  if not sfind(pattern, "[:*]") then
    local ex = self._exact[method] or {}
    self._exact[method] = ex
    ex[pattern] = fn
  else
    local list = self._patterns[method] or {}
    self._patterns[method] = list
    list[#list + 1] = compile(pattern, fn)
  end
  return self
end

for _, m in ipairs({"get", "post", "put", "patch", "delete", "head", "options"}) do
  local M_ = m:upper()
  App[m] = function(self, pattern, fn)
    if getmetatable(self) ~= App then
      error("bad argument #1 to '" .. m .. "' (app expected: use app:" .. m .. ")", 2)
    end
    return App.route(self, M_, pattern, fn)
  end
end

-- app:use(function(req, next) ... end): middleware, run in order
function App:use(fn)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'use' (function expected)", 2)
  end
  self._mw[#self._mw + 1] = fn
  return self
end

local CONTENT_TYPES = {
  html = "text/html; charset=utf-8", htm = "text/html; charset=utf-8",
  css = "text/css; charset=utf-8", js = "text/javascript; charset=utf-8",
  mjs = "text/javascript; charset=utf-8", json = "application/json",
  txt = "text/plain; charset=utf-8", md = "text/markdown; charset=utf-8",
  csv = "text/csv; charset=utf-8", xml = "application/xml",
  svg = "image/svg+xml", png = "image/png", jpg = "image/jpeg",
  jpeg = "image/jpeg", gif = "image/gif", webp = "image/webp",
  ico = "image/x-icon", avif = "image/avif", pdf = "application/pdf",
  wasm = "application/wasm", woff = "font/woff", woff2 = "font/woff2",
  ttf = "font/ttf", otf = "font/otf", mp4 = "video/mp4", webm = "video/webm",
  mp3 = "audio/mpeg", ogg = "audio/ogg", wav = "audio/wav",
  zip = "application/zip", gz = "application/gzip", tar = "application/x-tar",
  lua = "text/plain; charset=utf-8",
}
http.content_types = CONTENT_TYPES

local function content_type(path)
  local ext = path:match("%.([%w]+)$")
  return ext and CONTENT_TYPES[ext:lower()] or "application/octet-stream"
end

-- app:static(prefix, dir): GET/HEAD prefix/<path> serves dir/<path>
-- ("index.html" for a directory); ".." segments are refused.
function App:static(prefix, dir)
  if type(prefix) ~= "string" or ssub(prefix, 1, 1) ~= "/" then
    error("bad argument #1 to 'static' (a prefix starting with '/' expected)", 2)
  end
  if type(dir) ~= "string" or dir == "" then
    error("bad argument #2 to 'static' (directory expected)", 2)
  end
  prefix = prefix:gsub("/+$", "")
  dir = dir:gsub("(.)/+$", "%1")
  local function serve(req)
    local rel = req.params["*"] or ""
    if sfind(rel, "\0", 1, true) or sfind(rel, "\\", 1, true) then
      return 400, {error = "bad path"}
    end
    for seg in rel:gmatch("[^/]+") do
      if seg == ".." then return 403, {error = "forbidden"} end
    end
    if rel == "" or ssub(rel, -1) == "/" then rel = rel .. "index.html" end
    local path = dir .. "/" .. rel
    local ok, err, why = C.sendfile(rawget(req, "_r"), path, content_type(path))
    if ok then
      rawset(req, "_streamed", true)
      return
    end
    if why == "missing" then return 404, {error = "not found"} end
    if why == "forbidden" then return 403, {error = "forbidden"} end
    error(err, 0)
  end
  self:route("GET", prefix .. "/*", serve)
  return self
end

-- app:listen{host = "127.0.0.1", port = 8080, backlog = 511, reuseport}
-- -> true | nil, err. Binds before it returns; port 0 picks a free port
-- (app.port tells which).
function App:listen(opts)
  local o = check_opts(opts, LISTEN_OPTS, "listen")
  if getmetatable(self) ~= App then
    error("bad argument #1 to 'listen' (app expected: use app:listen)", 2)
  end
  if self._srv then error("listen: this app is already listening", 2) end
  if o.port and (math.type(o.port) ~= "integer" or o.port > 65535) then
    error("listen: port must be an integer from 0 to 65535", 2)
  end
  local cfg = {}
  for k, v in pairs(self._cfg) do cfg[k] = v end
  cfg.host = o.host
  cfg.port = o.port or 8080
  cfg.backlog = o.backlog
  cfg.reuseport = o.reuseport
  cfg.dispatch = dispatcher(self)
  cfg.req_mt = req_mt
  cfg.shutdown_timeout = M.shutdown_timeout
  local srv, err = C.listen(cfg)
  if not srv then return nil, err end
  self._srv = srv
  self.port = srv:port()
  return true
end

-- app:close([timeout]) -> true: stops accepting, lets the requests in
-- flight finish (within timeout seconds, default 10; then they are
-- cancelled) and waits until every connection is closed.
function App:close(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("bad argument #1 to 'close' (number >= 0 expected)", 2)
  end
  local srv = self._srv
  if not srv then return true end
  self._srv = nil
  return srv:close(timeout)
end

-- app:stats() -> {connections =, handling =, listening =}
function App:stats()
  local srv = self._srv
  if not srv then return {connections = 0, handling = 0, listening = false} end
  return srv:stats()
end

http.worker = C.worker()

return http
