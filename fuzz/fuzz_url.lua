-- fuzz_url: input "a\0b", a URL and a reference (b is empty without a
-- NUL). A bad URL is nil, "http: ..."; parts have the documented types;
-- normalizing twice changes nothing; doc:links() gives absolute http(s)
-- URLs only.

local function check(v, err, what)
  what = tostring(what)
  if v == nil then
    assert(type(err) == "string" and err:match("^http: "),
      what .. ": nil without an \"http: ...\" error")
    return nil
  end
  return v
end

local function check_parts(s)
  local p = check(url.parse(s))
  if not p then return end
  for _, k in ipairs{"scheme", "host", "path", "query", "fragment", "user",
                     "password"} do
    assert(p[k] == nil or type(p[k]) == "string", "parse: " .. k)
  end
  assert(p.port == nil or math.type(p.port) == "integer", "parse: port")
end

local function check_links(doc, base)
  for _, l in ipairs(doc:links(base)) do
    assert(type(l) == "string" and l:match("^https?://") and not l:find("#"),
      "links: " .. tostring(l))
  end
end

return function(s)
  local a, b = s:match("^([^%z]*)%z(.*)$")
  if not a then a, b = s, "" end
  check_parts(a)
  check_parts(b)
  local n, e = url.normalize(a)
  n = check(n, e, "normalize")
  if n then
    assert(type(n) == "string", "normalize: not a string")
    local n2, e2 = url.normalize(n)
    check(n2, e2, "normalize")
    assert(n2 == n, ("normalize is not idempotent: %q -> %q -> %q")
      :format(a, n, tostring(n2)))
  end
  local r, e3 = url.resolve(a, b)
  r = check(r, e3, "resolve")
  assert(r == nil or type(r) == "string", "resolve: not a string")
  local href = b:gsub("[\"&]", {['"'] = "&quot;", ["&"] = "&amp;"})
  local page = '<a href="' .. href .. '">x</a>'
  check_links(html.parse(page), a)
  check_links(html.parse(page, {base_url = a}))
  check_links(html.parse('<base href="' .. href .. '"><a href="x">y</a>',
    {base_url = a}))
end
