-- Loaded by busted before the specs (.busted: helper). Runs each test body
-- as its own task and waits for it: a task a test spawned that fails
-- unwatched then fails that test (structured concurrency makes the test's
-- task re-raise it) instead of cancelling busted's main task and with it
-- every later test.
local ah = require("asynchost")
local busted = require("busted")

busted.subscribe({"test", "start"}, function(element)
  local run = element.run
  if type(run) == "function" and not element.asynchost_task then
    element.asynchost_task = true
    element.run = function(...)
      return ah.spawn(run, ...):wait()
    end
  end
  return nil, true
end)
