-- db: transaction() and with(), over the leases of bindings/db.c. A lease
-- is a connection lent to one function (and the tasks it spawns); giving
-- it back happens in C, so it also works while a cancelled task unwinds
-- and can no longer wait: an open transaction is rolled back then.
local M = ...
local db = M.db
local conn, pool = db._conn, db._pool
db._conn, db._pool = nil, nil

local pack, unpack, setmetatable = table.pack, table.unpack, setmetatable

-- How many transactions are open on a lease (nested ones are savepoints).
local depth = setmetatable({}, {__mode = "k"})

-- Ends a scope however it is left. On an error (cancellation included)
-- `undo` is still set: it is queued without waiting, before anything
-- else can use the connection; an own lease is then given back.
local guard_mt = {
  __close = function(g)
    if g.undo then g.tx:_abort(g.undo) end
    depth[g.tx] = g.depth
    if g.own then g.tx:_release() end
  end,
}

-- src:transaction(fn, ...): BEGIN, fn(tx, ...), COMMIT -> fn's results
-- (true if none). fn returning nil, err: ROLLBACK -> nil, err. fn
-- raising: ROLLBACK and the error goes on. Inside a transaction (on its
-- tx) a nested one is a savepoint.
local function transaction(src, fn, ...)
  local tx, own = src:_lease()
  if not tx then return nil, own end
  local d = depth[tx] or 0
  local g <close> = setmetatable({tx = tx, own = own, depth = d}, guard_mt)
  local sp = d > 0 and ("ah_savepoint_" .. d) or nil
  local ok, err = tx:query(sp and ("SAVEPOINT " .. sp) or "BEGIN")
  if not ok then return nil, err end
  depth[tx] = d + 1
  g.undo = sp and ("ROLLBACK TO SAVEPOINT " .. sp) or "ROLLBACK"
  local r = pack(fn(tx, ...))
  if r[1] == nil and r[2] ~= nil then
    tx:query(g.undo)
    g.undo = nil
    return nil, r[2]
  end
  local res, cerr = tx:query(sp and ("RELEASE SAVEPOINT " .. sp) or "COMMIT")
  if not sp or res then g.undo = nil end
  if not res then return nil, cerr end
  if res.command == "ROLLBACK" then
    return nil, "db: the transaction was rolled back because a statement " ..
      "in it failed (SQLSTATE 25P02)"
  end
  if r.n == 0 then return true end
  return unpack(r, 1, r.n)
end

-- src:with(fn, ...): fn(c, ...) with a connection of its own; it goes back
-- however fn ends (an open transaction rolled back) -> fn's results.
local function with(src, fn, ...)
  local c, own = src:_lease()
  if not c then return nil, own end
  local g <close> = setmetatable({tx = c, own = own, depth = depth[c] or 0},
    guard_mt)
  return fn(c, ...)
end

conn.transaction, pool.transaction = transaction, transaction
conn.with, pool.with = with, with

-- pool:listen(channel) / pool:unlisten([channel]) / pool:notification([t]):
-- LISTEN on one connection the pool lends for it and keeps lent until
-- pool:unlisten() (all channels), pool:close(), or the connection is lost.
local listener = setmetatable({}, {__mode = "k"})

local function unpin(p)
  local c = listener[p]
  listener[p] = nil
  if c then c:_release() end -- UNLISTEN * runs as it goes back
end

-- One task at a time leases the listener (two leasing at once could
-- starve a pool of size 1 for good).
local pinning = setmetatable({}, {__mode = "k"})

local function listener_of(p)
  local sem = pinning[p]
  if not sem then
    sem = M.semaphore(1)
    pinning[p] = sem
  end
  return sem:with(function()
    if listener[p] then return listener[p] end
    local lease, err = p:_lease()
    if lease then listener[p] = lease end
    return lease, err
  end)
end

function pool:listen(channel)
  local c = listener[self]
  if not c then
    local lease, err = listener_of(self)
    if not lease then return nil, err end
    c = lease
  end
  local ok, err = c:listen(channel)
  if not ok and listener[self] == c and not c:_usable() then unpin(self) end
  return ok, err
end

function pool:unlisten(channel)
  local c = listener[self]
  if not c then return true end
  if channel == nil then
    unpin(self)
    return true
  end
  return c:unlisten(channel)
end

function pool:notification(t)
  local c = listener[self]
  if not c then return nil, "db: this pool listens on no channel (pool:listen first)" end
  local n, err = c:notification(t)
  if not n and listener[self] == c and not c:_usable() then unpin(self) end
  return n, err
end

local pool_close = pool.close
function pool:close(...)
  unpin(self)
  return pool_close(self, ...)
end
