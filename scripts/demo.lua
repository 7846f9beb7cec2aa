-- asynchost scripts/demo.lua  (or: make demo)
--
-- The offline demo: serves a generated 200-page site with asynchost's own
-- http.server on 127.0.0.1 (each page takes 20 ms, like a real server),
-- then crawls it with the same crawler as scripts/crawl.lua — in the same
-- process, on the same event loop — printing each page's title and a
-- summary. Needs no network.
local ah = require("asynchost")
local crawl = require("asynchost.crawl")

local SECTIONS = {"Tasks", "Timers", "Fetching", "Parsing HTML", "JSON", "PostgreSQL",
                  "Servers", "Processes", "Files", "Deployment"}
local VERBS = {"Retrying", "Cancelling", "Batching", "Streaming", "Caching", "Timing",
               "Limiting", "Logging", "Testing", "Measuring", "Pooling", "Sharding",
               "Paging", "Tracing", "Draining", "Scheduling", "Gathering", "Throttling",
               "Resuming"}
local RECIPES = 189 -- + 10 section pages + the home page = 200 pages
local PAGE_DELAY = 0.02

local function section_of(i) return (i - 1) % #SECTIONS + 1 end
local function recipe_title(i)
  return ("Recipe %d: %s %s"):format(i, VERBS[(i * 7) % #VERBS + 1], SECTIONS[section_of(i)]:lower())
end

local function page(title, body_links, extra)
  local t = {"<!DOCTYPE html><html><head><meta charset=utf-8><title>", title,
             " — the asynchost cookbook</title></head><body><h1>", title, "</h1><ul>"}
  for _, l in ipairs(body_links) do
    t[#t + 1] = ('<li><a href="%s">%s</a></li>'):format(l[1], l[2])
  end
  t[#t + 1] = "</ul>" .. (extra or "") .. "</body></html>"
  return table.concat(t)
end

local app = ah.http.server()
app:use(function(req, next)
  ah.sleep(PAGE_DELAY) -- a server that takes its time, as real ones do
  return next()
end)
app:get("/robots.txt", function()
  return 200, "User-agent: *\nDisallow: /drafts/\n", {["content-type"] = "text/plain"}
end)
app:get("/", function()
  local links = {}
  for k, name in ipairs(SECTIONS) do links[k] = {"/s/" .. k .. "/", name} end
  links[#links + 1] = {"https://www.lua.org/manual/5.4/", "The Lua manual (another site: not crawled)"}
  links[#links + 1] = {"mailto:cook@example.invalid", "Write to us"}
  return page("Home", links)
end)
app:get("/s/:k/", function(req)
  local k = tonumber(req.params.k)
  if not SECTIONS[k] then return 404, "no such section" end
  local links = {{"/", "Home"}}
  for i = k, RECIPES, #SECTIONS do links[#links + 1] = {tostring(i) .. ".html", recipe_title(i)} end
  return page(SECTIONS[k], links)
end)
app:get("/s/:k/:file", function(req)
  local k, i = tonumber(req.params.k), tonumber(req.params.file:match("^(%d+)%.html$"))
  if not (k and i and i >= 1 and i <= RECIPES and section_of(i) == k) then
    return 404, "no such recipe"
  end
  local function href(j) return ("/s/%d/%d.html"):format(section_of(j), j) end
  local links = {{"./", SECTIONS[k]}, {"/", "Home"},
                 {href(i % RECIPES + 1) .. "#steps", "Next"},
                 {href((i + 40) % RECIPES + 1), "Related"},
                 {"/drafts/" .. i .. ".html", "Draft (robots.txt says no)"}}
  return page(recipe_title(i), links, "<p>Step one: spawn a task.</p>")
end)

assert(app:listen({host = "127.0.0.1", port = 0}))
local base = "http://127.0.0.1:" .. app.port
print(("Serving a 200-page site at %s (%d ms per page); crawling it:"):format(base, PAGE_DELAY * 1000))

local ok, stats = pcall(crawl.run, {
  urls = {base .. "/"},
  concurrency = 16,
  depth = 10,
  on_page = function(rec)
    local title = rec.title and rec.title:gsub(" — the asynchost cookbook$", "")
    print(("  %s  %-18s  %s"):format(rec.status or "ERR", rec.url:sub(#base + 1),
                                     title or rec.error or ""))
  end,
})
app:close()
if not ok then
  io.stderr:write("demo: ", tostring(stats), "\n")
  os.exit(1)
end
print(crawl.summary(stats))
print(("One page at a time this would take at least %.1f s; 16 at once it took %.2f s."):format(
  stats.pages * PAGE_DELAY, stats.elapsed))
print("Next: asynchost scripts/crawl.lua --help   (docs/crawl.md)")
if stats.pages ~= 200 or stats.ok ~= 200 then
  io.stderr:write("demo: expected 200 pages\n")
  os.exit(1)
end
