-- html.parse (libxml2's HTML parser), CSS selectors, XPath, links, and
-- the url module (libcurl's URL API).
local ah = require("asynchost")
local H = require("spec.support.helper")
local html, url = ah.html, ah.url

local function texts(nodes)
  local t = {}
  for i, n in ipairs(nodes) do t[i] = n:text() end
  return t
end

local function tags(nodes)
  local t = {}
  for i, n in ipairs(nodes) do t[i] = n.tag end
  return t
end

-- A page shaped like a real one: doctype, scripts with markup in strings,
-- comments, conditional comments, inline SVG, forms, a table without
-- tbody, implied end tags, entities, and links of every kind.
local PAGE = [[<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>
    News &amp; Views — Front page
  </title>
  <link rel="stylesheet" href="/static/site.css">
  <script>var s = "<a href='/not-a-link'>"; if (a < b && c > d) {}</script>
  <!--[if lt IE 9]><script src="/ie.js"></script><![endif]-->
</head>
<body class="home page">
  <header id="top"><nav class="menu main">
    <ul>
      <li class="item first"><a href="/">Home</a>
      <li class="item"><a href="/news/">News</a>
      <li class="item last"><a href="/about#team" title='Say "hi"'>About</a>
    </ul>
  </nav></header>
  <!-- <a href="/commented-out">no</a> -->
  <main>
    <article data-id="42" class="story">
      <h2><a href="stories/42.html?utm=x#comments">Story one</a></h2>
      <p>First paragraph<p>Second paragraph with <b>bold <i>nested</b> text</i>
      <img src="/img/1.png" alt="">
    </article>
    <article data-id="43" class="story featured">
      <h2><a href="stories/43.html">Story two</a></h2>
      <svg width="10" height="10"><title>icon</title><circle r="4"/></svg>
    </article>
    <table class="scores">
      <tr><th>Team<th>Score
      <tr><td>A<td>1
      <tr><td>B<td>2
    </table>
    <form action="/search"><input name="q" disabled><button>Go</button></form>
  </main>
  <footer>
    <a href="mailto:editor@example.com">Mail</a>
    <a href="javascript:void(0)">Menu</a>
    <a href="tel:+123">Call</a>
    <a href="ftp://files.example.com/x">FTP</a>
    <a href="  https://Partner.EXAMPLE.org:443/p?q=1  ">Partner</a>
    <a href="//cdn.example.net/lib">CDN</a>
    <a href="../up.html">Up</a>
    <a href="/news/">News again</a>
    <a href="#top">Back to top</a>
    <a>No href</a>
    <area href="/map/area">
  </footer>
</body>
</html>]]

local BASE = "http://www.example.com/section/index.html"

describe("html.parse", function()
  after_each(function() H.assert_clean() end)

  it("gives the title with white space collapsed and entities decoded", function()
    assert.equal("News & Views — Front page", html.parse(PAGE):title())
  end)

  it("returns nil for the title of a page without one", function()
    assert.is_nil(html.parse("<p>no title</p>"):title())
  end)

  it("parses an empty string into an empty document", function()
    local doc = html.parse("")
    assert.is_nil(doc:title())
    assert.same({}, doc:links("http://x.org/"))
    assert.same({}, doc:select("p"))
    assert.is_nil(doc:root())
  end)

  it("recovers from unclosed tags, stray end tags and bad nesting", function()
    local doc = html.parse("<div><p>one<p>two</span><ul><li>a<li>b</ul><b><i>x</b>y</i>")
    assert.same({"one", "two"}, texts(doc:select("div > p")))
    assert.same({"a", "b"}, texts(doc:select("ul > li")))
    assert.equal(1, #doc:select("div"))
  end)

  it("keeps unknown entities as text and decodes known ones", function()
    local doc = html.parse("<p>a &amp; b &bogus; c &lt;d&gt; &#233;&#x41; &nbsp;</p>")
    assert.equal("a & b &bogus; c <d> éA \u{a0}", doc:select("p")[1]:text())
  end)

  it("survives binary garbage and NUL bytes", function()
    local junk = {}
    for i = 0, 4095 do junk[#junk + 1] = string.char((i * 37 + 11) % 256) end
    local doc = html.parse("<p>ok</p>" .. table.concat(junk) .. "\0<a href='/x'>x</a>")
    assert.equal("ok", doc:select("p")[1]:text())
    assert.is_table(doc:links("http://h.org/"))
  end)

  it("detects Latin-1 input that declares no charset", function()
    local doc = html.parse("<html><body><p>caf\xe9 na\xefve</p></body></html>")
    assert.equal("café naïve", doc:select("p")[1]:text())
  end)

  it("uses a charset declared in a meta tag", function()
    local doc = html.parse("<meta charset=windows-1252><p>\x93quoted\x94 \x80</p>")
    assert.equal("“quoted” €", doc:select("p")[1]:text())
  end)

  it("lets opts.encoding (a charset or a Content-Type value) override the document", function()
    local latin = "<meta charset=utf-8><p>\xe9t\xe9</p>"
    assert.equal("été", html.parse(latin, {encoding = "iso-8859-1"}):select("p")[1]:text())
    assert.equal("été", html.parse(latin, {encoding = 'text/html; charset="ISO-8859-1"'})
                          :select("p")[1]:text())
    -- an unknown charset falls back to what the document says
    assert.equal("été", html.parse("<p>\xc3\xa9t\xc3\xa9</p>", {encoding = "x-no-such"})
                          :select("p")[1]:text())
  end)

  it("builds an HTML4-style tree: implied html/head/body but no tbody", function()
    local doc = html.parse(PAGE)
    assert.equal(3, #doc:select("table.scores > tr"))
    assert.same({}, doc:select("table > tbody"))
    assert.equal("html", doc:root().tag)
    assert.same({"head", "body"}, tags(html.parse("<title>t</title><p>x"):select("html > *")))
  end)

  it("raises on misuse", function()
    assert.has_error(function() html.parse() end)
    assert.has_error(function() html.parse({}) end)
    assert.has_error(function() html.parse("<p>", 42) end)
    assert.has_error(function() html.parse("<p>", {encoding = {}}) end)
    assert.has_error(function() html.parse("<p>", {base_url = 42}) end, "html.parse: opts.base_url must be a string")
  end)
end)

describe("doc:select", function()
  local doc
  before_each(function() doc = html.parse(PAGE) end)
  after_each(function() H.assert_clean() end)

  it("matches tags, ids, classes and the universal selector", function()
    assert.equal(2, #doc:select("article"))
    assert.equal(2, #doc:select("ARTICLE"))
    assert.same({"header"}, tags(doc:select("#top")))
    assert.same({"nav"}, tags(doc:select("nav.menu.main")))
    assert.same({"43"}, {doc:select(".story.featured")[1]:attr("data-id")})
    assert.equal(#doc:xpath("//*"), #doc:select("*"))
  end)

  it("matches attribute presence, =, ^=, $=, *=, ~= and |=", function()
    assert.same({"42", "43"}, {doc:select("[data-id]")[1]:attr("data-id"),
                               doc:select("[data-id]")[2]:attr("data-id")})
    assert.same({"Story two"}, texts(doc:select("a[href='stories/43.html']")))
    assert.same({"Story one", "Story two"}, texts(doc:select("a[href^=stories]")))
    assert.same({"Story two", "Up"}, texts(doc:select("a[href$=\".html\"]")))
    assert.same({"Story one"}, texts(doc:select("a[href*='utm=']")))
    assert.same({"Home"}, texts(doc:select("li[class~=first] a")))
    assert.same({"en"}, {doc:select("[lang|=en]")[1]:attr("lang")})
    assert.same({}, doc:select("a[href^='']"))
    assert.same({"About"}, texts(doc:select([[a[title='Say "hi"'] ]])))
  end)

  it("follows descendant, child and sibling combinators", function()
    assert.same({"Home", "News", "About"}, texts(doc:select("nav a")))
    assert.same({}, doc:select("nav > a"))
    assert.same({"Story one", "Story two"}, texts(doc:select("article > h2 > a")))
    local p = doc:select("p + p")
    assert.equal(1, #p)
    assert.equal("Second paragraph with bold nested text", p[1]:text():match("^(.-)%s*$"))
    assert.same({"th", "th"}, tags(doc:select("tr:first-child > *")))
    assert.same({"B"}, texts(doc:select("tr ~ tr:last-child > td:first-child")))
  end)

  it("supports :first-child, :last-child, :only-child, :nth-child(n) and :empty", function()
    assert.same({"Home"}, texts(doc:select("li:first-child > a")))
    assert.same({"About"}, texts(doc:select("li:last-child > a")))
    assert.same({"News"}, texts(doc:select("li:nth-child(2) a")))
    assert.same({"ul"}, tags(doc:select("nav > :only-child")))
    assert.same({"img", "circle", "input"}, tags(doc:select("main :empty")))
    assert.same({"p"}, tags(html.parse("<p><!-- only a comment --></p><p> </p>"):select(":empty")))
  end)

  it("returns a list of selectors in document order, each node once", function()
    assert.same({"h2", "h2", "table", "form"}, tags(doc:select("form, table, h2, article > h2")))
  end)

  it("selects what soupsieve (BeautifulSoup's CSS engine) selects on the same tree", function()
    local sels = {"a", "li a", "nav > ul > li", "li.item", ".story.featured", "#top",
                  "[data-id]", "a[href^='/']", "a[href$='.html']", "a[href*=example]",
                  "li[class~=last]", "html[lang|=en]", "h2 + p", "p ~ img",
                  "tr > td:first-child", "td:last-child", "li:nth-child(2)", ":empty",
                  "svg > *", "form *", "a, area", "body > * > *", "ul:only-child",
                  "*:first-child > a", "[title]", [[a[title='Say "hi"'] ]], "td ~ td",
                  "tr + tr td", "main article:last-child h2", "ARTICLE.story"}
    local page, list = os.tmpname(), os.tmpname()
    local f = assert(io.open(page, "w"))
    f:write(PAGE)
    f:close()
    f = assert(io.open(list, "w"))
    f:write(table.concat(sels, "\n"), "\n")
    f:close()
    -- bs4 with the "lxml" tree builder gets libxml2's tree, so this compares
    -- only the selector engines: ours (CSS -> XPath) and soupsieve
    local py = [[
import sys, bs4
s = bs4.BeautifulSoup(open(sys.argv[1]).read(), "lxml")
every = s.find_all(True)
for sel in open(sys.argv[2]).read().splitlines():
    print(" ".join(str(next(i for i, e in enumerate(every) if e is g)) for g in s.select(sel)))
]]
    local pipe = assert(io.popen("/usr/bin/python3 -c " .. H.shell_quote(py) .. " " .. page .. " " .. list))
    local theirs = {}
    for line in pipe:lines() do theirs[#theirs + 1] = line end
    pipe:close()
    os.remove(page)
    os.remove(list)
    assert.equal(#sels, #theirs)
    local doc = html.parse(PAGE)
    local every = doc:xpath("//*")
    for i, sel in ipairs(sels) do
      local idx = {}
      for _, n in ipairs(doc:select(sel)) do
        for j, m in ipairs(every) do
          if m == n then
            idx[#idx + 1] = j - 1
            break
          end
        end
      end
      assert.equal(theirs[i], table.concat(idx, " "), sel)
    end
  end)

  it("selects relative to a node", function()
    local second = doc:select("article")[2]
    assert.same({"Story two"}, texts(second:select("a")))
    assert.same({"h2", "svg"}, tags(second:select("> *")))
    assert.same({"svg"}, tags(second:select("h2 + svg")))
    assert.same({"article"}, tags(doc:select("article")[1]:select("+ article")))
    assert.same({}, second:select("~ article"))
  end)

  it("raises a clear error for an invalid or unsupported selector", function()
    for _, bad in ipairs({"", " ", "div >", "p,", ",p", "..x", "#", "[x", "[x=]",
                          "a:hover", "::before", "a[x=y i]", "1a", "a!b", "[x='y]"}) do
      local ok, err = pcall(doc.select, doc, bad)
      assert.is_false(ok, bad)
      assert.matches("html: invalid selector '", err, 1, true)
    end
    local _, err = pcall(doc.select, doc, "div >")
    assert.matches("expected a selector after a combinator at position 6", err, 1, true)
    _, err = pcall(doc.select, doc, "a:hover")
    assert.matches("unsupported pseudo-class ':hover'", err, 1, true)
    assert.has_error(function() doc:select() end)
  end)

  it("refuses a control character in a name or value it cannot match",
    function()
    -- found by fuzz/fuzz_html_select: the XPath made of it did not parse
    for _, bad in ipairs({".\\1 x", "[title=\"a\1b\"]", "#\\1f", "\\2 "}) do
      local ok, err = pcall(doc.select, doc, bad)
      assert.is_false(ok, bad)
      assert.matches("html: invalid selector '.-': a control character "
        .. "cannot be matched", err)
    end
    assert.same({}, doc:select("[title='a\tb']"))
  end)
end)

describe("doc:xpath", function()
  local doc
  before_each(function() doc = html.parse(PAGE) end)
  after_each(function() H.assert_clean() end)

  it("returns element nodes as nodes, and text and attributes as strings", function()
    assert.same({"h2", "h2"}, tags(doc:xpath("//article/h2")))
    assert.same({"stories/42.html?utm=x#comments", "stories/43.html"},
                doc:xpath("//article//a/@href"))
    assert.same({"Story one"}, doc:xpath("//article[1]//a/text()"))
  end)

  it("returns numbers, strings and booleans for scalar expressions", function()
    assert.equal(2, doc:xpath("count(//article)"))
    assert.equal(math.type(2), math.type(doc:xpath("count(//article)")))
    assert.equal(0.5, doc:xpath("1 div 2"))
    assert.equal("42", doc:xpath("string(//article/@data-id)"))
    assert.is_true(doc:xpath("count(//table) = 1"))
  end)

  it("returns infinities, NaN and huge numbers as floats", function()
    -- found by fuzz/fuzz_html_select: the integer test cast them first
    assert.equal(math.huge, doc:xpath("count(//*) div 0"))
    assert.equal(-math.huge, doc:xpath("-1 div 0"))
    local nan = doc:xpath("0 div 0")
    assert.is_true(nan ~= nan)
    assert.equal("float", math.type(doc:xpath("100000000000000000000 * 3")))
  end)

  it("evaluates relative to a node", function()
    local art = doc:select("article")[1]
    assert.equal("42", art:xpath("string(@data-id)"))
    assert.equal(2, art:xpath("count(.//p)"))
  end)

  it("raises on a bad expression, naming it and the reason", function()
    local ok, err = pcall(doc.xpath, doc, "//p[@x='a]")
    assert.is_false(ok)
    assert.matches("html: xpath: bad expression '//p[@x='a]': unfinished string", err, 1, true)
    ok, err = pcall(doc.xpath, doc, "nosuch(1)")
    assert.is_false(ok)
    assert.matches("unknown function", err, 1, true)
    assert.has_error(function() doc:xpath("//p[") end)
    assert.has_error(function() doc:xpath() end)
  end)
end)

describe("nodes", function()
  after_each(function() H.assert_clean() end)

  it("give their tag, text, attributes and outer HTML", function()
    local doc = html.parse(PAGE)
    local a = doc:select("li.last a")[1]
    assert.equal("a", a.tag)
    assert.equal("About", a:text())
    assert.equal("/about#team", a:attr("href"))
    assert.equal('Say "hi"', a:attr("title"))
    assert.is_nil(a:attr("rel"))
    assert.same({href = "/about#team", title = 'Say "hi"'}, a:attrs())
    assert.equal('<a href="/about#team" title=\'Say "hi"\'>About</a>', a:html())
    -- libxml2 gives a minimized boolean attribute its own name as value
    assert.equal("disabled", doc:select("input")[1]:attr("disabled"))
    assert.equal("<p>é &amp; &lt;x&gt;</p>", html.parse("<p>é &amp; &lt;x&gt;"):select("p")[1]:html())
  end)

  it("compare equal when they are the same element", function()
    local doc = html.parse(PAGE)
    assert.equal(doc:select("#top")[1], doc:select("header")[1])
    assert.not_equal(doc:select("article")[1], doc:select("article")[2])
  end)

  it("keep their document alive after the document is dropped", function()
    local nodes = html.parse(PAGE):select("article h2")
    collectgarbage()
    collectgarbage()
    assert.same({"Story one", "Story two"}, texts(nodes))
  end)

  it("raise once their document is closed", function()
    local doc = html.parse(PAGE)
    local a = doc:select("a")[1]
    do
      local d <close> = doc
    end
    assert.has_error(function() return a:text() end, nil)
    local ok, err = pcall(function() return a.tag end)
    assert.is_false(ok)
    assert.matches("document is closed", err)
    ok, err = pcall(doc.title, doc)
    assert.is_false(ok)
    assert.matches("html: the document is closed", err, 1, true)
    doc:close() -- closing twice is harmless
  end)

  it("serialize the whole document", function()
    local s = html.parse("<title>t</title><p>x"):html()
    assert.matches("<html><head><title>t</title></head><body><p>x</p></body></html>", s, 1, true)
  end)
end)

describe("doc:links", function()
  after_each(function() H.assert_clean() end)

  it("returns absolute http(s) URLs in document order, without fragments, each once", function()
    local doc = html.parse(PAGE, BASE)
    assert.same({
      "http://www.example.com/",
      "http://www.example.com/news/",
      "http://www.example.com/about",
      "http://www.example.com/section/stories/42.html?utm=x",
      "http://www.example.com/section/stories/43.html",
      "https://partner.example.org/p?q=1",
      "http://cdn.example.net/lib",
      "http://www.example.com/up.html",
      "http://www.example.com/section/index.html",
      "http://www.example.com/map/area",
    }, doc:links())
  end)

  it("agree with Python's html.parser and urljoin on the same page", function()
    local tmp = os.tmpname()
    local f = assert(io.open(tmp, "w"))
    f:write(PAGE)
    f:close()
    local py = [[
import sys, html.parser, urllib.parse
class P(html.parser.HTMLParser):
    def __init__(s): super().__init__(); s.out = []
    def handle_starttag(s, tag, attrs):
        if tag in ("a", "area"):
            for k, v in attrs:
                if k == "href" and v is not None:
                    u = urllib.parse.urljoin(sys.argv[2], v.strip())
                    u = urllib.parse.urldefrag(u)[0]
                    p = urllib.parse.urlsplit(u)
                    if p.scheme in ("http", "https"):
                        host = p.hostname + ("" if p.port in (None, 80, 443) else ":%d" % p.port)
                        u = urllib.parse.urlunsplit((p.scheme, host, p.path or "/", p.query, ""))
                        if u not in s.out: s.out.append(u)
p = P(); p.feed(open(sys.argv[1]).read()); print("\n".join(p.out))
]]
    local pyf = os.tmpname()
    f = assert(io.open(pyf, "w"))
    f:write(py)
    f:close()
    local pipe = assert(io.popen("/usr/bin/python3 " .. pyf .. " " .. tmp .. " " .. BASE))
    local expected = {}
    for line in pipe:lines() do expected[#expected + 1] = line end
    pipe:close()
    os.remove(tmp)
    os.remove(pyf)
    assert.is_true(#expected >= 9)
    assert.same(expected, html.parse(PAGE, BASE):links())
  end)

  it("uses <base href>, resolved against the document's URL", function()
    local doc = html.parse('<base href="/docs/v2/"><a href="intro.html">i</a><a href="../v1/">o</a>',
                           {base_url = "https://h.org/a/b.html"})
    assert.same({"https://h.org/docs/v2/intro.html", "https://h.org/docs/v1/"}, doc:links())
  end)

  it("prefers the base passed to links() over <base href>", function()
    local doc = html.parse('<base href="http://ignored.org/"><a href="x">x</a>')
    assert.same({"http://given.org/dir/x"}, doc:links("http://given.org/dir/page"))
  end)

  it("keeps only absolute links when there is no base at all", function()
    local doc = html.parse('<a href="rel.html">r</a><a href="http://abs.org/x">a</a>')
    assert.same({"http://abs.org/x"}, doc:links())
  end)

  it("de-duplicates links that differ only by fragment, host case or default port", function()
    local doc = html.parse([[<a href="/p#a">1</a><a href="/p#b">2</a>
      <a href="HTTP://H.ORG:80/p">3</a><a href="http://h.org/p">4</a><a href="/q">5</a>]])
    assert.same({"http://h.org/p", "http://h.org/q"}, doc:links("http://h.org/"))
  end)

  it("resolves white space, spaces and non-ASCII in hrefs", function()
    local doc = html.parse('<a href="\n  a b.html\t">x</a><a href="caf\xc3\xa9/?q=a b">y</a>')
    assert.same({"http://h.org/d/a%20b.html", "http://h.org/d/caf%c3%a9/?q=a+b"},
                doc:links("http://h.org/d/"))
  end)
end)

describe("a large document", function()
  local big
  setup(function()
    local parts = {"<html><head><title>big page</title></head><body>"}
    local row = '<div class="row"><a href="/p/%d.html#x">link %d</a> filler text to make it longer</div>\n'
    local i = 0
    repeat
      i = i + 1
      parts[#parts + 1] = row:format(i % 1000, i)
    until i >= 130000
    parts[#parts + 1] = "</body></html>"
    big = table.concat(parts)
  end)
  after_each(function() H.assert_clean() end)

  it("of 10 MB parses on the thread pool while other tasks keep running", function()
    assert.is_true(#big > 10 * 1024 * 1024)
    local ticks, done = 0, false
    local ticker = spawn(function()
      while not done do
        sleep(0.001)
        ticks = ticks + 1
      end
    end)
    local doc = html.parse(big, "http://big.example/")
    done = true
    ticker:wait()
    assert.is_true(ticks >= 3, "the loop was blocked: " .. ticks .. " ticks")
    assert.equal("big page", doc:title())
    assert.equal(130000, #doc:select("div.row"))
    local links = doc:links()
    assert.equal(1000, #links)
    assert.equal("http://big.example/p/1.html", links[1])
  end)

  it("is abandoned cleanly when its task is cancelled mid-parse", function()
    local t = spawn(function() return html.parse(big) end)
    sleep(0)
    assert.equal(1, ah.stats()["html.parse"])
    t:cancel()
    local ok, err = pcall(t.wait, t)
    assert.is_false(ok)
    assert.matches("^cancelled", err)
    -- assert_clean waits for the pool thread to finish and free the tree
  end)

  it("cannot be parsed where the caller cannot suspend", function()
    local ok, err = pcall(table.sort, {1, 2}, function()
      html.parse(big)
      return false
    end)
    assert.is_false(ok)
    assert.matches("html.parse", err, 1, true)
  end)
end)

describe("url", function()
  after_each(function() H.assert_clean() end)

  it("parses a URL into its parts", function()
    assert.same({scheme = "https", user = "u", password = "p", host = "Ex.com", port = 8443,
                 path = "/a/b", query = "c=d", fragment = "e"},
                url.parse("https://u:p@Ex.com:8443/a/b?c=d#e"))
    local p = url.parse("http://example.org")
    assert.equal(80, p.port)
    assert.equal("/", p.path)
    assert.is_nil(p.query)
    assert.equal("postgres", url.parse("postgres://h/db").scheme)
  end)

  it("returns nil and an error for a bad URL", function()
    local p, err = url.parse("not a url")
    assert.is_nil(p)
    assert.matches("^http: bad URL 'not a url'", err)
    assert.is_nil((url.parse("http://")))
    assert.is_nil((url.resolve("relative", "x")))
    assert.is_nil((url.normalize("http://bad host/")))
  end)

  it("resolves references as RFC 3986 does", function()
    local b = "http://a/b/c/d;p?q"
    for ref, want in pairs({["g"] = "http://a/b/c/g", ["./g"] = "http://a/b/c/g",
                            ["g/"] = "http://a/b/c/g/", ["/g"] = "http://a/g",
                            ["//g"] = "http://g/", ["?y"] = "http://a/b/c/d;p?y",
                            ["g?y"] = "http://a/b/c/g?y", ["#s"] = "http://a/b/c/d;p?q#s",
                            [""] = "http://a/b/c/d;p?q", [".."] = "http://a/b/",
                            ["../g"] = "http://a/b/g", ["../../../g"] = "http://a/g"}) do
      assert.equal(want, url.resolve(b, ref), ref)
    end
  end)

  it("normalizes case, default ports and dot segments", function()
    assert.equal("http://example.com/a/c", url.normalize("HTTP://Example.COM:80/a/./b/../c"))
    assert.equal("https://example.com:8443/", url.normalize("https://EXAMPLE.com:8443"))
  end)

  it("refuses a host with %7f, which curl would decode but not read back",
    function()
    -- found by fuzz/fuzz_url: normalize gave a URL it then refused
    for _, u in ipairs{"http://a%7fb/", "HTTP://A%7Fb/x"} do
      local n, err = url.normalize(u)
      assert.is_nil(n)
      assert.matches("Bad hostname", err)
      assert.is_nil((url.parse(u)))
      assert.is_nil((url.resolve("http://x/", u)))
    end
    local doc = html.parse('<a href="http://a%7fb/">x</a><a href="/ok">y</a>')
    assert.same({"http://h/ok"}, doc:links("http://h/"))
    assert.same({}, doc:links("http://a%7fb/"))
  end)

  it("raises on misuse", function()
    assert.has_error(function() url.parse() end)
    assert.has_error(function() url.resolve("http://a/") end)
    assert.has_error(function() url.normalize({}) end)
  end)
end)
