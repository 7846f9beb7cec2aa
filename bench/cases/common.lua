-- Shared by the asynchost side of the bench cases:
--   local B = dofile(arg[0]:match("^(.*)/") .. "/common.lua")
local B = {}

-- Prints the one line bench/lib/harness.py reads: RESULT {json}.
-- (Numbers and booleans only, so it needs no json module.)
function B.result(t)
  local parts = {}
  for k, v in pairs(t) do
    local s = type(v) == "boolean" and tostring(v) or string.format("%.17g", v)
    parts[#parts + 1] = string.format("%q:%s", k, s)
  end
  print("RESULT {" .. table.concat(parts, ",") .. "}")
end

-- A field of /proc/self/status in kB (VmRSS, VmHWM).
function B.status_kb(field)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)"))
end

return B
