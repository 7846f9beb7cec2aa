-- bench case 2, asynchost side: fetch N delayed pages, CONC at once, and
-- take each page's title with html.parse.
--   asynchost bench/cases/crawl_latency.lua BASE N CONC
local B = dofile(arg[0]:match("^(.*)/") .. "/common.lua")
local base, n, conc = arg[1], tonumber(arg[2]), tonumber(arg[3])

local urls = {}
for i = 1, n do urls[i] = base .. i end
local c0, t0 = os.clock(), now()
local titles, errs = gather(urls, function(url)
  local res, err = fetch(url, {timeout = 30})
  if not res then return nil, err end
  if res.status ~= 200 then return nil, "http: status " .. res.status end
  return html.parse(res.body):title()
end, {limit = conc, settle = true})
local elapsed, cpu = now() - t0, os.clock() - c0
local ok = true
for i = 1, n do
  if titles[i] ~= "Page " .. i then
    ok = false
    io.stderr:write(urls[i], ": ", tostring(titles[i] or errs[i]), "\n")
    break
  end
end
B.result({ok = ok, n = n, elapsed = elapsed, cpu = cpu})
