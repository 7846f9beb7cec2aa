-- The asynchost command line: lua5.4's options, exit statuses, error
-- reports, signals and stdout handling. Each test runs the binary.
local H = require("spec.support.helper")

local tmpdir = os.getenv("AH_TEST_TMP") or "/tmp"
local function script(text) return H.script(text, "cli") end

describe("the asynchost CLI", function()
  it("runs a script with its arguments in arg and ...", function()
    local path = script([[
      print(arg[0]:match("cli_%d+_%d+%.lua$") ~= nil, arg[1], arg[2], #arg, select("#", ...), ...)
      print(arg[-1] ~= nil)
    ]])
    local out, err, code = H.run({path, "one", "two"})
    assert.equal(0, code, err)
    assert.equal("true\tone\ttwo\t2\t2\tone\ttwo\ntrue\n", out)
  end)

  it("skips a shebang line", function()
    local path = script("#!/usr/bin/env asynchost\nprint('shebang ok')\n")
    local out, _, code = H.run({path})
    assert.equal(0, code)
    assert.equal("shebang ok\n", out)
  end)

  it("runs -e chunks and -l modules in order before the script", function()
    local out, err, code = H.run({"-e", "x = 1", "-l", "string", "-l", "s=string",
      "-e", "print(x + 1, s == string)"})
    assert.equal(0, code, err)
    assert.equal("2\ttrue\n", out)
  end)

  it("runs a script from stdin with -", function()
    local out, _, code = H.run({"-", "a"}, {stdin = "sleep(0.01) print('from stdin', ...)"})
    assert.equal(0, code)
    assert.equal("from stdin\ta\n", out)
  end)

  it("prints its version with -v and its usage with --help", function()
    local out, _, code = H.run({"-v"})
    assert.equal(0, code)
    assert.matches("^asynchost %d+%.%d+%.%d+ %(Lua 5%.4", out)
    out, _, code = H.run({"--help"})
    assert.equal(0, code)
    assert.matches("usage: asynchost %[options%] %[script %[args%]%]", out)
    assert.matches("%-e stat", out)
  end)

  it("rejects an unknown option with status 1 and the usage", function()
    local out, err, code = H.run({"-Z"})
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("unrecognized option '%-Z'", err)
    assert.matches("usage:", err)
  end)

  it("reports a syntax error with status 1", function()
    local path = script("local x = = 1\n")
    local out, err, code = H.run({path})
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("^asynchost: .-cli_%d+_%d+%.lua:1: unexpected symbol near '='", err)
  end)

  it("reports a missing script with status 1", function()
    local _, err, code = H.run({tmpdir .. "/no/such/script.lua"})
    assert.equal(1, code)
    assert.matches("cannot open .*no/such/script%.lua", err)
  end)

  it("reports a runtime error with file:line and a traceback, status 1", function()
    local path = script("local function f()\n  error('broken here')\nend\nf()\n")
    local out, err, code = H.run({path})
    assert.equal(1, code)
    assert.matches("^asynchost: [^\n]-cli_%d+_%d+%.lua:2: broken here\nstack traceback:\n", err)
    assert.matches("in main chunk", err)
    assert.equal("", out)
  end)

  it("reports an error raised deep in nested tasks", function()
    local path = script([[
      local t = spawn(function()
        return spawn(function()
          return spawn(function() sleep(0.01) error("deepest") end):wait()
        end):wait()
      end)
      t:wait()
    ]])
    local _, err, code = H.run({path})
    assert.equal(1, code)
    assert.matches(":3: deepest", err)
  end)

  it("reports an error object that is a table", function()
    local _, err, code = H.run({"-e", "error({code = 1})"})
    assert.equal(1, code)
    assert.matches("%(error object is a table value%)", err)
    _, err, code = H.run({"-e",
      "error(setmetatable({}, {__tostring = function() return 'custom error' end}))"})
    assert.equal(1, code)
    assert.matches("custom error", err)
  end)

  it("never drops the error of a spawned task nobody waited for", function()
    local out, err, code = H.run({"-e", "spawn(function() error('lost?') end) print('main done')"})
    assert.equal(1, code)
    assert.matches("lost%?", err)
    assert.matches("in task %d+ spawned at", err)
    assert.is_string(out)
  end)

  it("exits 1 after a detached task failed, once it is done", function()
    local out, err, code = H.run({"-e",
      "spawn(function() sleep(0.05) error('detached failure') end):detach() print('main ends first')"})
    assert.equal(1, code)
    assert.equal("main ends first\n", out)
    assert.matches("error in task %d+: .*detached failure", err)
  end)

  it("waits for every spawned task before exiting 0", function()
    local out, _, code = H.run({"-e", "spawn(function() sleep(0.05) print('child') end) print('main')"})
    assert.equal(0, code)
    assert.equal("main\nchild\n", out)
  end)

  it("exits with os.exit's code from inside a task", function()
    local out, _, code = H.run({"-e",
      "spawn(function() sleep(0.01) io.write('bye') os.exit(3) end):wait() print('never')"})
    assert.equal(3, code)
    assert.equal("bye", out)
    _, _, code = H.run({"-e", "os.exit(true)"})
    assert.equal(0, code)
    _, _, code = H.run({"-e", "os.exit(false)"})
    assert.equal(1, code)
  end)

  it("closes tasks and the state with os.exit(code, true)", function()
    local out, _, code = H.run({"-e", [[
      spawn(function()
        local c <close> = setmetatable({}, {__close = function() print("child closed") end})
        sleep(10)
      end)
      setmetatable(_G, {__gc = function() print("state closed") end})
      sleep(0.01)
      os.exit(4, true)
    ]]})
    assert.equal(4, code)
    assert.matches("child closed", out)
    assert.matches("state closed", out)
  end)

  it("reports a deadlock instead of hanging", function()
    local _, err, code = H.run({"-e", "local q = queue() q:get()"})
    assert.equal(1, code)
    assert.matches("deadlock", err)
  end)

  it("ends quietly when stdout is closed (| head)", function()
    local out, err, code = H.run({"-e", "for i = 1, 1e7 do print(i) end"},
      {pipe = "head -n 2"})
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("1\n2\n", out)
  end)

  it("reads stdin without blocking the other tasks", function()
    local out, err, code = H.run({"-e", [[
      local ticks = 0
      local t = spawn(function() for _ = 1, 3 do sleep(0.001) ticks = ticks + 1 end end)
      local lines = {}
      for line in stdin:lines() do lines[#lines + 1] = line end
      t:wait()
      print(#lines, lines[1], lines[3], ticks)
    ]]}, {stdin = "alpha\nbeta\ngamma\n"})
    assert.equal(0, code, err)
    assert.equal("3\talpha\tgamma\t3\n", out)
  end)

  it("runs a REPL with -i where each line may call async functions", function()
    local out, err, code = H.run({"-i"}, {stdin = "x = 20 + 1\nsleep(0.01) print('slept', x)\n= x * 2\nfor i = 1, 2 do\nprint(i)\nend\n"})
    assert.equal(0, code, err)
    assert.matches("slept\t21", out)
    assert.matches("42", out)
    assert.matches("1\n.-2\n", out)
  end)

  it("honours LUA_INIT unless -E", function()
    local out = H.run({"-e", "print(INITED)"}, {env = {LUA_INIT = "INITED = 'yes'"}})
    assert.equal("yes\n", out)
    out = H.run({"-E", "-e", "print(INITED)"}, {env = {LUA_INIT = "INITED = 'yes'"}})
    assert.equal("nil\n", out)
  end)

  it("uses the standard package paths, so Debian's Lua modules load", function()
    local out, err, code = H.run({"-e", "print(require('pl.stringx') ~= nil, require('lfs') ~= nil)"})
    assert.equal(0, code, err)
    assert.equal("true\ttrue\n", out)
  end)
end)

describe("signals", function()
  local function run_signalled(body, signal, opts)
    opts = opts or {}
    local path = script(body)
    local out = os.tmpname()
    local cmd = ("%s %s >%s 2>&1 & pid=$!; sleep %s; kill -%s $pid; %s wait $pid; echo \"rc=$?\" >>%s")
      :format(H.shell_quote(arg[-1] and os.getenv("AH_TEST_BIN") or arg[-1]), path, out,
        opts.after or "0.3", signal,
        opts.second and ("sleep 0.1; kill -" .. signal .. " $pid;") or "", out)
    os.execute(cmd)
    local f = assert(io.open(out))
    local text = f:read("a")
    f:close()
    os.remove(out)
    return text
  end

  it("drain in-flight work on SIGTERM and exit 0", function()
    local text = run_signalled([[
      io.stdout:setvbuf("line")
      print("ready")
      sleep(0.6)
      print("drained")
    ]], "TERM")
    assert.matches("ready\ndrained\nrc=0", text)
  end)

  it("exit 130 after SIGINT, cancelling what is left after shutdown_timeout", function()
    local text = run_signalled([[
      io.stdout:setvbuf("line")
      shutdown_timeout(0.2)
      local ok, err = pcall(sleep, 30)
      print("cancelled:", err)
    ]], "INT")
    assert.matches("cancelled:\tcancelled: shutdown", text)
    assert.matches("rc=130", text)
  end)

  it("exit at once on a second signal", function()
    local t0 = os.time()
    local text = run_signalled([[
      print("ready") io.stdout:flush()
      sleep(30)
    ]], "INT", {second = true})
    assert.matches("rc=130", text)
    assert.is_true(os.time() - t0 < 10)
  end)
end)
