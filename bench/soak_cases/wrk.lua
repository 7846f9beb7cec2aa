-- wrk script for the soak's server case: the thread stops after
-- SOAK_REQUESTS responses (env; run with -t1) and rotates four requests:
-- GET /hello, GET /users/:id?q=, POST /echo, and GET /hello with
-- "Connection: close" (so a quarter of the requests come on a connection
-- of their own: wrk reconnects). wrk's main thread sleeps for
-- the whole -d duration anyway, so the script then creates the file
-- SOAK_DONE and the driver sends wrk SIGINT (which ends that sleep; wrk
-- prints its summary as usual).
local limit = tonumber(os.getenv("SOAK_REQUESTS") or "0")
local done_file = os.getenv("SOAK_DONE")
local count, k = 0, 0
local reqs

function init(args)
  reqs = {
    wrk.format("GET", "/hello"),
    wrk.format("GET", "/users/42?q=soak"),
    wrk.format("POST", "/echo", {["Content-Type"] = "application/json"}, '{"a":[1,2,3],"b":"text"}'),
    wrk.format("GET", "/hello", {["Connection"] = "close"}),
  }
end

function request()
  k = k % #reqs + 1
  return reqs[k]
end

function response(status, headers, body)
  count = count + 1
  if limit > 0 and count == limit then
    wrk.thread:stop()
    if done_file then io.open(done_file, "w"):close() end
  end
end
