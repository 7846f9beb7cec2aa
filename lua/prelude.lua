-- The parts of the asynchost module written in Lua. Loaded once per host
-- with the module table and the host's traceback message handler.
local M, msgh = ...

local pack, unpack = table.pack, table.unpack

M._msgh = msgh

-- s:with(fn, ...): fn(...) holding one permit; released however fn ends.
local semaphore_mt = getmetatable(M.semaphore(0))
function semaphore_mt.with(self, fn, ...)
  self:acquire()
  local r = pack(xpcall(fn, msgh, ...))
  self:release()
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end
