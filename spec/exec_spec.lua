-- exec(argv [, opts]): programs run on libuv's process API, and net.probe.
local H = require("spec.support.helper")
local ah = require("asynchost")

local tmp = H.env("AH_TEST_TMP") .. "/exec"
os.execute("mkdir -p " .. H.shell_quote(tmp))

local seq = 0
local function tmpname(name)
  seq = seq + 1
  return ("%s/%d-%s"):format(tmp, seq, name)
end

-- Whether pid is a live process (a zombie left to init counts as dead:
-- only our own children are ours to reap).
local function alive(pid)
  local stat = fs.read("/proc/" .. pid .. "/stat")
  if not stat then return false end
  return stat:match("^%d+ %b() (%a)") ~= "Z"
end

local function wait_until(cond, within)
  local deadline = now() + (within or 5)
  while not cond() do
    if now() > deadline then return false end
    sleep(0.01)
  end
  return true
end

-- Polls for a pid file written by the child.
local function read_pid(path)
  local pid
  wait_until(function()
    local s = fs.read(path)
    pid = s and tonumber(s:match("%d+"))
    return pid ~= nil
  end)
  assert(pid, "no pid in " .. path)
  return pid
end

describe("exec", function()
  H.check_each_test_for_leaks(setup, before_each, after_each)

  it("runs a program found in PATH and returns its exit code and output", function()
    local res = exec({"echo", "hello", 42})
    assert.equal(0, res.code)
    assert.equal(0, res.signal)
    assert.equal("hello 42\n", res.stdout)
    assert.equal("", res.stderr)
    assert.is_true(math.type(res.pid) == "integer" and res.pid > 0)
    assert.is_true(res.time >= 0 and res.time < 10)
  end)

  it("passes arguments verbatim, never through a shell", function()
    local res = exec({"printf", "%s|", "$HOME", "a b", "; rm -rf /", "*"})
    assert.equal("$HOME|a b|; rm -rf /|*|", res.stdout)
  end)

  it("returns a non-zero exit as a result, with stderr kept apart", function()
    local res, err = exec({"sh", "-c", "echo out; echo oops >&2; exit 3"})
    assert.is_nil(err)
    assert.equal(3, res.code)
    assert.equal(0, res.signal)
    assert.equal("out\n", res.stdout)
    assert.equal("oops\n", res.stderr)
  end)

  it("reports the signal that ended a program, and 128 + signal as its code", function()
    local res = exec({"sh", "-c", "kill -TERM $$"})
    assert.equal(15, res.signal)
    assert.equal(143, res.code)
  end)

  it("returns process: for a program that is not found", function()
    local res, err = exec({"asynchost-no-such-program-xyz", "arg"})
    assert.is_nil(res)
    assert.equal("process: asynchost-no-such-program-xyz: no such file or directory", err)
  end)

  it("returns process: for a file that is not executable", function()
    local path = tmpname("not-executable.sh")
    assert(fs.write(path, "#!/bin/sh\necho hi\n"))
    local res, err = exec({path})
    assert.is_nil(res)
    assert.equal("process: " .. path .. ": permission denied", err)
  end)

  it("returns process: for a working directory that does not exist", function()
    local res, err = exec({"pwd"}, {cwd = tmp .. "/no/such/dir"})
    assert.is_nil(res)
    assert.matches("^process: pwd: no such file or directory %(cwd .*/no/such/dir%)$", err)
  end)

  it("runs the program in opts.cwd", function()
    local dir = tmpname("cwd")
    assert(fs.mkdir(dir))
    local res = exec({"pwd", "-P"}, {cwd = dir})
    local real = exec({"realpath", dir}).stdout
    assert.equal(real, res.stdout)
  end)

  it("adds opts.env to the inherited environment, and false removes a variable", function()
    local res = exec({"sh", "-c", 'echo "$AH_X|$AH_N|${HOME-unset}|$PATH"'},
      {env = {AH_X = "x y", AH_N = 7, HOME = false}})
    local x, n, home, path = res.stdout:match("^(.-)|(.-)|(.-)|(.-)\n$")
    assert.equal("x y", x)
    assert.equal("7", n)
    assert.equal("unset", home)
    assert.equal(os.getenv("PATH"), path)
  end)

  it("round-trips opts.stdin through cat, binary bytes included", function()
    local parts = {}
    for i = 0, 255 do parts[#parts + 1] = string.char(i) end
    local data = table.concat(parts):rep(4096) -- 1 MiB, NULs included
    local res = exec({"cat"}, {stdin = data})
    assert.equal(0, res.code)
    assert.equal(#data, #res.stdout)
    assert.is_true(data == res.stdout)
  end)

  it("gives a program without opts.stdin an empty standard input", function()
    local res = exec({"cat"}, {timeout = 10})
    assert.equal(0, res.code)
    assert.equal("", res.stdout)
  end)

  it("does not fail when the program exits without reading its stdin", function()
    local res, err = exec({"true"}, {stdin = ("x"):rep(8 * 1024 * 1024)})
    assert.is_nil(err)
    assert.equal(0, res.code)
  end)

  it("reads a 100 MB stdout without deadlocking or losing bytes", function()
    local res = exec({"head", "-c", "100000000", "/dev/zero"}, {max_output = 200e6})
    assert.equal(0, res.code)
    assert.equal(100000000, #res.stdout)
    assert.equal("\0\0\0\0", res.stdout:sub(50000000, 50000003))
  end)

  it("reads stdout and stderr concurrently, so both can be large", function()
    local res = exec({"sh", "-c",
      "head -c 20000000 /dev/zero >&2 & head -c 20000000 /dev/zero; wait"})
    assert.equal(0, res.code)
    assert.equal(20000000, #res.stdout)
    assert.equal(20000000, #res.stderr)
  end)

  it("returns too_large and kills the program when output passes max_output", function()
    local res, err = exec({"sh", "-c", "yes"}, {max_output = 100000})
    assert.is_nil(res)
    assert.equal("too_large: sh: stdout over 100000 bytes", err)
    res, err = exec({"sh", "-c", "head -c 5000 /dev/zero >&2"}, {max_output = 1000})
    assert.is_nil(res)
    assert.equal("too_large: sh: stderr over 1000 bytes", err)
  end)

  it("keeps the loop running while a program runs", function()
    local ticks = 0
    local ticker = spawn(function()
      while true do
        sleep(0.01)
        ticks = ticks + 1
      end
    end)
    exec({"sleep", "0.3"})
    ticker:cancel()
    assert.is_true(ticks >= 5, "ticks: " .. ticks)
  end)

  it("runs 100 programs concurrently in a gather with a limit", function()
    local list = {}
    for i = 1, 100 do list[i] = i end
    local res = gather(list, function(i)
      return exec({"sh", "-c", "exit $1", "sh", tostring(i % 7)})
    end, {limit = 20})
    assert.equal(100, res.n)
    for i = 1, 100 do assert.equal(i % 7, res[i].code) end
  end)

  describe("with opts.timeout", function()
    it("kills the program and returns timeout:", function()
      local t0 = now()
      local res, err = exec({"sleep", "30"}, {timeout = 0.2})
      assert.is_nil(res)
      assert.equal("timeout: sleep killed after 0.2 s", err)
      assert.is_true(now() - t0 < 10)
    end)

    it("sends SIGTERM first, so the program can clean up", function()
      local flag = tmpname("terminated")
      local res, err = exec({"sh", "-c", 'trap "echo bye > $1; exit 0" TERM; sleep 30 & wait',
        "sh", flag}, {timeout = 0.2})
      assert.is_nil(res)
      assert.matches("^timeout: sh killed after 0.2 s$", err)
      assert.equal("bye\n", fs.read(flag))
    end)

    it("SIGKILLs a program that ignores SIGTERM after kill_after", function()
      local pidfile = tmpname("pid")
      local t0 = now()
      local res, err = exec({"sh", "-c", 'trap "" TERM; echo $$ > $1; while :; do sleep 1; done',
        "sh", pidfile}, {timeout = 0.3, kill_after = 0.3})
      local dt = now() - t0
      assert.is_nil(res)
      assert.equal("timeout: sh killed after 0.3 s", err)
      assert.is_true(dt >= 0.5, "returned after " .. dt)
      assert.is_true(dt < 10, "returned after " .. dt)
      assert.is_false(alive(read_pid(pidfile)))
    end)

    it("kills the whole process group, grandchildren included", function()
      local pidfile = tmpname("pid")
      local res, err = exec({"sh", "-c", "sleep 30 & echo $! > $1; wait", "sh", pidfile},
        {timeout = 0.2})
      assert.is_nil(res)
      assert.matches("^timeout:", err)
      local pid = read_pid(pidfile)
      assert.is_true(wait_until(function() return not alive(pid) end), "sleep survived")
    end)
  end)

  describe("with opts.lines", function()
    it("hands each line and its stream to the callback as it arrives", function()
      local got = {}
      local res = exec({"sh", "-c", "echo one; sleep 0.05; echo two >&2; sleep 0.05; printf three"},
        {lines = function(line, stream) got[#got + 1] = stream .. ":" .. line end})
      assert.equal(0, res.code)
      assert.same({"stdout:one", "stderr:two", "stdout:three"}, got)
      assert.equal("", res.stdout)
      assert.equal("", res.stderr)
    end)

    it("delivers lines before the program ends", function()
      local first_at, t0 = nil, now()
      local res = exec({"sh", "-c", "echo early; sleep 0.5; echo late"},
        {lines = function(line) if line == "early" then first_at = now() - t0 end end})
      assert.equal(0, res.code)
      assert.is_true(first_at ~= nil and first_at < res.time, "the early line came late")
    end)

    it("lets the callback suspend, keeping every line in order", function()
      local n, sum = 0, 0
      local res = exec({"seq", "1", "100000"}, {lines = function(line)
        n = n + 1
        sum = sum + tonumber(line)
        if n % 10000 == 0 then sleep(0.001) end
      end})
      assert.equal(0, res.code)
      assert.equal(100000, n)
      assert.equal(100000 * 100001 // 2, sum)
    end)

    it("pauses reading while a slow callback is megabytes behind, losing nothing", function()
      local n, sum = 0, 0
      local res = exec({"seq", "1", "400000"}, {timeout = 60, lines = function(line)
        n = n + 1
        sum = sum + tonumber(line)
        if n % 50000 == 0 then sleep(0.05) end
      end})
      assert.equal(0, res.code)
      assert.equal(400000, n)
      assert.equal(400000 * 400001 // 2, sum)
    end)

    it("stops the program when the callback returns false", function()
      local n = 0
      local res = exec({"yes"}, {lines = function()
        n = n + 1
        if n == 10 then return false end
      end})
      assert.equal(10, n)
      assert.equal(9, res.signal)
    end)

    it("kills the program and re-raises when the callback raises", function()
      local pidfile = tmpname("pid")
      local ok, err = pcall(exec, {"sh", "-c", "echo $$ > $1; echo go; sleep 30", "sh", pidfile},
        {lines = function() error("callback failed") end})
      assert.is_false(ok)
      assert.matches("callback failed", err)
      local pid = read_pid(pidfile)
      assert.is_true(wait_until(function() return not alive(pid) end))
    end)

    it("limits the length of one line with max_output", function()
      local res, err = exec({"head", "-c", "5000", "/dev/zero"},
        {max_output = 1000, lines = function() end})
      assert.is_nil(res)
      assert.equal("too_large: head: stdout over 1000 bytes in one line", err)
    end)
  end)

  describe("when cancelled", function()
    it("kills the process group and reaps the child", function()
      local pidfile = tmpname("pid")
      local t = spawn(function()
        return exec({"sh", "-c", "sleep 30 & echo $$ $! > $1; wait", "sh", pidfile})
      end)
      local pids
      wait_until(function()
        local s = fs.read(pidfile)
        pids = s and {s:match("(%d+) (%d+)")}
        return pids and #pids == 2
      end)
      t:cancel()
      local ok, err = pcall(t.wait, t)
      assert.is_false(ok)
      assert.matches("^cancelled", err)
      assert.equal("cancelled", t:status())
      -- the shell is our child: reaped (not even a zombie); sleep is killed
      assert.is_true(wait_until(function() return fs.stat("/proc/" .. pids[1]) == nil end))
      assert.is_true(wait_until(function() return not alive(tonumber(pids[2])) end))
    end)

    it("by timeout() returns timeout: and leaves no process", function()
      local pidfile = tmpname("pid")
      local res, err = timeout(0.2, function()
        return exec({"sh", "-c", "echo $$ > $1; exec sleep 30", "sh", pidfile})
      end)
      assert.is_nil(res)
      assert.matches("^timeout", err)
      local pid = read_pid(pidfile)
      assert.is_true(wait_until(function() return fs.stat("/proc/" .. pid) == nil end))
    end)

    it("while its lines callback waits, kills the program too", function()
      local pidfile = tmpname("pid")
      local res, err = timeout(0.2, function()
        return exec({"sh", "-c", "echo $$ > $1; echo go; sleep 30", "sh", pidfile},
          {lines = function() sleep(30) end})
      end)
      assert.is_nil(res)
      assert.matches("^timeout", err)
      local pid = read_pid(pidfile)
      assert.is_true(wait_until(function() return not alive(pid) end))
    end)
  end)

  it("forwards a graceful shutdown's SIGTERM to the programs it runs", function()
    local bin = H.env("AH_TEST_BIN")
    local pidfile = tmpname("pid")
    local script = ([[
      local r = exec({"sh", "-c", "echo $$ > %s; exec sleep 30"})
      print("signal", r.signal)
    ]]):format(pidfile)
    local outer = spawn(function() return exec({bin, "-e", script}, {timeout = 20}) end)
    local sleeper = read_pid(pidfile)
    local host_pid = tonumber(fs.read("/proc/" .. sleeper .. "/stat"):match("^%d+ %b() %a (%d+)"))
    assert.equal(0, exec({"kill", "-TERM", tostring(host_pid)}).code)
    local res = outer:wait()
    assert.equal(0, res.code)
    assert.equal("signal\t15\n", res.stdout)
    assert.is_true(res.time < 8, "took " .. res.time)
  end)

  describe("misuse", function()
    it("raises for a bad argv", function()
      assert.has_error(function() exec("ls") end)
      local ok, err = pcall(exec, {})
      assert.is_false(ok)
      assert.matches("bad argument #1 to '[%w.]*exec' %(the list must name a program", err)
      ok, err = pcall(exec, {"echo", {}})
      assert.is_false(ok)
      assert.matches("argv%[2%] is a table, not a string", err)
      ok, err = pcall(exec, {""})
      assert.is_false(ok)
      assert.matches("argv%[1%] is empty", err)
    end)

    it("raises for bad options", function()
      local cases = {
        {{stdin = 5}, "opts.stdin must be a string"},
        {{env = "A=1"}, "opts.env must be a table"},
        {{env = {[1] = "x"}}, "opts.env keys must be strings"},
        {{env = {["A=B"] = "x"}}, "bad environment variable name"},
        {{env = {A = {}}}, "opts.env.A must be a string, a number or false"},
        {{timeout = "1"}, "opts.timeout must be a number"},
        {{timeout = -1}, "opts.timeout must be >= 0"},
        {{max_output = 0}, "opts.max_output must be >= 1"},
        {{lines = true}, "opts.lines must be a function"},
        {{cwd = 1}, "opts.cwd must be a string"},
      }
      for _, c in ipairs(cases) do
        local ok, err = pcall(exec, {"true"}, c[1])
        assert.is_false(ok)
        assert.matches(c[2], err, 1, true)
      end
    end)

    it("raises where the task cannot suspend, starting nothing", function()
      local ok, err = pcall(table.sort, {1, 2, 3}, function(a, b)
        exec({"true"})
        return a < b
      end)
      assert.is_false(ok)
      assert.matches("exec", err)
      assert.equal(0, ah.stats().exec or 0)
    end)
  end)
end)

describe("net.probe", function()
  after_each(function() H.assert_clean() end)

  it("returns the connect time for a listening port (the origin server)", function()
    local host, port = H.env("AH_TEST_ORIGIN"):match("^http://([^:/]+):(%d+)")
    local secs, err = net.probe(host, tonumber(port), 5)
    assert.is_nil(err)
    assert.is_true(type(secs) == "number" and secs >= 0 and secs < 5)
  end)

  it("reaches PostgreSQL's port too", function()
    local secs = net.probe("127.0.0.1", tonumber(H.env("AH_TEST_PG_PORT")))
    assert.is_true(type(secs) == "number")
  end)

  it("returns connect: for a closed port", function()
    local port = exec({"/usr/bin/python3", "-c",
      "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"}).stdout
    local secs, err = net.probe("127.0.0.1", tonumber(port), 5)
    assert.is_nil(secs)
    assert.equal("connect: 127.0.0.1:" .. tonumber(port) .. ": connection refused", err)
  end)

  it("returns dns: for a name that does not resolve", function()
    local secs, err = net.probe("no-such-host.invalid", 80, 5)
    assert.is_nil(secs)
    assert.matches("^dns: no%-such%-host%.invalid:80: ", err)
  end)

  -- A listener whose accept queue is full: further SYNs go unanswered.
  local function with_full_backlog(fn)
    local port
    local server = spawn(function()
      return exec({"/usr/bin/python3", "-c", [[
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)
held = []
for i in range(3):
    c = socket.socket(); c.setblocking(False)
    try: c.connect(s.getsockname())
    except BlockingIOError: pass
    held.append(c)
time.sleep(0.2)
print(s.getsockname()[1], flush=True)
time.sleep(60)
]]}, {lines = function(line) port = tonumber(line) end})
    end)
    assert.is_true(wait_until(function() return port ~= nil end))
    local ok, err = pcall(fn, port)
    server:cancel()
    assert.is_false(pcall(server.wait, server))
    if not ok then error(err, 0) end
  end

  it("returns timeout: when nothing answers in time", function()
    with_full_backlog(function(port)
      local t0 = now()
      local secs, err = net.probe("127.0.0.1", port, 0.3)
      assert.is_nil(secs)
      assert.equal("timeout: 127.0.0.1:" .. port .. ": no connection after 0.3 s", err)
      assert.is_true(now() - t0 < 5)
    end)
  end)

  it("stops the attempt when its task is cancelled", function()
    with_full_backlog(function(port)
      local t = spawn(function() return net.probe("127.0.0.1", port, 30) end)
      sleep(0.05)
      assert.equal(1, ah.stats().net)
      t:cancel()
      local ok, err = pcall(t.wait, t)
      assert.is_false(ok)
      assert.matches("^cancelled", err)
    end)
  end)

  it("raises for bad arguments", function()
    assert.has_error(function() net.probe("localhost") end)
    assert.has_error(function() net.probe("localhost", 70000) end)
    assert.has_error(function() net.probe("localhost", 80, 0) end)
  end)
end)

-- The ops scripts, run as a user runs them: a separate asynchost process.
local function script(name, args, opts)
  local argv = {H.env("AH_TEST_BIN"), "scripts/ops/" .. name}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  opts = opts or {}
  opts.timeout = opts.timeout or 30
  opts.env = opts.env or {}
  opts.env.ASYNCHOST_LOG = opts.env.ASYNCHOST_LOG or "warn"
  return assert(exec(argv, opts))
end

describe("scripts/ops/parallel.lua", function()
  after_each(function() H.assert_clean() end)

  it("runs the command once per input, never more than --jobs at once", function()
    local log = tmpname("jobs.log")
    local res = script("parallel.lua", {"-j", "3", "sh", "-c",
      'echo "+ $1" >> "$2"; sleep 0.1; echo "- $1" >> "$2"', "sh", "{}", log,
      ":::", "1", "2", "3", "4", "5", "6", "7", "8", "9"})
    assert.equal(0, res.code, res.stderr)
    local running, most, started = 0, 0, 0
    for line in fs.lines(log) do
      if line:sub(1, 1) == "+" then
        running, started = running + 1, started + 1
        most = math.max(most, running)
      else
        running = running - 1
      end
    end
    assert.equal(9, started)
    assert.equal(3, most)
  end)

  it("reads inputs from stdin lines, fills {} and {#}, and tags output", function()
    local res = script("parallel.lua", {"-j", "1", "--tag", "echo", "job{#}={}"},
      {stdin = "alpha\n\nbeta\n"})
    assert.equal(0, res.code, res.stderr)
    assert.equal("alpha\tjob1=alpha\nbeta\tjob2=beta\n", res.stdout)
  end)

  it("adds the input as the last argument when there is no {}", function()
    local res = script("parallel.lua", {"-j", "1", "printf", "<%s>", ":::", "a b", "c"})
    assert.equal("<a b><c>", res.stdout)
  end)

  it("lists the failures with their reason and exits 1", function()
    local res = script("parallel.lua", {"-j", "4", "-t", "0.3", "sh", "-c",
      'case $1 in bad) echo broken >&2; exit 3;; slow) sleep 30;; esac', "sh",
      ":::", "ok", "bad", "slow", "ok2"})
    assert.equal(1, res.code)
    assert.matches("parallel: 2 failed:", res.stderr, 1, true)
    assert.matches("#2 bad: exit 3: broken", res.stderr, 1, true)
    assert.matches("#3 slow: timeout: sh killed after 0.3 s", res.stderr, 1, true)
    assert.matches("process: no%-such%-program", script("parallel.lua",
      {"no-such-program", ":::", "x"}).stderr)
  end)

  it("with --halt kills the running jobs and starts no more", function()
    local log = tmpname("halt.log")
    local res = script("parallel.lua", {"-j", "2", "--halt", "sh", "-c",
      'echo "$1" >> "$2"; [ "$1" = fail ] && exit 1; sleep 30', "sh", "{}", log,
      ":::", "fail", "slow", "never1", "never2"})
    assert.equal(1, res.code)
    assert.is_true(res.time < 20, "took " .. res.time)
    assert.matches("halted at the first failure", res.stderr, 1, true)
    local started = fs.read(log)
    assert.is_nil(started:find("never2", 1, true))
  end)

  it("retries a failing job with --retries", function()
    local count = tmpname("tries")
    local res = script("parallel.lua", {"-r", "2", "sh", "-c", 'echo x >> "$1"; exit 1',
      "sh", "{}", ":::", count})
    assert.equal(1, res.code)
    assert.equal("x\nx\nx\n", fs.read(count))
  end)

  it("prints shell-quoted commands with --dry-run and rejects bad usage", function()
    local res = script("parallel.lua", {"-n", "cp", "{}", "/tmp/x y/{#}", ":::", "it's"})
    assert.equal(0, res.code)
    assert.equal("cp 'it'\\''s' '/tmp/x y/1'\n", res.stdout)
    assert.equal(2, script("parallel.lua", {"-j", "0", "true"}).code)
    assert.equal(2, script("parallel.lua", {}).code)
  end)
end)

describe("scripts/ops/health.lua", function()
  after_each(function() H.assert_clean() end)
  local origin = H.env("AH_TEST_ORIGIN")
  local pg = "127.0.0.1:" .. H.env("AH_TEST_PG_PORT")

  local function closed_port()
    return tonumber(exec({"/usr/bin/python3", "-c",
      "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"}).stdout)
  end

  it("--once prints a table and exits 0 when every target is up", function()
    local res = script("health.lua", {"--once", origin .. "/ping", "tcp://" .. pg})
    assert.equal(0, res.code, res.stderr)
    assert.matches("2/2 up", res.stdout, 1, true)
    assert.matches(origin .. "/ping%s+up%s+%d+ ms%s+HTTP 200", res.stdout)
    assert.matches("tcp://" .. pg .. "%s+up%s+%d+ ms%s+connected", res.stdout)
  end)

  it("--once exits 1 and says why when a target is down", function()
    local port = closed_port()
    local res = script("health.lua", {"--once", "-t", "2", origin .. "/status?code=503",
      "127.0.0.1:" .. port, origin .. "/hang?s=5"})
    assert.equal(1, res.code)
    assert.matches("0/3 up", res.stdout, 1, true)
    assert.matches("DOWN%s+%d+ ms%s+HTTP 503 %(not expected%)", res.stdout)
    assert.matches("connect: 127.0.0.1:" .. port .. ": connection refused", res.stdout, 1, true)
    assert.matches("/hang%?s=5%s+DOWN%s+%d+ ms%s+timeout", res.stdout)
  end)

  it("reads targets from a file, honours --expect and prints JSON lines", function()
    local file = tmpname("targets")
    assert(fs.write(file, "# the origin\n" .. origin .. "/status?code=404  # expected\n\n" .. pg .. "\n"))
    local res = script("health.lua", {"--once", "--json", "-e", "200,4xx", "-f", file})
    assert.equal(0, res.code, res.stderr)
    local rows = {}
    for line in res.stdout:gmatch("[^\n]+") do rows[#rows + 1] = assert(json.decode(line)) end
    assert.equal(2, #rows)
    assert.equal(origin .. "/status?code=404", rows[1].target)
    assert.is_true(rows[1].up)
    assert.equal(404, rows[1].status)
    assert.equal("tcp://" .. pg, rows[2].target)
    assert.is_true(rows[2].up)
  end)

  it("probes every interval until SIGTERM, then exits 0", function()
    local rounds = 0
    local res = exec({"sh", "-c", '"$1" scripts/ops/health.lua -i 0.1 "$2" & echo "pid $!"; wait $!',
      "sh", H.env("AH_TEST_BIN"), pg}, {timeout = 30, lines = function(line)
        local pid = line:match("^pid (%d+)")
        if pid then spawn(function()
          while rounds < 3 do sleep(0.02) end
          exec({"kill", "-TERM", pid})
        end) end
        if line:match("1/1 up$") then rounds = rounds + 1 end
      end})
    assert.equal(0, res.code)
    assert.is_true(rounds >= 3)
  end)

  it("rejects bad usage with status 2", function()
    assert.equal(2, script("health.lua", {"--once"}).code)
    assert.equal(2, script("health.lua", {"--once", "not-a-target"}).code)
    assert.equal(2, script("health.lua", {"--once", "-e", "abc", pg}).code)
  end)
end)
