-- Limits: --max-memory (a task that needs more fails with "not enough
-- memory", the others go on), --max-cpu (a task that does not yield fails
-- with "cpu: ..."), and SIGINT/SIGTERM reaching a task stuck in a loop.
-- Each test runs the binary.
local H = require("spec.support.helper")
local ah = require("asynchost")

local function script(text) return H.script(text, "limits") end

local function bin()
  return os.getenv("AH_TEST_BIN") or arg[-1]
end

after_each(function() H.assert_clean() end)

describe("--max-memory", function()
  it("fails the task that needs more while another task goes on", function()
    local out, err, code = H.run({"--max-memory", "32M", script([[
      io.stdout:setvbuf("line")
      local hog = spawn(function()
        local t = {}
        for i = 1, 1e8 do
          t[i] = ("x"):rep(64) .. i
          if i % 20000 == 0 then sleep(0) end
        end
      end)
      local ticker = spawn(function()
        for i = 1, 3 do sleep(0.001) print("tick", i) end
      end)
      print(pcall(hog.wait, hog))
      ticker:wait()
      print("done")
    ]])})
    assert.equal(0, code, err)
    assert.matches("false\tnot enough memory\n", out)
    assert.matches("tick\t1\ntick\t2\ntick\t3\n", out)
    assert.matches("done\n$", out)
  end)

  it("lets pcall catch 'not enough memory' and go on once it is freed", function()
    local out, err, code = H.run({"--max-memory=16M", "-e", [[
      local ok, e = pcall(function()
        local t = {}
        for i = 1, 1e8 do t[i] = {i} end
      end)
      print(ok, e)
      collectgarbage()
      local s = {}
      for i = 1, 1000 do s[i] = ("y"):rep(100) end
      print("after", #s)
    ]]})
    assert.equal(0, code, err)
    assert.equal("false\tnot enough memory\nafter\t1000\n", out)
  end)

  it("reports an uncaught one with status 1, not a crash", function()
    local out, err, code = H.run({"--max-memory", "32M", script([[
      local t = {}
      for i = 1, 1e8 do t[i] = tostring(i) .. ("z"):rep(32) end
      print("unreachable")
    ]])})
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("^asynchost: not enough memory\nstack traceback:\n", err)
    assert.matches("limits_%d+_%d+%.lua:2: in main chunk", err)
  end)

  it("fails a task started from a task that already holds too much", function()
    local out, err, code = H.run({"--max-memory", "24M", "-e", [[
      local keep = {}
      local ok, e = pcall(function()
        for i = 1, 1e8 do keep[i] = {i} end
      end)
      local results = {}
      for i = 1, 20 do
        local t = spawn(function() return ("w"):rep(1000) end)
        results[#results + 1] = tostring((pcall(t.wait, t)))
      end
      keep = nil
      collectgarbage()
      print(ok, e, "spawned")
      local t = spawn(function() return "fine" end)
      print(t:wait())
    ]]})
    assert.equal(0, code, err)
    assert.matches("false\tnot enough memory\tspawned\nfine\n", out)
  end)

  it("accepts bytes and K, M, G suffixes; memory() shows the use and the cap", function()
    for _, case in ipairs({{"1G", 2 ^ 30}, {"64M", 64 * 2 ^ 20}, {"65536000", 65536000},
                           {"51200KiB", 51200 * 1024}, {"1.5g", 1.5 * 2 ^ 30}}) do
      local arg_size, bytes = case[1], case[2]
      local out, err, code = H.run({"--max-memory", arg_size, "-e", [[
        local used, limit = require("asynchost").memory()
        print(math.type(used), used > 10000, limit)
      ]]})
      assert.equal(0, code, err)
      assert.equal(("integer\ttrue\t%d\n"):format(bytes), out)
    end
  end)

  it("has no cap by default", function()
    local used, limit = ah.memory()
    assert.is_true(used > 0)
    assert.is_nil(limit)
    assert.is_nil(rawget(_G, "memory"))
  end)

  it("rejects a bad size with status 1 and the usage", function()
    for _, args in ipairs({{"--max-memory", "lots"}, {"--max-memory=0"},
                           {"--max-memory", "12Q"}, {"--max-memory"}}) do
      args[#args + 1] = "-e"
      args[#args + 1] = "print('ran')"
      local out, err, code = H.run(args)
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("asynchost: '%-%-max%-memory' needs a size such as 64M", err)
      assert.matches("usage: asynchost", err)
    end
  end)
end)

describe("--max-cpu", function()
  it("fails a spawned task in a CPU loop; the main task goes on", function()
    local out, err, code = H.run({"--max-cpu", "0.5", script([[
      io.stdout:setvbuf("line")
      local t0 = require("asynchost").now()
      local t = spawn(function() while true do end end)
      local ok, e = pcall(t.wait, t)
      print(ok, e)
      local dt = require("asynchost").now() - t0
      print(dt >= 0.45 and dt < 3)
      sleep(0.01)
      print("main continues")
    ]])})
    assert.equal(0, code, err)
    assert.equal("false\tcpu: task ran 0.5 s without yielding\ntrue\nmain continues\n", out)
  end)

  it("reports an uncaught one where the loop was, with status 1", function()
    local out, err, code = H.run({"--max-cpu", "0.2", script([[
      print("before")
      local x = 0
      while true do x = x + 1 end
    ]])})
    assert.equal(1, code)
    assert.equal("before\n", out)
    assert.matches("^asynchost: cpu: task ran 0%.2 s without yielding\nstack traceback:\n", err)
    assert.matches("limits_%d+_%d+%.lua:3: in main chunk", err)
  end)

  it("raises inside the task: pcall and <close> see it", function()
    local out, err, code = H.run({"--max-cpu", "0.2", "-e", [[
      local ok, e = pcall(function()
        local c <close> = setmetatable({}, {__close = function(_, why)
          print("closing", why)
        end})
        while true do end
      end)
      print(ok, e)
      sleep(0.3) -- a yield starts a new period
      local y = 0
      for i = 1, 1e5 do y = y + i end
      print("fine", y)
    ]]})
    assert.equal(0, code, err)
    assert.equal("closing\tcpu: task ran 0.2 s without yielding\n" ..
      "false\tcpu: task ran 0.2 s without yielding\nfine\t5000050000\n", out)
  end)

  it("stops for good a task whose pcall keeps catching the error", function()
    local out, err, code = H.run({"--max-cpu", "0.2", "-e", [[
      local caught = 0
      local t = spawn(function()
        local c <close> = setmetatable({}, {__close = function() print("closed") end})
        while true do
          if not pcall(function() while true do end end) then caught = caught + 1 end
        end
      end)
      print(pcall(t.wait, t))
      print("caught", caught)
    ]]})
    assert.equal(0, code, err)
    assert.equal("closed\nfalse\tcpu: task ran 0.2 s without yielding\ncaught\t1\n", out)
  end)

  it("reaches a loop inside a coroutine the task resumes", function()
    local out, err, code = H.run({"--max-cpu", "0.2", "-e", [[
      local gen = coroutine.wrap(function() while true do end end)
      print(pcall(gen))
    ]]})
    assert.equal(0, code, err)
    assert.matches("^false\t.*cpu: task ran 0%.2 s without yielding\n$", out)
  end)

  it("installs no hook without the option, one with it", function()
    local out, err, code = H.run({"-e", "print(debug.gethook())"})
    assert.equal(0, code, err)
    assert.equal("nil\n", out)
    out, err, code = H.run({"--max-cpu", "5", "-e", "print((debug.gethook()))"})
    assert.equal(0, code, err)
    assert.equal("external hook\n", out)
  end)

  it("rejects a bad number of seconds with status 1 and the usage", function()
    for _, args in ipairs({{"--max-cpu", "soon"}, {"--max-cpu=-1"}, {"--max-cpu", "0"},
                           {"--max-cpu"}}) do
      local out, err, code = H.run(args)
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("asynchost: '%-%-max%-cpu' needs a number of seconds", err)
      assert.matches("usage: asynchost", err)
    end
  end)
end)

describe("a signal to a task that does not yield", function()
  -- Runs the script in the background, signals it after `after` s, waits;
  -- returns its output (stdout and stderr) with "rc=N" and the seconds it
  -- took after the first signal.
  local function run_signalled(body, signal, opts)
    opts = opts or {}
    local path, out = script(body), os.tmpname()
    local cmd = ("%s %s %s >%s 2>&1 & pid=$!; sleep %s; kill -%s $pid; t0=$(date +%%s%%N); %s"
      .. " wait $pid; rc=$?; echo \"rc=$rc ms=$(( ($(date +%%s%%N) - t0) / 1000000 ))\" >>%s")
      :format(H.shell_quote(bin()), table.concat(opts.args or {}, " "), path, out,
        opts.after or "0.3", signal,
        opts.second and ("sleep 0.1; kill -" .. signal .. " $pid;") or "", out)
    os.execute(cmd)
    local f = assert(io.open(out))
    local text = f:read("a")
    f:close()
    os.remove(out)
    return text, tonumber(text:match("ms=(%d+)"))
  end

  local stuck = [[
    io.stdout:setvbuf("line")
    print("looping")
    while true do end
  ]]

  it("exits 0 after SIGTERM within about a second", function()
    local text, ms = run_signalled(stuck, "TERM")
    assert.matches("^looping\nrc=0 ", text)
    assert.is_true(ms < 2500, text)
  end)

  it("exits 130 after SIGINT within about a second", function()
    local text, ms = run_signalled(stuck, "INT")
    assert.matches("^looping\nrc=130 ", text)
    assert.is_true(ms < 2500, text)
  end)

  it("also when the loop is in a spawned task, and <close> runs", function()
    local text, ms = run_signalled([[
      io.stdout:setvbuf("line")
      local t = spawn(function()
        local c <close> = setmetatable({}, {__close = function(_, e) print("closed", e) end})
        print("looping")
        while true do end
      end)
      print("waited", pcall(t.wait, t))
    ]], "TERM")
    assert.matches("^looping\nclosed\tcancelled: terminated %(SIGTERM%): the task ran 1%.0 s without yielding\n", text)
    assert.matches("\nrc=0 ", text)
    assert.is_true(ms < 2500, text)
  end)

  it("lets a task that yields soon drain as usual", function()
    local text = run_signalled([[
      io.stdout:setvbuf("line")
      print("ready")
      local ah = require("asynchost")
      for _ = 1, 3 do
        local t0 = ah.now()
        while ah.now() - t0 < 0.3 do end -- busy, but yields every 0.3 s
        sleep(0)
      end
      print("drained")
    ]], "TERM", {after = "0.1"})
    assert.matches("^ready\ndrained\nrc=0 ", text)
  end)

  it("stops a loop that catches the cancellation", function()
    local text, ms = run_signalled([[
      io.stdout:setvbuf("line")
      print("looping")
      while true do pcall(function() while true do end end) end
    ]], "INT")
    assert.matches("^looping\nrc=130 ", text)
    assert.is_true(ms < 3500, text)
  end)

  it("exits at once on a second signal", function()
    local text, ms = run_signalled(stuck, "INT", {second = true})
    assert.matches("looping\n.*interrupted again, exiting now\nrc=130 ", text)
    assert.is_true(ms < 1000, text)
  end)

  it("works with --max-cpu as well", function()
    local text, ms = run_signalled(stuck, "TERM", {args = {"--max-cpu", "30"}})
    assert.matches("^looping\nrc=0 ", text)
    assert.is_true(ms < 2500, text)
  end)
end)
