-- asynchost scripts/ops/parallel.lua [options] COMMAND [ARG...] [::: INPUT...]
--
-- xargs -P with live progress and a summary: runs COMMAND once per input,
-- at most --jobs at a time, each through exec (no shell unless you ask for
-- one). Inputs are the words after ":::", or else the lines of standard
-- input, read as they arrive (stdin:lines), so jobs start before the input
-- ends. "{}" in the command is replaced by the input ("{#}" by the job
-- number); without "{}" the input is added as the last argument.
--
--   asynchost scripts/ops/parallel.lua -j 8 gzip -9 ::: *.log
--   find . -name '*.png' | asynchost scripts/ops/parallel.lua -j 4 -t 60 optipng {}
--   asynchost scripts/ops/parallel.lua sh -c 'curl -fsS "$1" | wc -c' sh {} ::: URL1 URL2
local ah = require("asynchost")
local exec, fs, gather, queue, stdin = ah.exec, ah.fs, ah.gather, ah.queue, ah.stdin
local progress = ah.progress

local USAGE = [[
usage: asynchost scripts/ops/parallel.lua [options] COMMAND [ARG...] [::: INPUT...]

Runs COMMAND for every INPUT (the words after :::, else the lines of
standard input), at most N at a time. {} in the command stands for the
input and {#} for the job number; without {}, the input is the last
argument. Nothing goes through a shell unless COMMAND is one (sh -c ...).

  -j, --jobs N      run at most N jobs at once (default: number of CPUs)
  -t, --timeout S   kill a job (its process group) after S seconds
  -r, --retries N   run a failed job up to N more times (default 0)
      --halt        stop at the first failure: kill the running jobs
      --tag         prefix each output line with the job's input
  -q, --quiet       no progress and no summary (failures are still listed)
  -n, --dry-run     print the commands instead of running them
  -h, --help        show this help

Each job's stdout and stderr are printed when it ends, whole (never
interleaved with other jobs' output); a progress line goes to stderr.
Exit status: 0 when every job succeeded, 1 when some failed, 2 usage.
]]

local function usage_error(msg)
  io.stderr:write("parallel.lua: ", msg, "\n", USAGE)
  os.exit(2)
end

local function default_jobs()
  local res = exec({"nproc"})
  return res and tonumber(res.stdout) or 4
end

local opts = {retries = 0}
local template, inputs = {}, nil
local i = 1
while i <= #arg do
  local a = arg[i]
  local function number(min)
    i = i + 1
    local v = tonumber(arg[i])
    if not v or v < min then usage_error(a .. " needs a number >= " .. min) end
    return v
  end
  if #template > 0 then
    if a == ":::" then
      inputs = table.move(arg, i + 1, #arg, 1, {})
      break
    end
    template[#template + 1] = a
  elseif a == "-h" or a == "--help" then
    io.write(USAGE)
    os.exit(0)
  elseif a == "-j" or a == "--jobs" then
    opts.jobs = math.floor(number(1))
  elseif a == "-t" or a == "--timeout" then
    opts.timeout = number(0.001)
  elseif a == "-r" or a == "--retries" then
    opts.retries = math.floor(number(0))
  elseif a == "--halt" then
    opts.halt = true
  elseif a == "--tag" then
    opts.tag = true
  elseif a == "-q" or a == "--quiet" then
    opts.quiet = true
  elseif a == "-n" or a == "--dry-run" then
    opts.dry_run = true
  elseif a == "--" then
    i = i + 1
    template[1] = arg[i]
  elseif a:sub(1, 1) == "-" then
    usage_error("unknown option " .. a)
  else
    template[1] = a
  end
  i = i + 1
end
if #template == 0 then usage_error("no command given") end
opts.jobs = opts.jobs or default_jobs()

-- The argv of job n for input s.
local has_braces = false
for _, t in ipairs(template) do
  if t:find("{}", 1, true) then has_braces = true end
end
local function argv_for(s, n)
  local argv = {}
  for k, t in ipairs(template) do
    argv[k] = t:gsub("{#}", tostring(n)):gsub("{}", function() return s end)
  end
  if not has_braces then argv[#argv + 1] = s end
  return argv
end

local function shell_words(argv)
  local out = {}
  for k, w in ipairs(argv) do
    out[k] = w:match("^[%w%%+,./:=@_-]+$") and w or "'" .. w:gsub("'", "'\\''") .. "'"
  end
  return table.concat(out, " ")
end

-- Whether fd 1 and fd 2 are terminals (character devices), so that job
-- output can clear the progress line before it is written.
local function is_char(fd)
  local st = fs.stat("/proc/self/fd/" .. fd)
  return st ~= nil and st.type == "char"
end
local both_tty = is_char(1) and is_char(2)

local bar = not opts.quiet and not opts.dry_run and progress(inputs and #inputs or nil, "parallel")
local failures = {}

local function emit(out, text, input)
  if text == "" then return end
  if opts.tag then
    if text:sub(-1) ~= "\n" then text = text .. "\n" end
    text = text:gsub("([^\n]*)\n", function(l) return input .. "\t" .. l .. "\n" end)
  end
  if bar and both_tty then io.stderr:write("\r\27[K") end
  out:write(text)
  out:flush()
end

-- Runs job n; returns true, or false after recording the failure.
local function run(n, input)
  local argv = argv_for(input, n)
  if opts.dry_run then
    print(shell_words(argv))
    return true
  end
  local res, err
  for attempt = 0, opts.retries do
    res, err = exec(argv, {timeout = opts.timeout})
    if res and res.code == 0 then break end
    if attempt < opts.retries then ah.sleep(0.1 * 2 ^ attempt) end
  end
  if res then
    emit(io.stdout, res.stdout, input)
    emit(io.stderr, res.stderr, input)
  end
  local ok = res ~= nil and res.code == 0
  if not ok then
    local why = err
    if res then
      why = res.signal ~= 0 and ("killed by signal " .. res.signal) or ("exit " .. res.code)
      local last = res.stderr:match("([^\n]+)\n?$")
      if last then why = why .. ": " .. last end
    end
    failures[#failures + 1] = {n = n, input = input, why = why}
  end
  if bar then bar:tick(1, ok) end
  return ok
end

-- Inputs flow through a bounded queue: a reader task fills it (from the
-- ::: list, or stdin line by line), opts.jobs worker tasks drain it; all
-- of them run in one gather, so a --halt failure cancels the rest (exec
-- kills their process groups).
local q = queue(opts.jobs * 2)
local tasks = {function()
  if inputs then
    for _, s in ipairs(inputs) do q:put(s) end
  else
    for line in stdin:lines() do
      if line ~= "" then q:put(line) end
    end
  end
  q:close()
end}
local next_n = 0
for w = 1, opts.jobs do
  tasks[w + 1] = function()
    while true do
      local input = q:get()
      if input == nil then return end
      next_n = next_n + 1
      if not run(next_n, input) and opts.halt then
        error("halt: job " .. next_n .. " failed", 0)
      end
    end
  end
end

local ok, err = pcall(gather, tasks)
if bar then bar:done() end
local halted = not ok and tostring(err):match("^halt: ")
if not ok and not halted then error(err, 0) end

if #failures > 0 then
  table.sort(failures, function(a, b) return a.n < b.n end)
  io.stderr:write(("parallel: %d failed:\n"):format(#failures))
  for _, f in ipairs(failures) do
    io.stderr:write(("  #%d %s: %s\n"):format(f.n, f.input, f.why))
  end
end
if halted then
  io.stderr:write("parallel: halted at the first failure: the running jobs were killed, ",
    "the others not started\n")
end
os.exit(#failures > 0 and 1 or 0)
