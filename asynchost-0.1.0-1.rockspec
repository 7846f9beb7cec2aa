-- LuaRocks: builds the Lua C module asynchost.so (require "asynchost") with
-- the project's CMake build and installs only that module.
--   luarocks --lua-version 5.4 make asynchost-0.1.0-1.rockspec
-- Needs the Debian packages liblua5.4-dev libuv1-dev libcurl4-openssl-dev
-- libpq-dev libjansson-dev libxml2-dev node-llhttp pkg-config cmake.
rockspec_format = "3.0"
package = "asynchost"
version = "0.1.0-1"
-- The project has no published repository address yet; `luarocks make`
-- builds from the source tree it is run in.
source = {
   url = "git+file:///usr/src/asynchost",
   tag = "v0.1.0",
}
description = {
   summary = "Lua 5.4 tasks on a libuv event loop: fetch, sleep, db, gather, HTTP server",
   detailed = [[
asynchost gives every Lua coroutine non-blocking fetch (libcurl), sleep,
PostgreSQL (libpq), gather/spawn/timeout and an HTTP server on one libuv
loop. From a plain lua5.4:
   local ah = require "asynchost"
   print(ah.run(function() ah.sleep(0.1) return "done" end))
]],
   license = "MIT",
   labels = { "async", "libuv", "coroutines", "http", "postgresql" },
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
build = {
   type = "cmake",
   variables = {
      CMAKE_BUILD_TYPE = "Release",
      CMAKE_INSTALL_PREFIX = "$(PREFIX)",
      AH_LUA_MODULE_ONLY = "ON",
      AH_WERROR = "OFF",
      AH_LUA_CMOD_DIR = "$(LIBDIR)",
   },
}
