-- fuzz_html_select: input "selector\0html" (without a NUL: the whole
-- input is the selector, on a small fixed page). A selector is either
-- translated and evaluated or refused with "html: invalid selector ...";
-- an XPath error from our own translation is a bug. The nodes found are
-- read every way a script can.

local PAGE = [[<!DOCTYPE html><html><head><title>T</title>
<base href="http://example.com/dir/"></head><body>
<div id="main" class="a b"><p class="x">one <b>two</b></p><p lang="en-US">3</p>
<ul><li>1</li><li class="last">2</li><li></li></ul>
<a href="/p?q=1#f">l</a><a href="mailto:x@y">m</a><area href="z.html">
<input type="text" name="n" value='v"w'><img src="i.png" alt="">
</div><!-- c --><table><tr><td>c</td></tr></table></body></html>]]

local function read_node(n, depth)
  assert(type(n.tag) == "string", "node.tag")
  assert(type(n:text()) == "string", "node:text()")
  assert(type(n:html()) == "string", "node:html()")
  local a = n:attr("class")
  assert(a == nil or type(a) == "string", "node:attr()")
  assert(type(n:attrs()) == "table", "node:attrs()")
  tostring(n)
  if depth < 1 then
    local ok, kids = pcall(n.select, n, "*")
    assert(ok and type(kids) == "table", "node:select('*')")
    for i = 1, math.min(#kids, 3) do read_node(kids[i], depth + 1) end
  end
end

local function run(doc, sel)
  local ok, res = pcall(doc.select, doc, sel)
  if ok then
    assert(type(res) == "table", "select: not a list")
    for i = 1, math.min(#res, 20) do read_node(res[i], 0) end
    local n = res[1]
    if n then
      local ok2, sub = pcall(n.select, n, sel)
      assert(ok2 or tostring(sub):match("^html: invalid selector"),
        "node:select: " .. tostring(sub))
      assert(not ok2 or type(sub) == "table", "node:select: not a list")
    end
  else
    assert(type(res) == "string" and res:match("^html: invalid selector"),
      "select raised: " .. tostring(res))
  end
  -- the same text as XPath: any error must be a clean "html: xpath" one
  ok, res = pcall(doc.xpath, doc, sel)
  assert(ok or (type(res) == "string" and res:match("^html: xpath")),
    "xpath raised: " .. tostring(res))
end

return function(s)
  local sel, page = s:match("^([^%z]*)%z(.*)$")
  if not sel then sel, page = s, PAGE end
  local doc = html.parse(page)
  assert(doc:title() == nil or type(doc:title()) == "string", "title")
  run(doc, sel)
  for _, l in ipairs(doc:links()) do assert(type(l) == "string", "links") end
  doc:close()
end
