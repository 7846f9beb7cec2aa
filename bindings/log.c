/*
** The ops helpers: log.debug/info/warn/error, progress bars, env and
** signal handlers.
**
** Log lines go to stderr as "HH:MM:SS.mmm LEVEL [task N] message", after
** stdout is flushed so the two interleave in order. A progress bar on a
** terminal is one line redrawn in place (log lines are written above it);
** elsewhere it is a log line every few seconds. Bar timers and signal
** handles are unref'd: they never keep the process alive.
*/
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "bindings.h"

#define BAR_MT "asynchost.progress"
#define SIGNAL_MT "asynchost.signal"

enum { L_DEBUG, L_INFO, L_WARN, L_ERROR };
static const char *const level_names[] = {"debug", "info", "warn", "error",
                                          NULL};
static const char *const level_tags[] = {"DEBUG", "INFO", "WARN", "ERROR"};

typedef struct bar bar;

/* Per host, in the registry: the threshold and the bar on screen. */
typedef struct logstate {
  int level;
  bar *shown; /* the terminal bar whose line is on screen, if any */
  int width;  /* how wide that line is */
} logstate;

static const char state_key = 'l';

static logstate *get_state(lua_State *L) {
  logstate *ls;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key);
  ls = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return ls;
}

static int parse_level(const char *s) {
  int i;
  for (i = 0; level_names[i]; i++)
    if (strcasecmp(s, level_names[i]) == 0) return i;
  if (strcasecmp(s, "warning") == 0) return L_WARN;
  return -1;
}

/* "HH:MM:SS.mmm", local time. */
static void clock_text(char out[16]) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  localtime_r(&ts.tv_sec, &tm);
  snprintf(out, 16, "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec,
           (int)(ts.tv_nsec / 1000000));
}

static void bar_draw(bar *b);
static void bar_erase(bar *b);

/* Writes one log line (msg, len bytes) with its prefix; id 0: no task. */
static void emit(logstate *ls, int level, unsigned id, const char *msg,
                 size_t len) {
  char head[64];
  int n;
  clock_text(head);
  if (id)
    n = snprintf(head + 12, sizeof head - 12, " %s [task %u] ",
                 level_tags[level], id);
  else
    n = snprintf(head + 12, sizeof head - 12, " %s ", level_tags[level]);
  fflush(stdout);
  if (ls && ls->shown) bar_erase(ls->shown);
  {
    /* one write, so lines from several processes do not mix */
    char small[512];
    size_t total = 12 + (size_t)n + len + 1;
    char *line = total <= sizeof small ? small : malloc(total);
    if (line) {
      memcpy(line, head, 12 + (size_t)n);
      memcpy(line + 12 + n, msg, len);
      line[total - 1] = '\n';
      fwrite(line, 1, total, stderr);
      if (line != small) free(line);
    } else {
      fputs(head, stderr);
      fwrite(msg, 1, len, stderr);
      fputc('\n', stderr);
    }
  }
  fflush(stderr);
  if (ls && ls->shown) bar_draw(ls->shown);
}

static unsigned current_task_id(lua_State *L) {
  ah_task *t = ah_task_current(ah_host_of(L));
  return t ? ah_task_id(t) : 0;
}

/* log.<level>(...): the arguments as print joins them */
static int l_log(lua_State *L) {
  int level = (int)lua_tointeger(L, lua_upvalueindex(1)), n, i;
  logstate *ls = get_state(L);
  luaL_Buffer b;
  size_t len;
  const char *msg;
  if (level < ls->level) return 0;
  n = lua_gettop(L);
  luaL_buffinit(L, &b);
  for (i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  msg = lua_tolstring(L, -1, &len);
  emit(ls, level, current_task_id(L), msg, len);
  return 0;
}

/* For C code (a server's error report, say): a log line at level
   ("debug", "info", "warn" or "error"), with the running task's id. Not
   declared in bindings.h yet; see docs/log.md. */
void ah_log(lua_State *L, const char *level, const char *fmt, ...);
void ah_log(lua_State *L, const char *level, const char *fmt, ...) {
  logstate *ls = get_state(L);
  int lv = parse_level(level);
  char small[1024], *msg = small;
  va_list ap;
  int n;
  if (lv < 0) lv = L_ERROR;
  if (!ls || lv < ls->level) return;
  va_start(ap, fmt);
  n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof small && (msg = malloc((size_t)n + 1)) != NULL) {
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  if (!msg) msg = small, n = (int)strlen(small);
  emit(ls, lv, current_task_id(L), msg, (size_t)n);
  if (msg != small) free(msg);
}

/* log.level([name]) -> the threshold's name (after setting it) */
static int l_level(lua_State *L) {
  logstate *ls = get_state(L);
  if (!lua_isnoneornil(L, 1)) {
    int level = parse_level(luaL_checkstring(L, 1));
    luaL_argcheck(L, level >= 0, 1, "level must be debug, info, warn or error");
    ls->level = level;
  }
  lua_pushstring(L, level_names[ls->level]);
  return 1;
}

/* ---- progress ------------------------------------------------------------ */

struct bar {
  uv_timer_t timer; /* unref'd: redraws (terminal) or reports (otherwise) */
  ah_host *host;
  logstate *ls;
  char *label;
  lua_Integer total; /* < 0: unknown */
  lua_Integer ok, failed;
  double start, last; /* ah_now() at creation, at the last draw */
  double interval;    /* seconds between plain lines */
  int tty, dirty, done;
};

/* "4.2s", "3:07", "1:02:03" */
static void fmt_duration(char *out, size_t size, double s) {
  long t;
  if (s < 0) s = 0;
  if (s < 59.95) {
    snprintf(out, size, "%.1fs", s);
    return;
  }
  t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(out, size, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else
    snprintf(out, size, "%ld:%02ld", t / 60, t % 60);
}

static void fmt_rate(char *out, size_t size, double rate) {
  snprintf(out, size, rate >= 100 ? "%.0f/s" : "%.1f/s", rate);
}

/* The bar's text, without the terminal's [####----] part: the counts. */
static int bar_text(bar *b, char *out, size_t size, int final) {
  lua_Integer count = b->ok + b->failed;
  double elapsed = ah_now() - b->start;
  double rate = elapsed > 0 ? (double)count / elapsed : 0;
  char r[32], t[32];
  fmt_rate(r, sizeof r, rate);
  if (final) {
    fmt_duration(t, sizeof t, elapsed);
    if (b->total >= 0)
      return snprintf(out, size,
                      "done %" LUA_INTEGER_FRMLEN "d/%" LUA_INTEGER_FRMLEN
                      "d in %s (%s) ok %" LUA_INTEGER_FRMLEN
                      "d failed %" LUA_INTEGER_FRMLEN "d",
                      count, b->total, t, r, b->ok, b->failed);
    return snprintf(out, size,
                    "done %" LUA_INTEGER_FRMLEN
                    "d in %s (%s) ok %" LUA_INTEGER_FRMLEN
                    "d failed %" LUA_INTEGER_FRMLEN "d",
                    count, t, r, b->ok, b->failed);
  }
  if (b->total >= 0) {
    int pct =
        b->total > 0 ? (int)((double)count * 100 / (double)b->total) : 100;
    if (pct > 100) pct = 100;
    if (rate > 0 && count < b->total)
      fmt_duration(t, sizeof t, (double)(b->total - count) / rate);
    else
      snprintf(t, sizeof t, count >= b->total ? "0.0s" : "?");
    return snprintf(out, size,
                    "%" LUA_INTEGER_FRMLEN "d/%" LUA_INTEGER_FRMLEN
                    "d %d%% %s ETA %s ok %" LUA_INTEGER_FRMLEN
                    "d failed %" LUA_INTEGER_FRMLEN "d",
                    count, b->total, pct, r, t, b->ok, b->failed);
  }
  fmt_duration(t, sizeof t, elapsed);
  return snprintf(out, size,
                  "%" LUA_INTEGER_FRMLEN
                  "d %s elapsed %s ok %" LUA_INTEGER_FRMLEN
                  "d failed %" LUA_INTEGER_FRMLEN "d",
                  count, r, t, b->ok, b->failed);
}

static int term_columns(void) {
  struct winsize ws;
  if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    return ws.ws_col;
  return 80;
}

/* Cuts s to at most max bytes without splitting a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len, size_t max) {
  if (len <= max) return len;
  while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
  return max;
}

/* Pads line with spaces over what the last draw left on screen. */
static void b_pad(bar *b, char *line, size_t *n, size_t size) {
  size_t shown = *n - 1;
  while ((int)shown < b->ls->width && *n < size) {
    line[(*n)++] = ' ';
    shown++;
  }
}

/* Terminal: "\r<label> [#####-----] <counts>", padded over the old line. */
static void bar_draw(bar *b) {
  char text[200], line[512];
  lua_Integer count = b->ok + b->failed;
  size_t n = 0, cols = (size_t)term_columns() - 1, len;
  int tn = bar_text(b, text, sizeof text, b->done);
  line[n++] = '\r';
  if (b->label[0]) {
    len = utf8_cut(b->label, strlen(b->label), 60);
    memcpy(line + n, b->label, len);
    n += len;
    line[n++] = ' ';
  }
  if (b->total >= 0) {
    int width = 20, i,
        fill = b->total > 0 ? (int)((double)count * width / (double)b->total)
                            : width;
    if (fill > width) fill = width;
    line[n++] = '[';
    for (i = 0; i < width; i++) line[n++] = i < fill ? '#' : '-';
    line[n++] = ']';
    line[n++] = ' ';
  }
  len = tn < 0 ? 0 : (size_t)tn < sizeof text ? (size_t)tn : sizeof text - 1;
  memcpy(line + n, text, len);
  n += len;
  n = 1 + utf8_cut(line + 1, n - 1, cols);
  len = n - 1; /* bytes shown: close enough to the width */
  b_pad(b, line, &n, sizeof line);
  b->ls->width = (int)len;
  fflush(stdout);
  fwrite(line, 1, n, stderr);
  fflush(stderr);
  b->ls->shown = b;
  b->last = ah_now();
  b->dirty = 0;
}

/* Clears the bar's line so a log line can take it. */
static void bar_erase(bar *b) {
  char line[512];
  size_t n = 0;
  int i;
  line[n++] = '\r';
  for (i = 0; i < b->ls->width && n < sizeof line - 1; i++) line[n++] = ' ';
  line[n++] = '\r';
  fwrite(line, 1, n, stderr);
  b->ls->width = 0;
}

/* Not a terminal: one log line. */
static void bar_report(bar *b, int final) {
  char text[200], line[300];
  int n;
  if (b->ls->level > L_INFO) return;
  if (bar_text(b, text, sizeof text, final) < 0) return;
  n = snprintf(line, sizeof line, "%s%s%s", b->label, b->label[0] ? ": " : "",
               text);
  if (n < 0) return;
  emit(b->ls, L_INFO, 0, line, strlen(line));
  b->last = ah_now();
}

static void on_bar_timer(uv_timer_t *timer) {
  bar *b = timer->data;
  if (b->tty) {
    double since = ah_now() - b->last;
    if ((b->dirty && since >= 0.09) || since >= 1) bar_draw(b);
  } else
    bar_report(b, 0);
}

static void bar_free(uv_handle_t *handle) {
  bar *b = handle->data;
  free(b->label);
  free(b);
}

/* Stops the timer and frees the bar once libuv is done with it. */
static void bar_close(bar *b) {
  if (b->ls->shown == b) { /* a forgotten bar: end its line */
    fputc('\n', stderr);
    fflush(stderr);
    b->ls->shown = NULL;
    b->ls->width = 0;
  }
  uv_timer_stop(&b->timer);
  b->timer.data = b;
  ah_host_close_handle(b->host, (uv_handle_t *)&b->timer, bar_free);
  ah_host_count(b->host, "progress", -1);
}

static bar *check_bar(lua_State *L) {
  bar **bp = luaL_checkudata(L, 1, BAR_MT);
  return *bp;
}

static void bar_finish(bar *b) {
  b->done = 1;
  if (b->tty) {
    bar_draw(b);
    fputc('\n', stderr);
    fflush(stderr);
    b->ls->shown = NULL;
    b->ls->width = 0;
  } else
    bar_report(b, 1);
  bar_close(b);
}

static lua_Integer opt_count(lua_State *L, int idx) {
  lua_Integer n = luaL_optinteger(L, idx, 1);
  luaL_argcheck(L, n >= 0, idx, "must be >= 0");
  return n;
}

static void bar_add(bar *b, lua_Integer n, int ok) {
  if (!b) return; /* done: late ticks are ignored */
  if (ok)
    b->ok += n;
  else
    b->failed += n;
  b->dirty = 1;
  if (b->tty && ah_now() - b->last >= 0.1) bar_draw(b);
}

/* bar:tick([n [, ok]]): n more items done; ok = false counts failures */
static int l_bar_tick(lua_State *L) {
  bar *b = check_bar(L);
  lua_Integer n = opt_count(L, 2);
  bar_add(b, n, lua_isnoneornil(L, 3) || lua_toboolean(L, 3));
  return 0;
}

/* bar:fail([n]): n more items failed */
static int l_bar_fail(lua_State *L) {
  bar *b = check_bar(L);
  bar_add(b, opt_count(L, 2), 0);
  return 0;
}

/* bar:done(): the final line; later calls do nothing */
static int l_bar_done(lua_State *L) {
  bar **bp = luaL_checkudata(L, 1, BAR_MT);
  bar *b = *bp;
  if (!b) return 0;
  lua_getiuservalue(L, 1, 1); /* the counts stay readable */
  lua_pushinteger(L, b->ok + b->failed);
  lua_setfield(L, -2, "count");
  lua_pushinteger(L, b->ok);
  lua_setfield(L, -2, "ok");
  lua_pushinteger(L, b->failed);
  lua_setfield(L, -2, "failed");
  *bp = NULL;
  bar_finish(b);
  return 0;
}

static int l_bar_gc(lua_State *L) {
  bar **bp = luaL_checkudata(L, 1, BAR_MT);
  if (*bp) bar_close(*bp);
  *bp = NULL;
  return 0;
}

/* bar.count, bar.ok, bar.failed, bar.total, bar.label, and the methods */
static int l_bar_index(lua_State *L) {
  bar **bp = luaL_checkudata(L, 1, BAR_MT);
  const char *k = luaL_checkstring(L, 2);
  lua_getiuservalue(L, 1, 1); /* the counts survive done() there */
  lua_getfield(L, -1, k);
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 2);
  if (*bp) {
    bar *b = *bp;
    lua_Integer v = -1;
    if (strcmp(k, "count") == 0)
      v = b->ok + b->failed;
    else if (strcmp(k, "ok") == 0)
      v = b->ok;
    else if (strcmp(k, "failed") == 0)
      v = b->failed;
    if (v >= 0) {
      lua_pushinteger(L, v);
      return 1;
    }
  }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "methods");
  lua_getfield(L, -1, k);
  return 1;
}

/* progress(total [, label [, opts]]) -> bar; total nil: unknown */
static int l_progress(lua_State *L) {
  ah_host *h = ah_host_of(L);
  lua_Integer total = -1;
  const char *label = "";
  bar *b, **bp;
  int tty = isatty(STDERR_FILENO);
  double interval = 5;
  if (!lua_isnoneornil(L, 1)) {
    total = luaL_checkinteger(L, 1);
    luaL_argcheck(L, total >= 0, 1, "must be >= 0");
  }
  if (!lua_isnoneornil(L, 2)) label = luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    if (lua_getfield(L, 3, "interval") != LUA_TNIL) {
      interval = luaL_checknumber(L, -1);
      luaL_argcheck(L, interval > 0, 3, "interval must be > 0");
    }
    if (lua_getfield(L, 3, "tty") != LUA_TNIL) tty = lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  bp = lua_newuserdatauv(L, sizeof *bp, 1);
  *bp = NULL;
  luaL_setmetatable(L, BAR_MT);
  lua_createtable(L, 0, 2);
  lua_pushstring(L, label);
  lua_setfield(L, -2, "label");
  if (total >= 0) {
    lua_pushinteger(L, total);
    lua_setfield(L, -2, "total");
  }
  lua_setiuservalue(L, -2, 1);
  b = calloc(1, sizeof *b);
  if (!b || !(b->label = strdup(label))) {
    free(b);
    return luaL_error(L, "progress: out of memory");
  }
  b->host = h;
  b->ls = get_state(L);
  b->total = total;
  b->start = b->last = ah_now();
  b->interval = interval;
  b->tty = tty;
  uv_timer_init(ah_host_loop(h), &b->timer);
  b->timer.data = b;
  uv_timer_start(&b->timer, on_bar_timer,
                 tty ? 100 : (uint64_t)(interval * 1000),
                 tty ? 100 : (uint64_t)(interval * 1000));
  uv_unref((uv_handle_t *)&b->timer);
  ah_host_count(h, "progress", 1);
  *bp = b;
  if (tty) bar_draw(b);
  return 1;
}

/* ---- env ------------------------------------------------------------------
 */

/* env(name [, default]) -> the variable's value, or default */
static int l_env(lua_State *L) {
  const char *v = getenv(luaL_checkstring(L, 1));
  if (v)
    lua_pushstring(L, v);
  else
    lua_settop(L, 2);
  return 1;
}

/* ---- signal ---------------------------------------------------------------
 */

static const struct {
  const char *name;
  int num;
} signals[] = {
    {"HUP", SIGHUP},       {"INT", SIGINT},
    {"QUIT", SIGQUIT},     {"TERM", SIGTERM},
    {"USR1", SIGUSR1},     {"USR2", SIGUSR2},
    {"WINCH", SIGWINCH},   {"ALRM", SIGALRM},
    {"CHLD", SIGCHLD},     {"CONT", SIGCONT},
    {"TSTP", SIGTSTP},     {"TTIN", SIGTTIN},
    {"TTOU", SIGTTOU},     {"URG", SIGURG},
    {"XCPU", SIGXCPU},     {"XFSZ", SIGXFSZ},
    {"VTALRM", SIGVTALRM}, {"PROF", SIGPROF},
    {"IO", SIGIO},         {NULL, 0},
};

/* Signals that cannot or must not be handled here. */
static const char *const refused[] = {"KILL", "STOP", "SEGV", "BUS",
                                      "FPE",  "ILL",  "ABRT", "TRAP",
                                      "SYS",  "PIPE", NULL};

typedef struct sighandle {
  uv_signal_t handle;
  ah_host *host;
  int fn_ref;   /* the handler */
  int name_ref; /* the name as given, passed to the handler */
  int self_ref; /* keeps the Lua handle alive while it is active */
} sighandle;

static void on_handler_done(ah_task *t, lua_State *L, int status, int nres,
                            void *data) {
  logstate *ls = data;
  (void)nres;
  if (status != AH_ERUN) return;
  {
    const char *err = lua_tostring(L, -1), *tb = NULL;
    char msg[2048];
    if (lua_gettop(L) >= 2 && lua_type(L, -2) == LUA_TSTRING)
      tb = lua_tostring(L, -2);
    snprintf(msg, sizeof msg, "signal handler failed: %s%s%s",
             err ? err : "(error object is not a string)", tb ? "\n" : "",
             tb ? tb : "");
    emit(ls, L_ERROR, ah_task_id(t), msg, strlen(msg));
  }
}

static void on_signal(uv_signal_t *handle, int signum) {
  sighandle *s = handle->data;
  lua_State *L = ah_host_lua(s->host);
  (void)signum;
  if (!lua_checkstack(L, 2)) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->fn_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->name_ref);
  if (ah_host_spawn_call(s->host, 1, on_handler_done, get_state(L), NULL) !=
      AH_OK)
    lua_pop(L, 2);
}

static void sig_free(uv_handle_t *handle) {
  free(handle->data);
}

/* Stops the handle; the memory goes when libuv has closed it. */
static void sig_stop(lua_State *L, sighandle *s) {
  uv_signal_stop(&s->handle);
  luaL_unref(L, LUA_REGISTRYINDEX, s->fn_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, s->name_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, s->self_ref);
  s->handle.data = s;
  ah_host_close_handle(s->host, (uv_handle_t *)&s->handle, sig_free);
  ah_host_count(s->host, "signal", -1);
}

/* handle:stop(); stopping twice is fine */
static int l_sig_stop(lua_State *L) {
  sighandle **sp = luaL_checkudata(L, 1, SIGNAL_MT);
  if (*sp) sig_stop(L, *sp);
  *sp = NULL;
  return 0;
}

static int l_sig_gc(lua_State *L) {
  sighandle **sp = luaL_checkudata(L, 1, SIGNAL_MT);
  if (*sp) { /* only when the state closes: active handles are anchored */
    sighandle *s = *sp;
    uv_signal_stop(&s->handle);
    s->handle.data = s;
    ah_host_close_handle(s->host, (uv_handle_t *)&s->handle, sig_free);
    ah_host_count(s->host, "signal", -1);
  }
  *sp = NULL;
  return 0;
}

static int signal_number(lua_State *L, int idx) {
  const char *name = luaL_checkstring(L, idx), *bare = name;
  int i;
  if (strncasecmp(bare, "SIG", 3) == 0) bare += 3;
  for (i = 0; signals[i].name; i++)
    if (strcasecmp(bare, signals[i].name) == 0) return signals[i].num;
  for (i = 0; refused[i]; i++)
    if (strcasecmp(bare, refused[i]) == 0)
      return luaL_argerror(
          L, idx, lua_pushfstring(L, "SIG%s cannot be handled", refused[i]));
  return luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", name));
}

/* signal(name, fn) -> handle: fn(name) runs as a new task on each signal */
static int l_signal(lua_State *L) {
  ah_host *h = ah_host_of(L);
  int signum = signal_number(L, 1), rc;
  sighandle *s, **sp;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  sp = lua_newuserdatauv(L, sizeof *sp, 0);
  *sp = NULL;
  luaL_setmetatable(L, SIGNAL_MT);
  s = calloc(1, sizeof *s);
  if (!s) return luaL_error(L, "signal: out of memory");
  s->host = h;
  if ((rc = uv_signal_init(ah_host_loop(h), &s->handle)) != 0) {
    free(s);
    return luaL_error(L, "signal: %s", uv_strerror(rc));
  }
  s->handle.data = s;
  if ((rc = uv_signal_start(&s->handle, on_signal, signum)) != 0) {
    ah_host_close_handle(h, (uv_handle_t *)&s->handle, sig_free);
    return luaL_error(L, "signal: %s", uv_strerror(rc));
  }
  uv_unref((uv_handle_t *)&s->handle);
  ah_host_count(h, "signal", 1);
  *sp = s;
  lua_pushvalue(L, 2);
  s->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, 1);
  s->name_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, 3);
  s->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

/* ---- the module ------------------------------------------------------------
 */

void ah_open_log(lua_State *L, int mod) {
  static const luaL_Reg bar_methods[] = {{"tick", l_bar_tick},
                                         {"fail", l_bar_fail},
                                         {"done", l_bar_done},
                                         {NULL, NULL}};
  static const luaL_Reg sig_methods[] = {{"stop", l_sig_stop}, {NULL, NULL}};
  logstate *ls;
  const char *env = getenv("ASYNCHOST_LOG");
  int i;
  mod = lua_absindex(L, mod);
  ls = lua_newuserdatauv(L, sizeof *ls, 0);
  ls->level = L_DEBUG;
  ls->shown = NULL;
  ls->width = 0;
  if (env && parse_level(env) >= 0) ls->level = parse_level(env);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &state_key);

  lua_createtable(L, 0, 5); /* log */
  for (i = 0; level_names[i]; i++) {
    lua_pushinteger(L, i);
    lua_pushcclosure(L, l_log, 1);
    lua_setfield(L, -2, level_names[i]);
  }
  lua_pushcfunction(L, l_level);
  lua_setfield(L, -2, "level");
  lua_setfield(L, mod, "log");

  luaL_newmetatable(L, BAR_MT);
  luaL_newlib(L, bar_methods);
  lua_setfield(L, -2, "methods");
  lua_pushcfunction(L, l_bar_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_bar_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);

  luaL_newmetatable(L, SIGNAL_MT);
  luaL_newlib(L, sig_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_sig_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);

  lua_pushcfunction(L, l_progress);
  lua_setfield(L, mod, "progress");
  lua_pushcfunction(L, l_env);
  lua_setfield(L, mod, "env");
  lua_pushcfunction(L, l_signal);
  lua_setfield(L, mod, "signal");
}
