/*
** asynchost: Lua 5.4 tasks on a libuv loop.
**
** The public C API. Embedding applications and the bindings in bindings/
** use exactly this header; see docs/embedding.md.
*/
#ifndef ASYNCHOST_H
#define ASYNCHOST_H

#include <stdint.h>

#include <lua.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AH_VERSION "0.1.0"

typedef struct ah_host ah_host;
typedef struct ah_task ah_task;

/* Error codes: 0 or negative, with a name and a message, as in libuv. */
#define AH_OK 0
#define AH_ENOMEM (-1)    /* out of memory */
#define AH_ESYNTAX (-2)   /* the chunk does not compile */
#define AH_EFILE (-3)     /* the script cannot be read */
#define AH_ERUN (-4)      /* the task raised an error */
#define AH_EINVAL (-5)    /* bad argument */
#define AH_ECANCELED (-6) /* the task was cancelled */

const char *ah_strerror(int code);
const char *ah_err_name(int code);

/* ---- hosts ---------------------------------------------------------- */

typedef struct ah_options {
  uv_loop_t *loop;   /* run on this loop; NULL: the host makes its own */
  int globals;       /* also install the Lua API as globals */
  int signals;       /* handle SIGINT/SIGTERM as the CLI does, including
                        a task that runs on without yielding: it is
                        cancelled 1 s after the signal (SIGPIPE is
                        ignored by every host unless the application set a
                        handler) */
  const char *path;  /* prepended to package.path (may be NULL) */
  const char *cpath; /* prepended to package.cpath (may be NULL) */
} ah_options;

/* A host owns one lua_State and drives its tasks on one loop.
   Returns NULL when out of memory. Hosts share nothing: several may live
   in one process (each on its own thread, or several on one loop). */
ah_host *ah_host_new(const ah_options *opts);

/* A host on a lua_State the caller made (a Lua C module's luaopen_ uses
   it: the state belongs to the interpreter). It adds the asynchost module
   (package.loaded.asynchost), the task-aware coroutine library and the
   yieldable require, print and os.exit to L, and leaves L's panic handler
   alone. The host is freed when L is closed (a registry userdata with
   __gc), or earlier by ah_host_free, which then leaves L open: the Lua
   API of the host must not be called after that. Returns NULL when out
   of memory, when the state cannot be set up (ah_host_error is not
   available then), or when L already has a host. */
ah_host *ah_host_attach(lua_State *L, const ah_options *opts);

/* Cancels what still runs, closes every handle the host made, closes the
   Lua state (unless it came from ah_host_attach) and, if the host made
   its loop, the loop. */
void ah_host_free(ah_host *h);

lua_State *ah_host_lua(ah_host *h);
uv_loop_t *ah_host_loop(ah_host *h);
ah_host *ah_host_of(lua_State *L);

/* The message of the last failed ah_host_* call or uncaught task error. */
const char *ah_host_error(ah_host *h);

/* Loads the file (NULL: stdin) and starts it as a task with the strings
   argv[0..argc-1] as its arguments (`...`). */
int ah_host_spawn_file(ah_host *h, const char *path, int argc,
                       const char *const *argv, ah_task **out);

/* Compiles and starts a chunk as a task. */
int ah_host_spawn_string(ah_host *h, const char *chunk, const char *name,
                         ah_task **out);

/* Called once when a task started from C ends. On AH_OK the nres results
   are the top values of L; on AH_ERUN or AH_ECANCELED the error value is
   on top of L (ah_host_error has it as text). Do not keep L. */
typedef void (*ah_done_fn)(ah_task *t, lua_State *L, int status, int nres,
                           void *data);

/* Pops a function and nargs arguments from ah_host_lua(h) and starts
   fn(args...) as a task. done (may be NULL) is called when it ends.
   Returns AH_EINVAL, popping nothing, when there is no function below
   the arguments. */
int ah_host_spawn_call(ah_host *h, int nargs, ah_done_fn done, void *data,
                       ah_task **out);

/* Runs the loop until no task, server or handle of the host is left
   (uv_run(UV_RUN_DEFAULT) on the host's loop). Returns the exit status a
   CLI would use: 0, 1 after an uncaught error, or os.exit's code. */
int ah_host_run(ah_host *h);

/* Whether the host still has tasks that have not ended. */
int ah_host_busy(ah_host *h);

/* The exit status so far; see ah_host_run. */
int ah_host_status(ah_host *h);

/* Starts a graceful shutdown as SIGTERM does: servers stop accepting,
   tasks get `shutdown_timeout` seconds, then are cancelled. */
void ah_host_shutdown(ah_host *h);

/* ---- limits --------------------------------------------------------- */

/* Caps the bytes the host's Lua state may hold (0, the default: no cap).
   An allocation inside a task that would pass it fails after an emergency
   collection: that task gets "not enough memory" like any error (pcall
   catches it; uncaught, it is reported) and the other tasks go on. The
   host's own work between tasks is never refused, so it cannot panic.
   AH_EINVAL on a host made by ah_host_attach (the allocator is the
   application's). */
int ah_host_set_memory_limit(ah_host *h, size_t bytes);

/* The bytes the host's Lua state holds now; its cap (0: none). */
size_t ah_host_memory(ah_host *h);
size_t ah_host_memory_limit(ah_host *h);

/* Fails a task that runs `seconds` without yielding with "cpu: task ran
   N s without yielding", raised where it runs (pcall and <close> see it).
   If it still runs another `seconds` without yielding (a pcall caught the
   error), it is stopped for good. Checked every 1000 Lua instructions by
   a count hook; 0 (the default) installs no hook. AH_EINVAL if seconds is
   negative. */
int ah_host_set_cpu_limit(ah_host *h, double seconds);

/* Hooks that bindings and applications hang on the host's life. */
#define AH_ON_SHUTDOWN 0 /* a graceful shutdown began: stop accepting */
#define AH_ON_CLOSE 1    /* the host is being freed: release everything */
typedef void (*ah_hook_fn)(ah_host *h, void *data);
int ah_host_hook(ah_host *h, int event, ah_hook_fn fn, void *data);
void ah_host_unhook(ah_host *h, int event, ah_hook_fn fn, void *data);

/* A live-object count per kind ("timer", "fetch", "db.conn", ...), shown
   by asynchost.stats() so tests can check nothing is left behind. kind
   must be a string with static storage. */
void ah_host_count(ah_host *h, const char *kind, int delta);

/* uv_close(handle) counted by the host, so ah_host_free can wait for the
   close callback; on_close (may be NULL) runs after, e.g. to free it. */
void ah_host_close_handle(ah_host *h, uv_handle_t *handle,
                          uv_close_cb on_close);

/* ---- tasks: what an async Lua function in C does ---------------------

   An async function (see bindings/sleep.c, the smallest one):
     1. ah_task_check(L, "name") -- raises if L cannot suspend here;
     2. starts its libuv/libcurl/libpq operation;
     3. return ah_task_suspend(L, cancel, op, k, (lua_KContext)op);
   When the operation completes, its callback records the result in `op`
   and calls ah_task_resume(task). The host then runs k(L, LUA_YIELD, ctx)
   inside the task; k pushes the results and returns their count.

   If the task is cancelled first (task:cancel(), timeout(), a failing
   sibling in gather), the host calls cancel(data) instead: it must stop
   the operation so that it never resumes the task and free what it owns;
   the suspended call then raises "cancelled: ...". If the cancellation
   comes after ah_task_resume, k still runs (to free `op`) and its results
   are discarded before "cancelled: ..." is raised. */

typedef void (*ah_cancel_fn)(void *data);

/* The task running L. Raises a Lua error saying where and why if L cannot
   suspend: not inside a task, a C call boundary (table.sort comparator,
   string.gsub callback, __gc, ...) between L and its task, or the task
   was cancelled (cancellation is sticky). fname names the caller. */
ah_task *ah_task_check(lua_State *L, const char *fname);

/* Suspends the task that runs L (just checked with ah_task_check). Use as
   the return expression of a lua_CFunction. */
int ah_task_suspend(lua_State *L, ah_cancel_fn cancel, void *data,
                    lua_KFunction k, lua_KContext ctx);

/* Lets the other ready tasks run, then goes on (sleep(0)). Use as the
   return expression of a lua_CFunction; it returns no values. */
int ah_task_yield(lua_State *L);

/* Whether the task has a cancellation pending (task:cancel() or an expired
   timeout). A continuation that would take something (a semaphore permit,
   a queue item) checks this and leaves it for others. */
int ah_task_cancelling(ah_task *t);

/* Makes a suspended task runnable; its continuation runs soon, from the
   loop, never inside this call. Safe from any loop callback. */
void ah_task_resume(ah_task *t);

/* Runs the tasks that are ready now, instead of waiting for the loop's
   check phase. For the end of an I/O callback that just made a task ready
   (a request parsed: its handler can answer before the next connection is
   read), once the binding's own state is consistent: the tasks may do
   anything, including closing the handle whose callback this is. Does
   nothing inside a task. Never call it from a libcurl or libpq callback. */
void ah_host_run_ready(ah_host *h);

/* Cancels the task and its children: the pending operation is aborted at
   once. A task that never started never runs. */
void ah_task_cancel(ah_task *t);

/* The running task, or NULL outside tasks. */
ah_task *ah_task_current(ah_host *h);
ah_host *ah_task_host(ah_task *t);
unsigned ah_task_id(ah_task *t);
/* Pushes the Lua task object. */
void ah_task_push(lua_State *L, ah_task *t);

/* ---- timers ---------------------------------------------------------
   Timers on the host's own heap (one uv_timer for all of them): cheaper
   than a uv_timer_t per sleep. The caller owns the memory. */

typedef struct ah_timer ah_timer;
typedef void (*ah_timer_fn)(ah_timer *t);
struct ah_timer {
  uint64_t due;   /* uv_hrtime() nanoseconds; private */
  uint64_t seq;   /* private: orders equal deadlines */
  uint32_t slot;  /* private: heap position + 1, 0 when inactive */
  ah_timer_fn fn; /* private */
};

void ah_timer_start(ah_host *h, ah_timer *t, double seconds, ah_timer_fn fn);
void ah_timer_stop(ah_host *h, ah_timer *t);
int ah_timer_active(const ah_timer *t);

/* Monotonic seconds (uv_hrtime). */
double ah_now(void);

/* ---- failures -------------------------------------------------------
   Expected failures are returned as nil, "<kind>: <detail>". */
int ah_push_fail(lua_State *L, const char *kind, const char *fmt, ...);

#ifdef __cplusplus
}
#endif
#endif
