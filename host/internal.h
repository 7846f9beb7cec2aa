/*
** Internals shared between host/ files (ah__ prefix). Bindings must not
** include this: they use asynchost.h only.
*/
#ifndef AH_INTERNAL_H
#define AH_INTERNAL_H

#include <signal.h>
#include <stddef.h>

#include <lauxlib.h>

#include "asynchost.h"

#define ah__container_of(p, type, field)                                       \
  ((type *)((char *)(p)-offsetof(type, field)))

/* A watcher is told once when a task is done (wait, gather, wait()). */
typedef struct ah__watch ah__watch;
typedef void (*ah__watch_fn)(ah__watch *w, ah_task *t);
struct ah__watch {
  ah__watch *next, *prev;
  ah_task *task;
  ah__watch_fn fn;
};

/* A timeout scope on a task's stack of deadlines. */
typedef struct ah__scope ah__scope;
struct ah__scope {
  ah_timer timer;
  ah__scope *outer;
  ah_task *task;
  double seconds;
  int expired;
};

enum { AH__NEW, AH__RUNNING, AH__SUSPENDED, AH__ENDED, AH__DONE };
enum { AH__OK, AH__FAILED, AH__CANCELLED };

struct ah_task {
  ah_host *host;
  lua_State *co;
  ah_task *parent, *child, *prev, *next; /* the task tree */
  ah_task *qnext;                        /* the ready queue */
  ah__watch *watchers;
  ah_cancel_fn cancel; /* pending operation's hook */
  void *cancel_data;
  lua_KFunction k; /* binding's continuation */
  lua_KContext kctx;
  ah__scope *scope; /* innermost timeout */
  ah_done_fn done;  /* C caller's completion callback */
  void *done_data;
  const char *reason; /* why it was cancelled */
  int ref;            /* registry ref while not done */
  int nres;           /* values left on co when done */
  int line;           /* where it was spawned (function in uservalue 2) */
  unsigned id;
  unsigned nchildren;
  unsigned char state, outcome;
  unsigned char cancelled;   /* sticky */
  unsigned char waiting;     /* suspended, not yet resumed */
  unsigned char interrupted; /* the hook ran: raise at resume */
  unsigned char queued, detached, fatal, has_perr;
};

typedef struct ah__hook {
  int event;
  ah_hook_fn fn;
  void *data;
} ah__hook;

typedef struct ah__count {
  const char *kind;
  long n;
} ah__count;

struct ah_host {
  uv_loop_t *loop;
  uv_loop_t own_loop;
  lua_State *L;
  int owns_loop, signals;
  int borrowed; /* L is the application's (ah_host_attach) */
  ah_task root; /* parent of top-level tasks; never runs */
  ah_task *current;
  lua_State **rstack; /* coroutines resumed from the current task down */
  int rdepth, rcap;
  int suspending; /* set between ah_task_suspend and the scheduler */
  ah_task *qhead, *qtail;
  uv_idle_t idle;
  uv_check_t check;
  uv_prepare_t prepare;
  uv_timer_t timer; /* without a timerfd: whole milliseconds */
  uv_poll_t tpoll;  /* on tfd: nanosecond deadlines (Linux) */
  int tfd;          /* -1 when there is none */
  ah_timer **heap;
  uint32_t nheap, cheap;
  uint64_t tseq;
  uint64_t armed; /* deadline the clock is set for, 0 if stopped */
  unsigned next_id;
  unsigned ntasks;
  int status;  /* exit status so far */
  int exiting; /* os.exit was called */
  int exit_close;
  int shutdown; /* signal number or -1 once a shutdown began */
  double shutdown_timeout;
  uv_signal_t sigint, sigterm;
  uv_timer_t drain;
  ah__hook *hooks;
  int nhooks, chooks;
  ah__count counts[48];
  int ncounts;
  int closing;  /* handles whose close callback has not run yet */
  int ref_tb;   /* registry: {err, traceback} of the last error seen */
  int ref_perr; /* registry: parent task -> failed child task */
  char *error;
  int freeing;
  /* limits.c: memory, time without yielding, signals while Lua runs */
  size_t mem_used, mem_limit; /* bytes; limit 0: none */
  uint64_t cpu_limit;         /* ns a task may run without yielding; 0: none */
  uint64_t resumed_at;        /* uv_hrtime() when the current task resumed */
  uint64_t sig_at;            /* when the hook first saw the signal */
  volatile sig_atomic_t limits;    /* hooks wanted: LIMIT_CPU | LIMIT_SIGNAL */
  volatile sig_atomic_t sig_count; /* SIGINT/SIGTERM seen by the handler */
  volatile sig_atomic_t sig_num;   /* the last of them */
  int sig_early; /* signals the hook acted on before the loop saw them */
  int strikes;   /* limit errors raised since the task resumed */
  int stopping;  /* the hook yielded to stop the task for good */
  char stop_msg[96];
};

/* host.c */
void ah__host_report(ah_host *h, const char *msg);
void ah__set_error(ah_host *h, const char *msg);
void ah__flush_stdout(ah_host *h);
void ah__request_exit(ah_host *h, int code, int close);

/* task.c */
void ah__queue_push(ah_host *h, ah_task *t);
void ah__run_ready(ah_host *h);
ah_task *ah__task_new(lua_State *L, ah_task *parent, int nargs);
ah_task *ah__task_check(lua_State *L, int idx);
ah_task *ah__task_test(lua_State *L, int idx);
void ah__task_detach(ah_task *t);
void ah__cancel_reason(ah_task *t, const char *reason);
void ah__interrupt(ah_task *t);
void ah__watch_add(ah_task *t, ah__watch *w, ah__watch_fn fn);
void ah__watch_remove(ah__watch *w);
int ah__task_results(lua_State *L, ah_task *t, int first_only);
int ah__task_raise(lua_State *L, int idx);
int ah__raise_cancelled(lua_State *L, ah_task *t);
const char *ah__task_status(ah_task *t);
void ah__task_where(lua_State *L, int idx);
void ah__cancel_all(ah_host *h, const char *reason);
int ah__is_cancel_error(lua_State *L, int idx);
void ah__tasklib_open(lua_State *L, int mod);
void ah__push_traceback_msgh(lua_State *L);

/* limits.c */
#define AH__LIMIT_CPU 1
#define AH__LIMIT_SIGNAL 2
void ah__alloc_install(ah_host *h);
void ah__limits_resume(ah_host *h, lua_State *co);
void ah__signals_register(ah_host *h);
void ah__signals_unregister(ah_host *h);
int ah__signal_seen_early(ah_host *h);
void ah__signal_exit(int signum);

/* timer.c */
int ah__timers_init(ah_host *h);
void ah__timers_close(ah_host *h);

/* coro.c: the task-aware coroutine library */
void ah__coro_open(lua_State *L);

/* scope.c: timeout() */
int ah__scope_expired(ah_task *t);
void ah__scope_open(lua_State *L, int mod);

/* module.c: require "asynchost" and the CLI globals */
int ah__load_lua(lua_State *L, const char *name);
void ah__module_open(lua_State *L, int globals);

#endif
