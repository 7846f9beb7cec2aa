-- fetch: the callable table around the C half (bindings/fetch.c), with
-- retries. Loaded once per host with the module table and the C functions.
local M, C = ...

local request, getdate = C.request, C.getdate
local random, max, min, tonumber, type = math.random, math.max, math.min, tonumber, type
local time = os.time

-- Methods a retry cannot do twice by accident (RFC 9110 §9.2.2).
local idempotent = {
  GET = true, HEAD = true, OPTIONS = true, PUT = true, DELETE = true, TRACE = true,
}
-- Responses worth another attempt.
local transient = { [408] = true, [429] = true, [500] = true, [502] = true, [503] = true, [504] = true }

local MAX_BACKOFF = 10 -- seconds: the longest exponential step
local MAX_RETRY_AFTER = 60 -- a server asking for longer gets its answer back

-- Seconds the response asks us to wait (Retry-After: seconds or a date).
local function retry_after(res)
  local v = res.headers["retry-after"]
  if not v then return nil end
  local n = tonumber(v)
  if n then return max(0, n) end
  local t = getdate(v)
  return t and max(0, t - time()) or nil
end

local function check_retry_opts(opts)
  local n, d = opts.retries, opts.retry_delay
  if n ~= nil and (math.type(n) ~= "integer" or n < 0) then
    error("fetch: bad option 'retries' (integer >= 0 expected, got " .. tostring(n) .. ")", 3)
  end
  if d ~= nil and (type(d) ~= "number" or d ~= d or d < 0) then
    error("fetch: bad option 'retry_delay' (seconds >= 0 expected, got " .. tostring(d) .. ")", 3)
  end
  return n or 0, d or 0.2
end

-- fetch(url [, opts]) -> res | nil, err
local function call(_, url, opts)
  -- never a tail call: the C half blames the line of our caller
  if type(opts) ~= "table" or opts.retries == nil then
    local res, err = request(url, opts)
    return res, err
  end
  local retries, delay = check_retry_opts(opts)
  local method = opts.method
  if type(method) == "string" then
    method = method:upper()
  else
    method = (opts.body ~= nil or opts.json ~= nil) and "POST" or "GET"
  end
  if retries == 0 or not idempotent[method] then
    local res, err = request(url, opts)
    return res, err
  end
  local attempt = 0
  while true do
    local res, err = request(url, opts)
    local wait
    if attempt < retries then
      -- exponential backoff with jitter: half to all of base * 2^attempt
      local step = min(MAX_BACKOFF, delay * 2 ^ attempt) * (0.5 + 0.5 * random())
      if res then
        if transient[res.status] then
          local ra = retry_after(res)
          if ra == nil then
            wait = step
          elseif ra <= MAX_RETRY_AFTER then
            wait = ra
          end
        end
      elseif err:match("^connect:") or err:match("^timeout:") then
        wait = step
      end
    end
    if not wait then
      if res then res.retries = attempt end
      return res, err
    end
    attempt = attempt + 1
    M.sleep(wait)
  end
end

local fetch = setmetatable({
  config = C.config,
  stats = C.stats,
}, {
  __call = call,
  __name = "fetch",
  __tostring = function() return "fetch" end,
})

M.fetch = fetch
return fetch
