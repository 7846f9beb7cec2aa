-- The asynchost CLI's main task: runs LUA_INIT, -e/-l in order, the
-- script, and the REPL, as lua5.4 does, inside one task so each of them
-- may call async functions.
local cfg = ...

local function fail(msg)
  io.stderr:write("asynchost: ", tostring(msg), "\n")
  io.stderr:flush()
  os.exit(1)
end

local function run_init()
  local init, name = os.getenv("LUA_INIT_5_4"), "=LUA_INIT_5_4"
  if not init then init, name = os.getenv("LUA_INIT"), "=LUA_INIT" end
  if not init then return end
  local f, err
  if init:sub(1, 1) == "@" then
    f, err = loadfile(init:sub(2))
  else
    f, err = load(init, name)
  end
  if not f then fail(err) end
  f()
end

local function run_lib(spec)
  local global, mod = spec:match("^([^=]+)=(.+)$")
  if not global then global, mod = spec, spec end
  _G[global] = require(mod)
end

local function repl()
  local stdin = require("asynchost").stdin
  local function prompt(p)
    io.stdout:write(p)
    io.stdout:flush()
  end
  while true do
    prompt("> ")
    local line = stdin:read("l")
    if not line then break end
    local chunk = line:gsub("^=", "return ")
    local f, err = load("return " .. chunk, "=stdin")
    if not f then
      f, err = load(chunk, "=stdin")
      while not f and err:find("<eof>$") do
        prompt(">> ")
        local more = stdin:read("l")
        if not more then break end
        chunk = chunk .. "\n" .. more
        f, err = load(chunk, "=stdin")
      end
    end
    if not f then
      io.stderr:write(err, "\n")
    else
      local r = table.pack(xpcall(f, debug.traceback))
      if not r[1] then
        io.stderr:write(tostring(r[2]), "\n")
      elseif r.n > 1 then
        print(table.unpack(r, 2, r.n))
      end
    end
  end
  io.stdout:write("\n")
end

if cfg.warnings then warn("@on") end
if not cfg.ignore_env then run_init() end
for _, action in ipairs(cfg.actions) do
  if action[1] == "e" then
    local f, err = load(action[2], "=(command line)")
    if not f then fail(err) end
    f()
  else
    run_lib(action[2])
  end
end
if cfg.script then
  local f, err = loadfile(cfg.script ~= "-" and cfg.script or nil)
  if not f then fail(err) end
  -- called from C so that the traceback names it "main chunk"; unprotected,
  -- so that it is taken where the error happened, even "not enough memory"
  require("asynchost")._call(f, table.unpack(cfg.args, 1, cfg.args.n))
end
if cfg.interactive then
  if cfg.banner then print(cfg.banner) end
  repl()
end
