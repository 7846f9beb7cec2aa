-- scripts/api.lua: the asyncio tutorial's FastAPI example, in asynchost.
--
--   asynchost scripts/api.lua [port]                 (default 8000)
--   DATABASE_URL=postgresql://user@host/db asynchost scripts/api.lua
--   asynchost --workers 4 scripts/api.lua            (4 processes, one port)
--
--   GET  /async-endpoint   sleeps 2 s without blocking anyone: {"result":"done"}
--   GET  /concurrent       three of those at once: answers in ~2 s, not 6
--   with DATABASE_URL, users on PostgreSQL (db.pool):
--   GET /users  POST /users  GET /users/:id  PUT /users/:id  DELETE /users/:id
--
-- The FastAPI original:
--   @app.get("/async-endpoint")
--   async def async_endpoint():
--       await asyncio.sleep(2)
--       return {"result": "done"}
local ah = require("asynchost")
local http, json, sleep, gather, log = ah.http, ah.json, ah.sleep, ah.gather, ah.log

local port = tonumber(arg[1] or os.getenv("PORT") or "8000")
local host = os.getenv("HOST") or "127.0.0.1"

local app = http.server{access_log = os.getenv("ACCESS_LOG") == "1"}

local function async_endpoint()
  sleep(2) -- other requests run meanwhile: this task just waits
  return {result = "done"}
end

app:get("/async-endpoint", async_endpoint)

app:get("/concurrent", function()
  local t0 = ah.now()
  local results = gather({async_endpoint, async_endpoint, async_endpoint})
  return {results = {results[1], results[2], results[3]},
          seconds = math.floor((ah.now() - t0) * 100 + 0.5) / 100}
end)

-- ---- users on PostgreSQL -------------------------------------------------

local dsn = os.getenv("DATABASE_URL")
local pool

local function user_input(req, partial)
  local body = req:json() -- bad JSON: the client gets 400
  if type(body) ~= "table" then http.error(400, {error = "a JSON object expected"}) end
  for _, k in ipairs({"name", "email"}) do
    local v = body[k]
    if v == nil and not partial then http.error(422, {error = k .. " is required"}) end
    if v ~= nil and (type(v) ~= "string" or v == "") then
      http.error(422, {error = k .. " must be a non-empty string"})
    end
  end
  return body.name, body.email
end

local function user_id(req)
  local id = tonumber(req.params.id)
  if not id or math.type(id) ~= "integer" then http.error(404, {error = "no such user"}) end
  return id
end

-- db errors: a duplicate email is the client's problem, the rest is ours
local function db_failed(err)
  if err:find("23505", 1, true) then
    http.error(409, {error = "a user with this email exists"})
  end
  error(err, 2) -- logged with its traceback; the client gets 500
end

if dsn then
  pool = ah.db.pool{dsn = dsn, size = tonumber(os.getenv("DB_POOL_SIZE") or "10")}
  local ok, err = pool:exec([[
    create table if not exists users (
      id bigserial primary key,
      name text not null,
      email text not null unique,
      created_at timestamptz not null default now())]])
  if not ok then
    io.stderr:write("api.lua: ", err, "\n")
    os.exit(1)
  end

  local COLS = "id, name, email, created_at::text as created_at"

  app:get("/users", function()
    local rows, err = pool:query("select " .. COLS .. " from users order by id")
    if not rows then db_failed(err) end
    return json.array(rows)
  end)

  app:post("/users", function(req)
    local name, email = user_input(req)
    local rows, err = pool:query("insert into users (name, email) values ($1, $2) returning "
                                 .. COLS, name, email)
    if not rows then db_failed(err) end
    return 201, rows[1], {Location = "/users/" .. rows[1].id}
  end)

  app:get("/users/:id", function(req)
    local rows, err = pool:query("select " .. COLS .. " from users where id = $1", user_id(req))
    if not rows then db_failed(err) end
    if not rows[1] then return 404, {error = "no such user"} end
    return rows[1]
  end)

  app:put("/users/:id", function(req)
    local id = user_id(req)
    local name, email = user_input(req, true)
    local rows, err = pool:query("update users set name = coalesce($2, name), "
                                 .. "email = coalesce($3, email) where id = $1 returning "
                                 .. COLS, id, name, email)
    if not rows then db_failed(err) end
    if not rows[1] then return 404, {error = "no such user"} end
    return rows[1]
  end)

  app:delete("/users/:id", function(req)
    local rows, err = pool:query("delete from users where id = $1 returning id", user_id(req))
    if not rows then db_failed(err) end
    if not rows[1] then return 404, {error = "no such user"} end
  end)
end

app:get("/", function()
  return {
    endpoints = {"/async-endpoint", "/concurrent"},
    users = pool and "/users" or "set DATABASE_URL for /users",
    worker = http.worker,
  }
end)

local ok, err = app:listen{host = host, port = port}
if not ok then
  io.stderr:write("api.lua: ", err, "\n")
  os.exit(1)
end
local msg = ("listening on http://%s:%d%s"):format(host, app.port,
  http.worker and (" (worker " .. http.worker .. ")") or "")
if log and log.info then log.info(msg) else io.stderr:write(msg, "\n") end
