-- bench case 5, asynchost side: /hello answers JSON, /sleep the same after
-- sleep(0.01).
--   asynchost bench/cases/server.lua PORT
local port = tonumber(arg[1])
local app = http.server()
app:get("/hello", function() return {message = "hello"} end)
app:get("/sleep", function()
  sleep(0.01)
  return {message = "hello"}
end)
assert(app:listen{host = "127.0.0.1", port = port})
