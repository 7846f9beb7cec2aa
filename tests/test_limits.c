/*
** The limits of the embedding API: a memory cap that fails the task that
** passes it (the host and its other tasks go on, the host's own C work is
** never refused), and a limit on the time a task runs without yielding.
**   test_limits [name...]     (no name: all)
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "asynchost.h"

#include "test_assert.h"

#define MB (1024 * 1024)

/* What a done callback saw. */
typedef struct outcome {
  int calls, status;
  char text[256];
} outcome;

static void on_done(ah_task *t, lua_State *L, int status, int nres,
                    void *data) {
  outcome *o = data;
  const char *s = nres > 0 ? lua_tostring(L, -nres) : NULL;
  (void)t;
  o->calls++;
  o->status = status;
  if (status != AH_OK) s = lua_tostring(L, -1);
  snprintf(o->text, sizeof o->text, "%s", s ? s : "");
}

/* Starts the function a chunk returns as a task reporting to o. */
static void spawn(ah_host *h, const char *chunk, outcome *o) {
  lua_State *L = ah_host_lua(h);
  if (luaL_loadstring(L, chunk) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
    abort();
  }
  ASSERT_INT(ah_host_spawn_call(h, 0, on_done, o, NULL), AH_OK);
}

static const char hog[] = "local ah = require 'asynchost' "
                          "return function() "
                          "  local t = {} "
                          "  for i = 1, 1e8 do "
                          "    t[i] = {i} "
                          "    if i % 10000 == 0 then ah.sleep(0) end "
                          "  end "
                          "end";

static const char ticker[] = "local ah = require 'asynchost' "
                             "return function() "
                             "  local n = 0 "
                             "  for i = 1, 20 do ah.sleep(0.001) n = n + 1 end "
                             "  return 'ticked ' .. n "
                             "end";

/* ---- tests ------------------------------------------------------------- */

static void test_memory_limit_fails_only_the_greedy_task(void) {
  outcome a = {0}, b = {0};
  ah_host *h = ah_host_new(NULL);
  size_t base = ah_host_memory(h);
  ASSERT(base > 0);
  ASSERT_INT(ah_host_memory_limit(h), 0);
  ASSERT_INT(ah_host_set_memory_limit(h, base + 16 * MB), AH_OK);
  ASSERT_INT(ah_host_memory_limit(h), base + 16 * MB);
  spawn(h, hog, &a);
  spawn(h, ticker, &b);
  ASSERT_INT(ah_host_run(h), 0);
  ASSERT_INT(a.calls, 1);
  ASSERT_INT(a.status, AH_ERUN);
  ASSERT_HAS(a.text, "not enough memory");
  ASSERT_INT(b.status, AH_OK);
  ASSERT_HAS(b.text, "ticked 20");
  ASSERT(ah_host_memory(h) <= base + 16 * MB);
  ah_host_free(h);
}

/* Over the cap (lowered under what the state holds), the host's C work
   still goes: compiling, spawning, reporting an uncaught error. */
static void test_memory_over_limit_outside_tasks_is_not_refused(void) {
  outcome o = {0};
  ah_host *h = ah_host_new(NULL);
  lua_State *L = ah_host_lua(h);
  int i;
  ASSERT_INT(ah_host_set_memory_limit(h, ah_host_memory(h) / 2), AH_OK);
  lua_newtable(L);
  for (i = 1; i <= 1000; i++) { /* C outside any task: allowed */
    lua_pushfstring(L, "%d %s", i, "some text to hold on to");
    lua_rawseti(L, -2, i);
  }
  lua_settop(L, 0);
  spawn(h, "return function() return ('x'):rep(100) end", &o);
  ASSERT_INT(ah_host_spawn_string(h,
                                  "local t = {} for i = 1, 100 do "
                                  "t[i] = {} end",
                                  "=greedy", NULL),
             AH_OK);
  ASSERT_INT(ah_host_run(h), 1); /* the uncaught one was reported */
  ASSERT_HAS(ah_host_error(h), "not enough memory");
  ASSERT_INT(o.status, AH_ERUN);
  ASSERT_HAS(o.text, "not enough memory");
  ASSERT_INT(ah_host_set_memory_limit(h, 0), AH_OK); /* lifted: runs again */
  o.calls = 0;
  spawn(h, "return function() return ('x'):rep(3) end", &o);
  ah_host_run(h);
  ASSERT_INT(o.status, AH_OK);
  ASSERT_HAS(o.text, "xxx");
  ah_host_free(h);
}

static void test_memory_counts_what_the_state_holds(void) {
  ah_host *h = ah_host_new(NULL);
  lua_State *L = ah_host_lua(h);
  size_t before = ah_host_memory(h), during;
  lua_createtable(L, 1000000, 0);
  during = ah_host_memory(h);
  ASSERT(during > before + 1000000 * 8);
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT);
  ASSERT(ah_host_memory(h) < during);
  ASSERT_INT(ah_host_memory(h), (size_t)lua_gc(L, LUA_GCCOUNT) * 1024 +
                                    (size_t)lua_gc(L, LUA_GCCOUNTB));
  ah_host_free(h);
}

static void test_memory_limit_of_attached_host_is_einval(void) {
  lua_State *L = luaL_newstate();
  ah_host *h;
  luaL_openlibs(L);
  h = ah_host_attach(L, NULL);
  ASSERT(h != NULL);
  ASSERT_INT(ah_host_set_memory_limit(h, 64 * MB), AH_EINVAL);
  ASSERT_HAS(ah_host_error(h), "allocator");
  ASSERT(ah_host_memory(h) > 0);
  ASSERT_INT(ah_host_memory_limit(h), 0);
  lua_close(L); /* frees the host */
}

static void test_cpu_limit_fails_a_task_that_does_not_yield(void) {
  outcome a = {0}, b = {0};
  ah_host *h = ah_host_new(NULL);
  ASSERT_INT(ah_host_set_cpu_limit(h, -1), AH_EINVAL);
  ASSERT_INT(ah_host_set_cpu_limit(h, 0.1), AH_OK);
  spawn(h, "return function() while true do end end", &a);
  spawn(h, ticker, &b);
  ASSERT_INT(ah_host_run(h), 0);
  ASSERT_INT(a.status, AH_ERUN);
  ASSERT_HAS(a.text, "cpu: task ran 0.1 s without yielding");
  ASSERT_INT(b.status, AH_OK);
  ASSERT_HAS(b.text, "ticked 20");
  ah_host_free(h);
}

static void test_cpu_limit_off_removes_the_hook(void) {
  outcome a = {0}, b = {0};
  ah_host *h = ah_host_new(NULL);
  ASSERT_INT(ah_host_set_cpu_limit(h, 5), AH_OK);
  spawn(h,
        "return function() "
        "  return tostring(debug.gethook(coroutine.running()) ~= nil) end",
        &a);
  ah_host_run(h);
  ASSERT_HAS(a.text, "true");
  ASSERT_INT(ah_host_set_cpu_limit(h, 0), AH_OK);
  spawn(h,
        "return function() for i = 1, 1e4 do end "
        "  return tostring(debug.gethook(coroutine.running()) ~= nil) end",
        &b);
  ah_host_run(h);
  ASSERT_HAS(b.text, "false");
  ah_host_free(h);
}

static const struct {
  const char *name;
  void (*fn)(void);
} tests[] = {
#define T(name)                                                                \
  { #name, test_##name }
    T(memory_limit_fails_only_the_greedy_task),
    T(memory_over_limit_outside_tasks_is_not_refused),
    T(memory_counts_what_the_state_holds),
    T(memory_limit_of_attached_host_is_einval),
    T(cpu_limit_fails_a_task_that_does_not_yield),
    T(cpu_limit_off_removes_the_hook),
#undef T
};

int main(int argc, char **argv) {
  size_t i, n = sizeof tests / sizeof tests[0];
  int run = 0, a;
  setvbuf(stdout, NULL, _IONBF, 0);
  for (i = 0; i < n; i++) {
    int selected = argc < 2;
    for (a = 1; a < argc; a++)
      if (strcmp(argv[a], tests[i].name) == 0) selected = 1;
    if (!selected) continue;
    tests[i].fn(); /* a failure aborts with the assertion */
    printf("ok %d - %s\n", ++run, tests[i].name);
  }
  if (run == 0) {
    fprintf(stderr, "no test named so\n");
    return 1;
  }
  printf("%d passed, 0 failed\n", run);
  return 0;
}
