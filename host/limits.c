/*
** Limits on what Lua may take: memory (a counting allocator), time without
** yielding (a count hook), and a task that keeps running when SIGINT or
** SIGTERM arrives (a hook set from the signal handler, as lua.c does).
*/
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define HOOK_COUNT 1000  /* Lua instructions between two looks at the clock */
#define SIGNAL_GRACE 1.0 /* s a task may run on without yielding after one */
#define NS 1e9

/* ---- memory ----------------------------------------------------------- */

/* lua_Alloc counting the bytes. Growth past the limit is refused only
   inside a task, where every Lua call is protected; the host's C code
   between tasks (reports, task objects) must never meet an error. */
static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  ah_host *h = ud;
  size_t old = ptr ? osize : 0; /* osize is a type tag when ptr is NULL */
  void *p;
  if (nsize == 0) {
    free(ptr);
    h->mem_used -= old;
    return NULL;
  }
  if (nsize > old && h->mem_limit && h->current &&
      h->mem_used + (nsize - old) > h->mem_limit)
    return NULL; /* Lua collects and tries once more, then raises */
  p = realloc(ptr, nsize);
  if (p) h->mem_used = h->mem_used - old + nsize;
  return p;
}

/* On a new state (luaL_newstate's: it also sets the warning function),
   whose blocks realloc and free can take over. */
void ah__alloc_install(ah_host *h) {
  h->mem_used = (size_t)lua_gc(h->L, LUA_GCCOUNT, 0) * 1024 +
                (size_t)lua_gc(h->L, LUA_GCCOUNTB, 0);
  lua_setallocf(h->L, counting_alloc, h);
}

int ah_host_set_memory_limit(ah_host *h, size_t bytes) {
  if (h->borrowed) {
    ah__set_error(h, "the Lua state is the application's: limit its memory "
                     "with an allocator of its own");
    return AH_EINVAL;
  }
  h->mem_limit = bytes;
  return AH_OK;
}

size_t ah_host_memory(ah_host *h) {
  if (h->borrowed)
    return (size_t)lua_gc(h->L, LUA_GCCOUNT, 0) * 1024 +
           (size_t)lua_gc(h->L, LUA_GCCOUNTB, 0);
  return h->mem_used;
}

size_t ah_host_memory_limit(ah_host *h) {
  return h->mem_limit;
}

/* ---- the hook --------------------------------------------------------- */

static void limits_hook(lua_State *L, lua_Debug *ar);

int ah_host_set_cpu_limit(ah_host *h, double seconds) {
  if (!(seconds >= 0) || seconds > 1e9) return AH_EINVAL;
  h->cpu_limit = (uint64_t)(seconds * NS);
  if (h->cpu_limit)
    h->limits |= AH__LIMIT_CPU;
  else
    h->limits &= ~AH__LIMIT_CPU;
  return AH_OK;
}

/* Called by the scheduler before it resumes a task, when limits are on. */
void ah__limits_resume(ah_host *h, lua_State *co) {
  h->resumed_at = uv_hrtime();
  h->strikes = 0;
  if (lua_gethook(co) != limits_hook)
    lua_sethook(co, limits_hook, LUA_MASKCOUNT, HOOK_COUNT);
}

void ah__signal_exit(int signum) {
  fflush(stdout);
  fprintf(stderr, "asynchost: %s again, exiting now\n",
          signum == SIGINT ? "interrupted" : "terminated");
  _Exit(128 + signum);
}

/* The first signal while a task would not yield: the shutdown begins here,
   as the loop would begin it (it will skip the signal when it sees it). */
static void signal_shutdown(ah_host *h) {
  if (h->shutdown) return;
  if (h->sig_num == SIGINT && h->status == 0) h->status = 130;
  ah_host_shutdown(h);
  h->shutdown = h->sig_num;
  h->sig_early++;
}

int ah__signal_seen_early(ah_host *h) {
  if (h->sig_early == 0) return 0;
  h->sig_early--;
  return 1;
}

/* Whether every coroutine from the task down to L can yield. */
static int can_stop(ah_host *h, lua_State *L) {
  int i;
  if (h->rdepth == 0 || h->rstack[h->rdepth - 1] != L) return 0;
  for (i = 0; i < h->rdepth; i++)
    if (!lua_isyieldable(h->rstack[i])) return 0;
  return 1;
}

/* Raises in the task that ran too long (cancelling it first when a signal
   is the reason); a new period starts, so its pcall handlers and <close>
   variables get their turn. At the second strike (the task caught the
   error and ran on) it yields out of the hook instead, through its
   coroutines as a suspension does, and the scheduler ends it as failed,
   closing its <close> variables. The yield happens when the hook returns. */
static void strike(ah_host *h, lua_State *L, uint64_t now, const char *msg,
                   const char *reason) {
  h->resumed_at = now;
  if (reason) ah__cancel_reason(h->current, reason);
  if (h->strikes++ > 0 && can_stop(h, L)) {
    snprintf(h->stop_msg, sizeof h->stop_msg, "%s", msg);
    h->stopping = 1;
    h->suspending = h->rdepth > 1; /* coroutine.resume passes it up */
    lua_yield(L, 0);
    return;
  }
  lua_pushstring(L, msg);
  lua_error(L);
}

static void check_signal(ah_host *h, lua_State *L, uint64_t now) {
  double grace =
      h->shutdown_timeout < SIGNAL_GRACE ? h->shutdown_timeout : SIGNAL_GRACE;
  uint64_t since = h->resumed_at > h->sig_at ? h->resumed_at : h->sig_at;
  const char *reason =
      h->sig_num == SIGINT ? "interrupted (SIGINT)" : "terminated (SIGTERM)";
  char msg[96];
  if (now - since < (uint64_t)(grace * NS)) return;
  signal_shutdown(h);
  snprintf(msg, sizeof msg,
           "cancelled: %s: the task ran %.1f s without yielding", reason,
           (double)(now - since) / NS);
  strike(h, L, now, msg, reason);
}

static void check_cpu(ah_host *h, lua_State *L, uint64_t now) {
  char msg[96];
  if (now - h->resumed_at < h->cpu_limit) return;
  snprintf(msg, sizeof msg, "cpu: task ran %.1f s without yielding",
           (double)(now - h->resumed_at) / NS);
  strike(h, L, now, msg, NULL);
}

static void limits_hook(lua_State *L, lua_Debug *ar) {
  ah_host *h = ah_host_of(L);
  uint64_t now;
  (void)ar;
  if (!h) return;
  if (h->sig_count > 1) ah__signal_exit(h->sig_num);
  if (!h->limits) {
    lua_sethook(L, NULL, 0, 0); /* nothing left to watch */
    return;
  }
  if (!h->current || h->stopping) return; /* only tasks are limited */
  now = uv_hrtime();
  if (h->sig_count) {
    if (!h->sig_at) h->sig_at = now;
    check_signal(h, L, now);
  }
  if (h->cpu_limit && !h->stopping) check_cpu(h, L, now);
}

/* ---- signals ------------------------------------------------------------
   libuv's signal handler only wakes the loop, which cannot run while Lua
   loops. Ours runs first on the thread that got the signal, then libuv's.
   It sets the hook on the coroutines the host runs now (lua_sethook may be
   called from a signal handler; hosts of other threads get the signal
   sent on to them). */

#define MAX_HOSTS 16

typedef struct sig_slot {
  _Atomic(ah_host *) host;
  pthread_t thread;
} sig_slot;

static sig_slot slots[MAX_HOSTS];
static struct sigaction next_action[2]; /* libuv's, for SIGINT and SIGTERM */
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;

static void interrupt(ah_host *h, int signum) {
  int i, n = h->rdepth;
  h->sig_num = signum;
  h->sig_count++;
  h->limits |= AH__LIMIT_SIGNAL;
  if (!h->current) return;
  for (i = 0; i < n && i < h->rcap; i++)
    lua_sethook(h->rstack[i], limits_hook, LUA_MASKCOUNT, HOOK_COUNT);
}

static void on_signal(int signum) {
  const struct sigaction *next = &next_action[signum == SIGINT ? 0 : 1];
  pthread_t self = pthread_self();
  int i, saved = errno, mine = 0, other = -1;
  for (i = 0; i < MAX_HOSTS; i++) {
    ah_host *h = atomic_load(&slots[i].host);
    if (!h) continue;
    if (!pthread_equal(slots[i].thread, self))
      other = i;
    else {
      mine = 1;
      interrupt(h, signum);
    }
  }
  if (!mine && other >= 0) /* libuv's handler runs there */
    pthread_kill(slots[other].thread, signum);
  else if (next->sa_handler != SIG_DFL && next->sa_handler != SIG_IGN)
    next->sa_handler(signum);
  errno = saved;
}

/* Puts on_signal before the handler libuv installed (again after libuv
   restored the default when its last signal handle closed). */
static void chain(int signum, struct sigaction *next) {
  struct sigaction sa, cur;
  if (sigaction(signum, NULL, &cur) != 0 || cur.sa_handler == on_signal ||
      (cur.sa_flags & SA_SIGINFO))
    return;
  *next = cur;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigfillset(&sa.sa_mask);
  sigaction(signum, &sa, NULL);
}

static void unchain(int signum, struct sigaction *next) {
  struct sigaction cur;
  if (sigaction(signum, NULL, &cur) == 0 && cur.sa_handler == on_signal)
    sigaction(signum, next, NULL);
}

void ah__signals_register(ah_host *h) {
  int i;
  pthread_mutex_lock(&slots_lock);
  for (i = 0; i < MAX_HOSTS; i++)
    if (!atomic_load(&slots[i].host)) {
      slots[i].thread = pthread_self();
      atomic_store(&slots[i].host, h);
      chain(SIGINT, &next_action[0]);
      chain(SIGTERM, &next_action[1]);
      break;
    }
  pthread_mutex_unlock(&slots_lock);
}

void ah__signals_unregister(ah_host *h) {
  int i, left = 0;
  pthread_mutex_lock(&slots_lock);
  for (i = 0; i < MAX_HOSTS; i++) {
    if (atomic_load(&slots[i].host) == h) atomic_store(&slots[i].host, NULL);
    if (atomic_load(&slots[i].host)) left++;
  }
  if (!left) {
    unchain(SIGINT, &next_action[0]);
    unchain(SIGTERM, &next_action[1]);
  }
  pthread_mutex_unlock(&slots_lock);
}
