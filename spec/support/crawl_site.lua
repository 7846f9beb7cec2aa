-- Writes the generated site the crawl specs crawl, served by
-- spec/support/site_server.py (python3's http.server), and starts and
-- stops those servers.
--
-- The site: /index.html; a binary tree /p/1.html ... /p/N.html (page i
-- links to its children 2i and 2i+1, its parent, the index, itself with a
-- fragment, and a missing page for i = 3); /docs/ (four pages); pages
-- robots.txt blocks or allows; /files/ (not HTML); links to another
-- origin, mailto: and javascript:.
local S = {}

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function page(title, links, extra)
  local t = {"<!DOCTYPE html>\n<html><head><meta charset=utf-8><title>", title,
             "</title></head>\n<body><h1>", title, "</h1>\n<ul>\n"}
  for _, l in ipairs(links) do
    t[#t + 1] = ('<li><a href="%s">%s</a>\n'):format(l, l)
  end
  t[#t + 1] = "</ul>" .. (extra or "") .. "\n</body></html>\n"
  return table.concat(t)
end

S.ROBOTS = [[
# a robots.txt with a group for someone else, a generic group and ours
User-agent: otherbot
Disallow: /

User-agent: *
Disallow: /private/
Disallow: /docs/b.html

User-agent: asynchost
Disallow: /private/
Allow: /private/open.html
Disallow: /secret/
Disallow: /*.pdf$
]]

-- Writes the site into dir with a tree of n pages; other_origin (may be
-- nil) is linked from the index. Returns nothing; see the paths above.
function S.write(dir, n, other_origin)
  os.execute("mkdir -p " .. dir .. "/p " .. dir .. "/docs/sub " .. dir .. "/private "
             .. dir .. "/secret " .. dir .. "/files")
  write(dir .. "/robots.txt", S.ROBOTS)
  write(dir .. "/index.html", page("Home", {
    "/p/1.html", "docs/index.html", "/private/a.html", "/private/open.html",
    "/secret/x.html", "/files/data.txt", "/files/report.pdf", "/files/report.pdf.html",
    "mailto:someone@example.com", "javascript:void(0)", "#top",
    other_origin and (other_origin .. "/ext.html") or "/index.html",
  }))
  for i = 1, n do
    local links = {}
    if 2 * i <= n then links[#links + 1] = (2 * i) .. ".html" end
    if 2 * i + 1 <= n then links[#links + 1] = "/p/" .. (2 * i + 1) .. ".html" end
    if i > 1 then links[#links + 1] = "../p/" .. (i // 2) .. ".html" end
    links[#links + 1] = "/index.html"
    links[#links + 1] = i .. ".html#section"
    if i == 3 then links[#links + 1] = "missing.html" end
    write(("%s/p/%d.html"):format(dir, i), page("Page " .. i, links))
  end
  write(dir .. "/docs/index.html",
        page("Docs", {"a.html", "b.html", "sub/c.html", "../index.html", "/p/1.html"}))
  write(dir .. "/docs/a.html", page("Docs A", {"index.html", "b.html"}))
  write(dir .. "/docs/b.html", page("Docs B", {"a.html", "sub/c.html"}))
  write(dir .. "/docs/sub/c.html", page("Docs C", {"../index.html", "../../p/2.html"}))
  write(dir .. "/private/a.html", page("Private A", {}))
  write(dir .. "/private/open.html", page("Private open", {"a.html"}))
  write(dir .. "/secret/x.html", page("Secret", {}))
  write(dir .. "/files/data.txt", "not html <a href='/p/2.html'>\n")
  write(dir .. "/files/report.pdf", "%PDF-1.4\n")
  write(dir .. "/files/report.pdf.html", page("Report", {}))
  write(dir .. "/ext.html", page("External", {"/index.html"}))
end

-- The depth of /p/i.html below /p/1.html.
function S.tree_depth(i)
  local d = 0
  while i > 1 do
    i = i // 2
    d = d + 1
  end
  return d
end

local function slurp(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
S.slurp = slurp

-- Starts site_server.py on dir; returns {origin=, log=, pid=, stop=}.
function S.start(dir, tmp, name, delay)
  local port_file = tmp .. "/" .. name .. ".port"
  local log = tmp .. "/" .. name .. ".log"
  local pid_file = tmp .. "/" .. name .. ".pid"
  os.remove(port_file)
  os.remove(log)
  assert(os.execute(("/usr/bin/python3 spec/support/site_server.py --dir %s --port-file %s "
                     .. "--log %s --delay %s >%s.out 2>&1 & echo $! >%s")
                    :format(dir, port_file, log, delay or 0, log, pid_file)))
  local port
  for _ = 1, 200 do
    port = slurp(port_file)
    if port then break end
    require("asynchost").sleep(0.025)
  end
  assert(port, "site_server.py did not start: " .. (slurp(log .. ".out") or ""))
  local srv = {origin = "http://127.0.0.1:" .. port, log = log, pid = slurp(pid_file):match("%d+")}
  function srv.stop() os.execute("kill " .. srv.pid .. " 2>/dev/null") end
  -- the request log as a list of {t0, t1, method, path, status}
  function srv.requests()
    local out = {}
    for line in (slurp(log) or ""):gmatch("[^\n]+") do
      local t0, t1, m, p, st = line:match("^(%S+) (%S+) (%S+) (%S+) (%S+)$")
      out[#out + 1] = {t0 = tonumber(t0), t1 = tonumber(t1), method = m, path = p,
                       status = tonumber(st)}
    end
    return out
  end
  function srv.clear_log()
    local f = assert(io.open(log, "w"))
    f:close()
  end
  return srv
end

return S
