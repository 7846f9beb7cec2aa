-- bench case 3, asynchost side: CONC tasks each fetch the next request
-- until N GETs of the 1 KB page are done (keep-alive, one multi handle).
--   asynchost bench/cases/fetch_throughput.lua URL N CONC
local B = dofile(arg[0]:match("^(.*)/") .. "/common.lua")
local url, n, conc = arg[1], tonumber(arg[2]), tonumber(arg[3])

local left, got = n, 0
local function worker()
  while left > 0 do
    left = left - 1
    local res, err = fetch(url)
    if res and res.status == 200 and #res.body == 1024 then
      got = got + 1
    elseif not res then
      io.stderr:write(err, "\n")
    end
  end
end
local workers = {}
for i = 1, conc do workers[i] = worker end
local c0, t0 = os.clock(), now()
gather(workers)
B.result({ok = got == n, n = n, got = got, elapsed = now() - t0, cpu = os.clock() - c0})
