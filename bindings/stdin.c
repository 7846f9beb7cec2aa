/*
** stdin:read(fmt) and stdin:lines(fmt): reading standard input without
** blocking the loop. Reads run on libuv's thread pool (uv_fs_read), which
** works the same for terminals, pipes and files and leaves the file
** descriptor's flags alone. A cancelled read is not lost: its data stays
** buffered for the next one.
*/
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

#define STDIN_MT "asynchost.stdin"
#define CHUNK 65536

typedef struct reader {
  ah_host *host;
  ah_task *waiter; /* the task waiting for data, if any */
  char *buf;
  size_t len, cap;
  int eof, reading, error;
  uv_fs_t req;
  char chunk[CHUNK];
} reader;

static void on_read(uv_fs_t *req) {
  reader *r = req->data;
  ssize_t n = req->result;
  uv_fs_req_cleanup(req);
  r->reading = 0;
  if (n > 0) {
    if (r->len + (size_t)n > r->cap) {
      size_t cap = r->cap ? r->cap * 2 : CHUNK;
      while (cap < r->len + (size_t)n) cap *= 2;
      char *buf = realloc(r->buf, cap);
      if (!buf) abort();
      r->buf = buf;
      r->cap = cap;
    }
    memcpy(r->buf + r->len, r->chunk, (size_t)n);
    r->len += (size_t)n;
  } else {
    r->eof = 1;
    r->error = n < 0 ? (int)n : 0;
  }
  if (r->waiter) {
    ah_task *t = r->waiter;
    r->waiter = NULL;
    ah_task_resume(t);
  }
}

static int start_read(reader *r) {
  uv_buf_t b = uv_buf_init(r->chunk, CHUNK);
  r->req.data = r;
  if (uv_fs_read(ah_host_loop(r->host), &r->req, 0, &b, 1, -1, on_read) != 0) {
    r->eof = 1;
    return 0;
  }
  r->reading = 1;
  return 1;
}

static void read_cancel(void *data) {
  ((reader *)data)->waiter = NULL; /* the read goes on; data is kept */
}

/* Pushes what the format asks for, if the buffer has it: 1 done, 0 wait. */
static int take(lua_State *L, reader *r, int fmt_idx) {
  size_t n;
  if (lua_type(L, fmt_idx) == LUA_TNUMBER) {
    size_t want = (size_t)lua_tointeger(L, fmt_idx);
    if (r->len < want && !r->eof) return 0;
    n = r->len < want ? r->len : want;
    if (n == 0 && want > 0) {
      lua_pushnil(L);
      return 1;
    }
    lua_pushlstring(L, r->buf, n);
  } else {
    const char *f = lua_tostring(L, fmt_idx);
    if (*f == '*') f++;
    if (*f == 'a') {
      if (!r->eof) return 0;
      n = r->len;
      lua_pushlstring(L, r->buf, n);
    } else {
      char *nl = r->len ? memchr(r->buf, '\n', r->len) : NULL;
      if (!nl && !r->eof) return 0;
      if (!nl && r->len == 0) {
        lua_pushnil(L);
        return 1;
      }
      n = nl ? (size_t)(nl - r->buf) + 1 : r->len;
      lua_pushlstring(L, r->buf, (*f == 'L' || !nl) ? n : n - 1);
    }
  }
  memmove(r->buf, r->buf + n, r->len - n);
  r->len -= n;
  return 1;
}

static int read_k(lua_State *L, int status, lua_KContext ctx);

/* [self fmt] */
static int read_try(lua_State *L) {
  reader *r = *(reader **)luaL_checkudata(L, 1, STDIN_MT);
  ah_task *t;
  if (take(L, r, 2)) return 1;
  if (r->waiter) return luaL_error(L, "stdin: another task is reading");
  t = ah_task_check(L, "stdin:read");
  if (!r->reading && !start_read(r)) return take(L, r, 2);
  r->waiter = t;
  return ah_task_suspend(L, read_cancel, r, read_k, 0);
}

static int read_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return read_try(L);
}

static void check_format(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) {
    lua_settop(L, idx - 1);
    lua_pushliteral(L, "l");
  } else if (lua_type(L, idx) == LUA_TNUMBER) {
    luaL_argcheck(L, lua_isinteger(L, idx) && lua_tointeger(L, idx) >= 0, idx,
                  "byte count must be a non-negative integer");
  } else {
    const char *f = luaL_checkstring(L, idx);
    if (*f == '*') f++;
    luaL_argcheck(L, *f == 'l' || *f == 'L' || *f == 'a', idx,
                  "invalid format");
  }
}

/* stdin:read([fmt]) -> string | nil at end of input */
static int l_read(lua_State *L) {
  luaL_checkudata(L, 1, STDIN_MT);
  check_format(L, 2);
  lua_settop(L, 2);
  return read_try(L);
}

/* stdin:lines([fmt]) -> iterator */
static int lines_iter(lua_State *L) {
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, lua_upvalueindex(2));
  return read_try(L);
}

static int l_lines(lua_State *L) {
  luaL_checkudata(L, 1, STDIN_MT);
  check_format(L, 2);
  lua_settop(L, 2);
  lua_pushcclosure(L, lines_iter, 2);
  return 1;
}

static int l_gc(lua_State *L) {
  reader **rp = luaL_checkudata(L, 1, STDIN_MT);
  reader *r = *rp;
  *rp = NULL;
  if (!r) return 0;
  if (r->reading) { /* the thread pool still writes into r: leave it be */
    r->waiter = NULL;
    return 0;
  }
  free(r->buf);
  free(r);
  return 0;
}

void ah_open_stdin(lua_State *L, int mod) {
  static const luaL_Reg methods[] = {
      {"read", l_read}, {"lines", l_lines}, {NULL, NULL}};
  reader **rp = lua_newuserdatauv(L, sizeof *rp, 0);
  *rp = calloc(1, sizeof **rp);
  if (!*rp) luaL_error(L, "out of memory");
  (*rp)->host = ah_host_of(L);
  if (luaL_newmetatable(L, STDIN_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_setfield(L, mod, "stdin");
}
