-- json: encode/decode with jansson, json.null, json.array; checked against
-- python3's json module and PostgreSQL's jsonb parser too.
local H = require("spec.support.helper")
local ah = require("asynchost")
local json = ah.json

local function fail_like(pattern, v, err)
  assert.is_nil(v)
  assert.is_string(err)
  assert.matches(pattern, err)
end

-- Runs a shell command (blocking the loop: fine for these tests).
local function sh(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, how, code = p:close()
  return out, ok, how, code
end

local function tmpfile(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

describe("json.encode", function()
  after_each(function() H.assert_clean() end)

  it("writes scalars", function()
    assert.equal("null", json.encode(nil))
    assert.equal("true", json.encode(true))
    assert.equal("false", json.encode(false))
    assert.equal("42", json.encode(42))
    assert.equal("-7", json.encode(-7))
    assert.equal('"hi"', json.encode("hi"))
    assert.equal('""', json.encode(""))
    assert.equal("null", json.encode(json.null))
  end)

  it("keeps 64-bit integers exact", function()
    assert.equal("9007199254740993", json.encode((1 << 53) + 1))
    assert.equal("9223372036854775807", json.encode(math.maxinteger))
    assert.equal("-9223372036854775808", json.encode(math.mininteger))
    assert.equal("[0,-1,1000000000000]", json.encode({0, -1, 1000000000000}))
  end)

  it("writes floats with %.17g so that they read back identical", function()
    assert.equal("0.10000000000000001", json.encode(0.1))
    assert.equal("3.0", json.encode(3.0))
    assert.equal("-0.0", json.encode(-0.0))
    assert.equal("9007199254740992.0", json.encode(2.0 ^ 53))
    assert.equal("-7.0", json.encode(-7.0))
    assert.equal("100000000000000.0", json.encode(1e14))
    assert.equal("1000000000000000.0", json.encode(1e15))
    assert.equal("1e17", json.encode(1e17))
    assert.equal("1.0000000000000001e300", json.encode(1e300))
    assert.equal("1.0000000000000001e-5", json.encode(1e-5))
    for _, x in ipairs({0.1, 1 / 3, 2 / 3, 1e300, -1e-300, 5e-324, 1.7976931348623157e308,
                        123456.789, -0.0, 2.0 ^ 60, 3.0}) do
      local back = json.decode(json.encode(x))
      assert.equal("float", math.type(back))
      assert.equal(x, back)
      assert.equal(1 / x, 1 / back) -- keeps the sign of zero
    end
  end)

  it("writes numbers the same in compact and in sorted or pretty output", function()
    local xs = {0, -1, math.maxinteger, math.mininteger, 0.1, 1e16, 1e17, 1e-7, 5e-324,
                -2.5, 1e300, 123456789012345678.0, 3.0, -7.0, 0.0, -0.0, 1e14, 1e15,
                999999999999999.0, -999999999999999.0, 2.0 ^ 52}
    for _, x in ipairs(xs) do
      assert.equal(json.encode(x), json.encode(x, {sort_keys = true}))
      assert.equal(json.encode({x}), json.encode({x}, {sort_keys = true}))
    end
  end)

  it("encodes an empty plain table as an object and a marked one as an array", function()
    assert.equal("{}", json.encode({}))
    assert.equal("[]", json.encode(json.array({})))
    assert.equal("[]", json.encode(json.array()))
    assert.equal('{"a":[],"b":{}}', json.encode({a = json.array({}), b = {}}, {sort_keys = true}))
  end)

  it("encodes a table with keys exactly 1..n as an array, others as objects", function()
    assert.equal("[1,2,3]", json.encode({1, 2, 3}))
    assert.equal('["a",{"b":true}]', json.encode({"a", {b = true}}))
    assert.equal('{"1":1,"2":2,"4":4}', json.encode({1, 2, nil, 4}, {sort_keys = true}))
    assert.equal('{"1":"a","x":2}', json.encode({"a", x = 2}, {sort_keys = true}))
    assert.equal('{"0":"z","1":"a"}', json.encode({[0] = "z", "a"}, {sort_keys = true}))
    assert.equal('{"-1":true}', json.encode({[-1] = true}))
    assert.equal('{"2":"b"}', json.encode({[2] = "b"}))
  end)

  it("encodes a sparse marked array with null in the holes", function()
    assert.equal("[1,null,3]", json.encode(json.array({1, nil, 3})))
    assert.equal("[null,null,\"c\"]", json.encode(json.array({[3] = "c"})))
    assert.equal("[null]", json.encode({json.null}))
  end)

  it("marks tables that have a metatable of their own, or __jsontype", function()
    local mt = {__index = function() return "x" end}
    local t = setmetatable({}, mt)
    assert.equal(t, json.array(t))
    assert.equal(mt, getmetatable(t)) -- left alone
    assert.equal("[]", json.encode(t))
    assert.equal("{}", json.encode(setmetatable({}, mt))) -- only t is marked
    local rows_mt = {__jsontype = "array", __index = {columns = {"a"}}}
    assert.equal("[]", json.encode(setmetatable({}, rows_mt)))
    assert.equal('[{"a":1}]', json.encode(setmetatable({{a = 1}}, rows_mt)))
  end)

  it("refuses a marked array with keys that are not positive integers", function()
    fail_like("^json: array has a key that is not a positive integer",
              json.encode(json.array({1, 2, x = 3})))
  end)

  it("refuses NaN and infinities, naming where they are", function()
    fail_like("^json: cannot encode NaN or infinity$", json.encode(0 / 0))
    fail_like("^json: cannot encode NaN or infinity at %.a$", json.encode({a = 1 / 0}))
    fail_like("^json: cannot encode NaN or infinity at %[2%]$", json.encode({1, -1 / 0}))
    fail_like("^json: cannot encode NaN or infinity at %.a%[2%]$",
              json.encode({a = {1, 0 / 0}}, {pretty = true}))
  end)

  it("refuses functions, threads and userdata other than json.null", function()
    fail_like("^json: cannot encode a function at %.a%.b%[3%]%.c$",
              json.encode({a = {b = {1, 2, {c = print}}}}))
    fail_like("^json: cannot encode a thread$", json.encode(coroutine.create(print)))
    fail_like("^json: cannot encode a userdata$", json.encode(io.stdout))
    fail_like("^json: cannot encode a userdata at %[1%]$", json.encode({io.stdout}, {indent = 1}))
  end)

  it("refuses keys that are neither strings nor integers", function()
    fail_like("^json: cannot encode a float key$", json.encode({[1.5] = 1}))
    fail_like("^json: cannot encode a boolean key$", json.encode({[true] = 1}))
    fail_like("^json: cannot encode a table key$", json.encode({[{}] = 1}))
    fail_like("^json: cannot encode a table key$", json.encode({[{}] = 1}, {sort_keys = true}))
  end)

  it("refuses strings and keys that are not UTF-8", function()
    fail_like("^json: string is not valid UTF%-8$", json.encode("\xff"))
    fail_like("^json: string is not valid UTF%-8 at %[1%]$", json.encode({"ok\xc3"}))
    fail_like("^json: string is not valid UTF%-8", json.encode("\xed\xa0\x80")) -- a surrogate
    fail_like("^json: string is not valid UTF%-8", json.encode("a\"\xff")) -- the escaping path
    fail_like("^json: table key is not valid UTF%-8$", json.encode({["\xff"] = 1}))
    fail_like("^json: table key is not valid UTF%-8$", json.encode({["\xff"] = 1}, {pretty = true}))
    fail_like("^json: string is not valid UTF%-8$", json.encode("\xff", {pretty = true}))
  end)

  it("stops at cycles and at nesting deeper than 2048", function()
    local t = {}
    t.self = t
    fail_like("^json: tables nested too deep %(a cycle%?%) at %.%.%.%.self", json.encode(t))
    local a = {}
    a[1] = a
    fail_like("^json: tables nested too deep", json.encode(a, {pretty = true}))
    local deep, cur = {}, nil
    cur = deep
    for _ = 2, 2048 do
      cur[1] = {}
      cur = cur[1]
    end
    local s = json.encode(deep)
    assert.equal(string.rep("[", 2047) .. "{}" .. string.rep("]", 2047), s)
    cur[1] = {}
    fail_like("^json: tables nested too deep", json.encode(deep))
  end)

  it("escapes quotes, backslashes and control characters and keeps UTF-8", function()
    assert.equal([["a\"b\\c\nd\te\r\b\f\u0001\u001F\u0000/"]],
                 json.encode("a\"b\\c\nd\te\r\b\f\1\31\0/"))
    assert.equal('"é😀 ü"', json.encode("é😀 ü"))
    assert.equal('{"ключ":"значение"}', json.encode({["ключ"] = "значение"}))
    assert.equal('{"a\\u0000b":1}', json.encode({["a\0b"] = 1}))
  end)

  it("escapes everything beyond ASCII with ascii = true", function()
    assert.equal([["\u00E9\uD83D\uDE00 x"]], json.encode("é😀 x", {ascii = true}))
    assert.equal([[{"\u00FC":"\u00E9"}]], json.encode({["ü"] = "é"}, {ascii = true}))
    assert.equal('"plain"', json.encode("plain", {ascii = true}))
  end)

  it("pretty-prints with pretty, indent and sort_keys", function()
    local v = {b = {1, 2}, a = {x = true}, c = json.array()}
    assert.equal('{\n  "a": {\n    "x": true\n  },\n  "b": [\n    1,\n    2\n  ],\n  "c": []\n}',
                 json.encode(v, {pretty = true, sort_keys = true}))
    assert.equal('{\n    "a": {\n        "x": true\n    },\n    "b": [\n        1,\n        2\n    ],\n    "c": []\n}',
                 json.encode(v, {indent = 4, sort_keys = true}))
    assert.equal('{"a":{"x":true},"b":[1,2],"c":[]}', json.encode(v, {sort_keys = true}))
    assert.equal('[\n 1\n]', json.encode({1}, {indent = 1}))
    assert.equal("[1]", json.encode({1}, {indent = 0}))
  end)

  it("keeps sort_keys order byte-wise", function()
    local t = {}
    for _, k in ipairs({"b", "a", "B", "aa", "10", "9", "é"}) do t[k] = 1 end
    assert.equal('{"10":1,"9":1,"B":1,"a":1,"aa":1,"b":1,"é":1}', json.encode(t, {sort_keys = true}))
  end)

  it("raises on misuse", function()
    assert.has_error(function() json.encode() end)
    assert.has_error(function() json.encode(1, "pretty") end)
    assert.has_error(function() json.encode(1, {indent = 32}) end)
    assert.has_error(function() json.encode(1, {indent = -1}) end)
    assert.has_error(function() json.encode(1, {indent = 1.5}) end)
    assert.has_error(function() json.array(3) end)
    assert.has_error(function() json.array("x") end)
  end)

  it("encodes a 20-field object quickly (generous bound)", function()
    local t = {}
    for i = 1, 20 do t["field" .. i] = i % 2 == 0 and ("value " .. i) or i end
    local n, t0 = 20000, os.clock()
    for _ = 1, n do json.encode(t) end
    local us = (os.clock() - t0) / n * 1e6
    assert.is_true(us < 200, ("%.1f us per encode"):format(us))
  end)
end)

describe("json.decode", function()
  after_each(function() H.assert_clean() end)

  it("reads scalars, with integers as integers and fractions as floats", function()
    assert.equal(3, json.decode("3"))
    assert.equal("integer", math.type(json.decode("3")))
    assert.equal("float", math.type(json.decode("3.0")))
    assert.equal(3.0, json.decode("3.0"))
    assert.equal("float", math.type(json.decode("3e0")))
    assert.equal(-2.5e-3, json.decode("-2.5e-3"))
    assert.equal(true, json.decode("true"))
    assert.equal(false, json.decode("false"))
    assert.equal("x", json.decode(' "x" '))
    assert.equal(json.null, json.decode("null"))
  end)

  it("keeps 64-bit integers exact", function()
    for _, n in ipairs({(1 << 53) + 1, math.maxinteger, math.mininteger, -(1 << 53) - 1}) do
      local back = json.decode(tostring(n))
      assert.equal("integer", math.type(back))
      assert.equal(n, back)
      assert.equal(n, json.decode(json.encode({n}))[1])
    end
  end)

  it("refuses integers beyond 64 bits and floats beyond double", function()
    fail_like("^json: too big integer", json.decode("9223372036854775808"))
    fail_like("^json: too big negative integer", json.decode("-9223372036854775809"))
    fail_like("^json: real number overflow", json.decode("1e400"))
  end)

  it("turns null into json.null in arrays, objects and at the top", function()
    local v = json.decode('[1, null, {"a": null}]')
    assert.equal(3, #v)
    assert.equal(json.null, v[2])
    assert.equal(json.null, v[3].a)
    assert.equal("null", tostring(json.null))
    assert.is_truthy(json.null)
    assert.equal('[1,null,{"a":null}]', json.encode(v))
  end)

  it("marks decoded arrays so empty ones stay arrays", function()
    assert.equal("[]", json.encode(json.decode("[]")))
    assert.equal('{"a":[],"b":{}}', json.encode(json.decode('{"a":[],"b":{}}'), {sort_keys = true}))
    assert.equal("[[],[[]]]", json.encode(json.decode("[[],[[]]]")))
  end)

  it("round-trips nested structures", function()
    local v = {
      name = "asynchost", version = 1, ratio = 0.25, tags = {"a", "b", "ü"},
      nested = {deep = {deeper = {list = {1, 2.5, "3", false}}}},
      empty_obj = {}, empty_arr = json.array(),
    }
    local back = json.decode(json.encode(v))
    assert.same(v, back)
    assert.equal(json.encode(v, {sort_keys = true}), json.encode(back, {sort_keys = true}))
    local pretty = json.encode(v, {pretty = true})
    assert.same(v, json.decode(pretty))
  end)

  it("decodes unicode escapes, surrogate pairs and NUL in strings", function()
    assert.equal("é", json.decode([["\u00e9"]]))
    assert.equal("😀", json.decode([["\ud83d\ude00"]]))
    assert.equal("a\0b", json.decode([["a\u0000b"]]))
    assert.equal("/\b\f\n\r\t\"\\", json.decode([["\/\b\f\n\r\t\"\\"]]))
    assert.equal("é", json.decode('"é"'))
  end)

  it("returns nil and json: with the line and column for bad input", function()
    local bad = {
      "[1,", "[1, 2", '{"a":', '{"a" 1}', "[1] x", "[1,]", '{"a":1,}', "",
      "   ", "nul", "'x'", "NaN", "Infinity", "[01]", "+1", "{a:1}", '"\\x"',
      '"unterminated', '"tab\tinside"',
    }
    for _, s in ipairs(bad) do
      fail_like("^json: .+ at line %d+ column %d+$", json.decode(s))
    end
    local _, err = json.decode("{\n  \"a\": 1,\n  \"b\": ]\n}")
    assert.matches("at line 3 column", err)
  end)

  it("refuses lone surrogates and bytes that are not UTF-8", function()
    fail_like("^json: invalid Unicode '\\uD800'", json.decode([["\ud800"]]))
    fail_like("^json: invalid Unicode", json.decode([["\udc00"]]))
    fail_like("^json: invalid Unicode", json.decode([["\ud800\u0041"]]))
    fail_like("^json: unable to decode byte 0xff", json.decode('"\xff"'))
    fail_like("^json: unable to decode byte", json.decode('["\xc3"]'))
  end)

  it("decodes nesting up to 2048 levels and refuses deeper", function()
    local ok = json.decode(string.rep("[", 2048) .. string.rep("]", 2048))
    assert.is_table(ok)
    assert.equal(string.rep("[", 2048) .. string.rep("]", 2048), json.encode(ok))
    fail_like("^json: maximum parsing depth reached",
              json.decode(string.rep("[", 2049) .. string.rep("]", 2049)))
  end)

  it("refuses NUL inside object keys (a jansson limit)", function()
    fail_like("^json: NUL byte in object key not supported", json.decode('{"a\\u0000b":1}'))
  end)

  it("raises on misuse", function()
    assert.has_error(function() json.decode() end)
    assert.has_error(function() json.decode(nil) end)
    assert.has_error(function() json.decode(3) end)
    assert.has_error(function() json.decode({}) end)
  end)
end)

describe("json against other implementations", function()
  after_each(function() H.assert_clean() end)

  it("writes what python3's json module reads back exactly", function()
    local v = {
      big = math.maxinteger, small = math.mininteger, odd = (1 << 53) + 1,
      f = 0.1, third = 1 / 3, tiny = 5e-324, neg0 = -0.0, three = 3.0,
      s = "é😀\n\"\\\1", list = {1, json.null, true}, empty = json.array(), obj = {},
    }
    local path = tmpfile(json.encode(v))
    local out = sh("/usr/bin/python3 -c " .. H.shell_quote([[
import json, sys, math
d = json.load(open(sys.argv[1]))
checks = [
  d["big"] == 9223372036854775807 and type(d["big"]) is int,
  d["small"] == -9223372036854775808,
  d["odd"] == 9007199254740993,
  d["f"] == 0.1 and d["third"] == 1/3 and d["tiny"] == 5e-324,
  d["neg0"] == 0.0 and math.copysign(1, d["neg0"]) == -1.0,
  d["three"] == 3.0 and type(d["three"]) is float,
  d["s"] == "\u00e9\U0001F600\n\"\\\x01",
  d["list"] == [1, None, True], d["empty"] == [], d["obj"] == {},
]
print(" ".join("ok" if c else "FAIL" for c in checks))
]]) .. " " .. path)
    os.remove(path)
    assert.equal(string.rep("ok ", 9) .. "ok\n", out)
  end)

  it("reads what python3's json module writes", function()
    local out = sh("/usr/bin/python3 -c " .. H.shell_quote([[
import json
print(json.dumps({"big": 2**63 - 1, "neg": -2**63, "f": 0.1, "e": 1e-300, "three": 3.0,
                  "s": "\u00e9\U0001F600\t", "n": None, "l": [], "o": {}}))
print(json.dumps("\u00e9\U0001F600", ensure_ascii=False))
]]))
    local line1, line2 = out:match("^(.-)\n(.-)\n$")
    local d = json.decode(line1)
    assert.equal(math.maxinteger, d.big)
    assert.equal(math.mininteger, d.neg)
    assert.equal(0.1, d.f)
    assert.equal(1e-300, d.e)
    assert.equal("float", math.type(d.three))
    assert.equal("é😀\t", d.s)
    assert.equal(json.null, d.n)
    assert.equal("[]", json.encode(d.l))
    assert.equal("{}", json.encode(d.o))
    assert.equal("é😀", json.decode(line2))
  end)

  it("writes what PostgreSQL's jsonb parser accepts as the same value", function()
    local pg = H.env("AH_TEST_PG")
    local v = {n = math.maxinteger, f = 0.1, s = "é'😀\n", a = {1, json.null, false}, o = {}}
    local path = tmpfile(json.encode(v))
    -- psql's :'j' quotes the file's text as an SQL literal (in a script, not -c)
    local sql = tmpfile([[select (:'j'::jsonb->>'n')::bigint = 9223372036854775807,
        (:'j'::jsonb->>'f')::float8 = 0.1, :'j'::jsonb->>'s' = E'\u00e9''\U0001F600\n',
        :'j'::jsonb->'a' = '[1, null, false]'::jsonb, :'j'::jsonb->'o' = '{}'::jsonb;]])
    local out, ok = sh(("psql -X -A -t -q %s -v j=\"$(cat %s)\" -f %s 2>&1"):format(
      H.shell_quote(pg), path, sql))
    os.remove(sql)
    os.remove(path)
    assert.is_true(ok, out)
    assert.equal("t|t|t|t|t\n", out)
  end)
end)
