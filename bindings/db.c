/*
** db: PostgreSQL for tasks. db.connect(dsn) and db.pool{...} give objects
** whose query(sql, ...) suspends the calling task while libpq works on
** the loop (db_conn.c, db_pool.c); results come back as plain Lua arrays
** of rows. transaction() and with() are in lua/db.lua, on top of the
** leases made here.
**
** Values: int2/4/8 -> integer, float4/8 -> number, numeric -> string,
** bool -> boolean, json/jsonb -> decoded, bytea -> raw bytes, NULL -> nil
** (or the `null` sentinel given to connect/pool), anything else -> its
** text. Parameters: nil -> NULL, booleans, integers (integer-valued
** floats too), other floats as %.17g, strings as untyped text (raw bytes
** for a bytea parameter), tables -> JSON.
*/
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "db_conn.h"

#define CONN_MT "asynchost.db.conn"
#define POOL_MT "asynchost.db.pool"
#define BUF_MT "asynchost.db.buffer"

#define BOOLOID 16
#define BYTEAOID 17
#define INT8OID 20
#define INT2OID 21
#define INT4OID 23
#define JSONOID 114
#define FLOAT4OID 700
#define FLOAT8OID 701
#define JSONBOID 3802

#define DEFAULT_CACHE 256
#define DEFAULT_POOL_SIZE 10
#define DEFAULT_PIPELINE 64
#define DEFAULT_IDLE 60.0

static const char db_key = 'd';

/* A connection, or a lease on one (the object transaction() and with()
   hand to their function). User value 1: the null sentinel, or nil. */
typedef struct conn_ud {
  db_conn *c;     /* NULL once closed or released */
  db_pool *pool;  /* a lease from this pool */
  unsigned lease; /* 0: the connection itself */
} conn_ud;

typedef struct pool_ud {
  db_pool *p;
} pool_ud;

static db_host *get_dh(lua_State *L) {
  db_host *dh;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &db_key);
  dh = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return dh;
}

static conn_ud *check_conn(lua_State *L) {
  conn_ud *u = luaL_checkudata(L, 1, CONN_MT);
  if (!u->c || (u->lease && u->c->held_by != u->lease))
    luaL_error(L, u->lease ? "db: this connection was lent for a transaction "
                             "or with() that has ended"
                           : "db: attempt to use a closed connection");
  return u;
}

static pool_ud *check_pool(lua_State *L) {
  pool_ud *pu = luaL_checkudata(L, 1, POOL_MT);
  if (!pu->p) luaL_error(L, "db: attempt to use a collected pool");
  return pu;
}

/* ---- Lua values to SQL ------------------------------------------------------
 */

static int is_null(lua_State *L, int idx, int nullidx) {
  int eq;
  if (nullidx && lua_rawequal(L, idx, nullidx)) return 1;
  ah_json_push_null(L);
  eq = lua_rawequal(L, idx, -1);
  lua_pop(L, 1);
  return eq;
}

static const char *number_text(lua_State *L, int idx, char *buf, size_t n) {
  double d;
  if (lua_isinteger(L, idx)) {
    snprintf(buf, n, "%lld", (long long)lua_tointeger(L, idx));
    return buf;
  }
  d = lua_tonumber(L, idx);
  if (isnan(d)) return "NaN";
  if (isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  if (d == floor(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0)
    snprintf(buf, n, "%lld", (long long)d);
  else
    snprintf(buf, n, "%.17g", d);
  return buf;
}

/* Pushes the text of the value at idx, or nil for NULL. Raises for
   values SQL cannot take. */
static void push_sql_value(lua_State *L, int idx, int nullidx, int argn) {
  char buf[64], err[256];
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
  case LUA_TNONE:
    lua_pushnil(L);
    return;
  case LUA_TBOOLEAN:
    lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
    return;
  case LUA_TNUMBER:
    lua_pushstring(L, number_text(L, idx, buf, sizeof buf));
    return;
  case LUA_TSTRING:
    lua_pushvalue(L, idx);
    return;
  default:
    if (is_null(L, idx, nullidx)) {
      lua_pushnil(L);
      return;
    }
    if (lua_type(L, idx) == LUA_TTABLE) {
      if (!ah_json_encode(L, idx, err, sizeof err))
        luaL_argerror(L, argn,
                      lua_pushfstring(L, "cannot be sent as JSON: %s", err));
      return;
    }
    luaL_argerror(L, argn,
                  lua_pushfstring(L, "a %s cannot be a query parameter",
                                  luaL_typename(L, idx)));
  }
}

/* The values first..last as parameters: one block holding the db_param
   array and the bytes, each NUL-terminated. */
static db_param *pack_params(lua_State *L, int first, int last, int nullidx,
                             int *count) {
  int n = last - first + 1, i, base = lua_gettop(L);
  size_t total = 0;
  db_param *ps;
  char *buf;
  *count = n > 0 ? n : 0;
  if (n <= 0) return NULL;
  luaL_argcheck(L, n <= 65535, first, "too many parameters (at most 65535)");
  luaL_checkstack(L, n, "too many parameters");
  for (i = 0; i < n; i++) {
    size_t len;
    push_sql_value(L, first + i, nullidx, first + i);
    if (!lua_isnil(L, -1)) {
      lua_tolstring(L, -1, &len);
      luaL_argcheck(L, len < INT_MAX, first + i, "string too long");
      total += len + 1;
    }
  }
  ps = db_alloc(sizeof *ps * (size_t)n + total);
  buf = (char *)(ps + n);
  for (i = 0; i < n; i++) {
    int v = base + 1 + i;
    size_t len;
    const char *s;
    if (lua_isnil(L, v)) continue;
    s = lua_tolstring(L, v, &len);
    memcpy(buf, s, len);
    buf[len] = '\0';
    ps[i].val = buf;
    ps[i].len = (int)len;
    ps[i].str = lua_type(L, first + i) == LUA_TSTRING;
    buf += len + 1;
  }
  lua_settop(L, base);
  return ps;
}

/* A growing byte buffer owned by a userdata, so that a raised error
   cannot leak it. */
typedef struct gbuf {
  char *p;
  size_t len, cap;
} gbuf;

static int gbuf_gc(lua_State *L) {
  gbuf *b = luaL_checkudata(L, 1, BUF_MT);
  free(b->p);
  b->p = NULL;
  return 0;
}

static void gbuf_add(gbuf *b, const char *s, size_t n) {
  if (n == 0) return; /* b->p may still be NULL */
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 65536;
    char *p;
    while (cap < b->len + n) cap *= 2;
    p = realloc(b->p, cap);
    if (!p) abort();
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static int text_ok(const char *s, size_t n);

/* One COPY text field. Bytes that are not text go in bytea's hex form. */
static void copy_field(lua_State *L, gbuf *b, int idx, int nullidx, int argn) {
  size_t len, i, start = 0;
  const char *s;
  push_sql_value(L, idx, nullidx, argn);
  if (lua_isnil(L, -1)) {
    gbuf_add(b, "\\N", 2);
    lua_pop(L, 1);
    return;
  }
  s = lua_tolstring(L, -1, &len);
  if (lua_type(L, idx) == LUA_TSTRING && !text_ok(s, len)) {
    static const char hex[] = "0123456789abcdef";
    gbuf_add(b, "\\\\x", 3);
    for (i = 0; i < len; i++) {
      char h[2] = {hex[(unsigned char)s[i] >> 4],
                   hex[(unsigned char)s[i] & 15]};
      gbuf_add(b, h, 2);
    }
    lua_pop(L, 1);
    return;
  }
  for (i = 0; i < len; i++) {
    const char *esc = NULL;
    switch (s[i]) {
    case '\\':
      esc = "\\\\";
      break;
    case '\n':
      esc = "\\n";
      break;
    case '\r':
      esc = "\\r";
      break;
    case '\t':
      esc = "\\t";
      break;
    default:
      continue;
    }
    gbuf_add(b, s + start, i - start);
    gbuf_add(b, esc, 2);
    start = i + 1;
  }
  gbuf_add(b, s + start, len - start);
  lua_pop(L, 1);
}

/* rows (a list of lists; row.n counts trailing nils) in COPY text form. */
static gbuf *build_copy(lua_State *L, int idx, int nullidx) {
  gbuf *b = lua_newuserdatauv(L, sizeof *b, 0);
  lua_Integer nrows, i, j, ncols;
  memset(b, 0, sizeof *b);
  luaL_setmetatable(L, BUF_MT);
  luaL_checktype(L, idx, LUA_TTABLE);
  nrows = (lua_Integer)lua_rawlen(L, idx);
  for (i = 1; i <= nrows; i++) {
    if (lua_rawgeti(L, idx, i) != LUA_TTABLE)
      luaL_argerror(L, idx, lua_pushfstring(L, "row %I is not a list", i));
    if (lua_getfield(L, -1, "n") == LUA_TNUMBER && lua_isinteger(L, -1))
      ncols = lua_tointeger(L, -1);
    else
      ncols = (lua_Integer)lua_rawlen(L, -2);
    lua_pop(L, 1);
    for (j = 1; j <= ncols; j++) {
      if (j > 1) gbuf_add(b, "\t", 1);
      lua_rawgeti(L, -1, j);
      copy_field(L, b, lua_gettop(L), nullidx, idx);
      lua_pop(L, 1);
    }
    gbuf_add(b, "\n", 1);
    lua_pop(L, 1);
  }
  return b;
}

/* Valid UTF-8 without zero bytes: what a text column can hold. */
static int text_ok(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    unsigned c = u[i], k, j, cp;
    if (c == 0) return 0;
    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xc2 && c <= 0xdf)
      k = 1, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
      k = 2, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
      k = 3, cp = c & 0x07;
    else
      return 0;
    if (n - i <= k) return 0;
    for (j = 1; j <= k; j++) {
      if ((u[i + j] & 0xc0) != 0x80) return 0;
      cp = (cp << 6) | (u[i + j] & 0x3f);
    }
    if ((k == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (k == 3 && (cp < 0x10000 || cp > 0x10ffff)))
      return 0;
    i += k + 1;
  }
  return 1;
}

/* ---- SQL values to Lua ------------------------------------------------------
 */

static void push_value(lua_State *L, Oid type, const char *v, int len) {
  switch (type) {
  case BOOLOID:
    lua_pushboolean(L, v[0] == 't');
    return;
  case INT2OID:
  case INT4OID:
  case INT8OID:
    lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10));
    return;
  case FLOAT4OID:
  case FLOAT8OID:
    lua_pushnumber(L, strtod(v, NULL));
    return;
  case JSONOID:
  case JSONBOID:
    if (!ah_json_decode(L, v, (size_t)len)) {
      lua_pop(L, 2);
      lua_pushlstring(L, v, (size_t)len);
    }
    return;
  case BYTEAOID: {
    size_t n;
    unsigned char *b = PQunescapeBytea((const unsigned char *)v, &n);
    if (!b) luaL_error(L, "db: out of memory");
    lua_pushlstring(L, (const char *)b, n);
    PQfreemem(b);
    return;
  }
  default:
    lua_pushlstring(L, v, (size_t)len);
  }
}

/* Pushes rows: an array of {column = value}; columns, affected and
   command through its metatable, which also marks it as a JSON array. */
static void push_rows(lua_State *L, const PGresult *r, int nullidx) {
  int nrows = PQntuples(r), nf = PQnfields(r), i, j, rows, names;
  const char *tuples = PQcmdTuples((PGresult *)r);
  Oid small[32],
      *types = nf <= 32 ? small : db_alloc(sizeof *types * (size_t)nf);
  luaL_checkstack(L, nf + 8, "too many columns");
  lua_createtable(L, nrows, 0);
  rows = lua_gettop(L);
  lua_createtable(L, 0, 6);
  lua_createtable(L, nf, 0);
  for (j = 0; j < nf; j++) {
    lua_pushstring(L, PQfname(r, j));
    lua_rawseti(L, -2, j + 1);
    types[j] = PQftype(r, j);
  }
  lua_setfield(L, -2, "columns");
  lua_pushinteger(L, *tuples ? (lua_Integer)strtoll(tuples, NULL, 10) : 0);
  lua_setfield(L, -2, "affected");
  lua_pushstring(L, PQcmdStatus((PGresult *)r));
  lua_setfield(L, -2, "command");
  lua_pushliteral(L, "array");
  lua_setfield(L, -2, "__jsontype");
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, rows);
  names = lua_gettop(L) + 1;
  for (j = 0; j < nf; j++) lua_pushstring(L, PQfname(r, j));
  for (i = 0; i < nrows; i++) {
    lua_createtable(L, 0, nf);
    for (j = 0; j < nf; j++) {
      if (PQgetisnull(r, i, j)) {
        if (!nullidx) continue;
        lua_pushvalue(L, names + j);
        lua_pushvalue(L, nullidx);
      } else {
        lua_pushvalue(L, names + j);
        push_value(L, types[j], PQgetvalue(r, i, j), PQgetlength(r, i, j));
      }
      lua_rawset(L, -3);
    }
    lua_rawseti(L, rows, i + 1);
  }
  if (types != small) free(types);
  lua_settop(L, rows);
}

/* ---- waiting for ops --------------------------------------------------------
 */

static void cancel_op(void *data) {
  db_op_abandon(data);
}

static int wait_op(lua_State *L, db_op *op, lua_KFunction k) {
  if (op->state == DB_DONE) return k(L, LUA_OK, (lua_KContext)op);
  return ah_task_suspend(L, cancel_op, op, k, (lua_KContext)op);
}

/* The null sentinel of the object at 1: its index, or 0. */
static int null_index(lua_State *L) {
  if (lua_getiuservalue(L, 1, 1) == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  return lua_gettop(L);
}

static int push_err(lua_State *L, db_op *op) {
  lua_pushnil(L);
  lua_pushstring(L, op->err);
  db_op_free(op);
  return 2;
}

/* query, exec: rows | nil, err; copy_in: count | nil, err */
static int op_k(lua_State *L, int status, lua_KContext ctx) {
  db_op *op = (db_op *)ctx;
  PGresult *r;
  int kind = op->kind;
  (void)status;
  if (op->err) return push_err(L, op);
  r = op->res;
  op->res = NULL;
  db_op_free(op);
  if (!r) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (kind == DB_COPY) {
    const char *t = PQcmdTuples(r);
    lua_pushinteger(L, *t ? (lua_Integer)strtoll(t, NULL, 10) : 0);
  } else
    push_rows(L, r, null_index(L));
  PQclear(r);
  return 1;
}

/* The SQL at 2, checked. */
static const char *check_sql(lua_State *L, int kind, size_t *len) {
  const char *sql = luaL_checklstring(L, 2, len);
  const char *p = sql;
  luaL_argcheck(L, strlen(sql) == *len, 2, "SQL contains a zero byte");
  if (kind == DB_QUERY) { /* COPY ... STDIN/STDOUT cannot be pipelined */
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '(')
      p++;
    if (strncasecmp(p, "copy", 4) == 0 && (p[4] == ' ' || p[4] == '\n') &&
        (strcasestr(p, "stdin") || strcasestr(p, "stdout")))
      luaL_argerror(L, 2, "COPY FROM STDIN / TO STDOUT: use copy_in");
  }
  return sql;
}

/* Makes the op for query/exec/copy_in from the arguments 2... */
static db_op *make_op(lua_State *L, db_host *dh, int kind) {
  size_t len;
  const char *sql = check_sql(L, kind, &len);
  int nullidx = null_index(L), n = 0;
  db_param *ps = NULL;
  gbuf *b = NULL;
  db_op *op;
  if (kind == DB_QUERY)
    ps = pack_params(L, 3, nullidx ? lua_gettop(L) - 1 : lua_gettop(L), nullidx,
                     &n);
  else if (kind == DB_COPY)
    b = build_copy(L, 3, nullidx);
  op = db_op_new(dh, kind, sql, len);
  db_op_set_params(op, n, ps);
  if (b) {
    op->copy = b->p;
    op->copy_len = b->len;
    b->p = NULL;
    lua_pop(L, 1);
  }
  if (nullidx) lua_remove(L, nullidx);
  return op;
}

static int conn_run(lua_State *L, int kind, const char *fname) {
  conn_ud *u = check_conn(L);
  ah_task *t;
  db_op *op;
  if (kind == DB_COPY) luaL_checktype(L, 3, LUA_TTABLE);
  t = ah_task_check(L, fname);
  op = make_op(L, u->c->dh, kind);
  op->task = t;
  op->lease = u->lease;
  db_conn_submit(u->c, op);
  return wait_op(L, op, op_k);
}

/* conn:query(sql, ...) -> rows | nil, err */
static int conn_query(lua_State *L) {
  return conn_run(L, DB_QUERY, "query");
}

/* conn:exec(script) -> rows of the last statement | nil, err */
static int conn_exec(lua_State *L) {
  lua_settop(L, 2);
  return conn_run(L, DB_EXEC, "exec");
}

/* conn:copy_in(sql, rows) -> number of rows | nil, err */
static int conn_copy_in(lua_State *L) {
  lua_settop(L, 3);
  return conn_run(L, DB_COPY, "copy_in");
}

/* ---- LISTEN / NOTIFY
 * ---------------------------------------------------------- */

static int listen_k(lua_State *L, int status, lua_KContext ctx) {
  db_op *op = (db_op *)ctx;
  (void)status;
  if (op->err) return push_err(L, op);
  if (op->conn)
    op->conn->listening =
        strncmp(op->sql, "LISTEN", 6) == 0 ||
        (op->conn->listening && strcmp(op->sql, "UNLISTEN *") != 0);
  db_op_free(op);
  lua_pushboolean(L, 1);
  return 1;
}

static int listen_run(lua_State *L, const char *verb, const char *fname) {
  conn_ud *u = check_conn(L);
  db_conn *c = u->c;
  size_t len = 0;
  const char *ch = lua_isnoneornil(L, 2) && verb[0] == 'U'
                       ? NULL
                       : luaL_checklstring(L, 2, &len);
  ah_task *t;
  db_op *op;
  char *id, *sql;
  t = ah_task_check(L, fname);
  if (!db_conn_usable(c))
    return ah_push_fail(L, "closed", "the connection is not usable");
  if (ch) {
    id = PQescapeIdentifier(c->pg, ch, len);
    if (!id) return ah_push_fail(L, "db", "%s", PQerrorMessage(c->pg));
    sql = db_strfmt("%s %s", verb, id);
    PQfreemem(id);
  } else
    sql = db_strfmt("%s *", verb);
  op = db_op_new(c->dh, DB_QUERY, sql, strlen(sql));
  free(sql);
  op->nocache = 1;
  op->task = t;
  op->lease = u->lease;
  db_conn_submit(c, op);
  return wait_op(L, op, listen_k);
}

/* conn:listen(channel) -> true | nil, err */
static int conn_listen(lua_State *L) {
  return listen_run(L, "LISTEN", "listen");
}

/* conn:unlisten([channel]) -> true | nil, err; no channel: all */
static int conn_unlisten(lua_State *L) {
  return listen_run(L, "UNLISTEN", "unlisten");
}

static int note_k(lua_State *L, int status, lua_KContext ctx) {
  db_op *op = (db_op *)ctx;
  db_note *n;
  (void)status;
  if (op->err) return push_err(L, op);
  n = op->note;
  op->note = NULL;
  if (op->task && ah_task_cancelling(op->task)) {
    /* leave it for the next waiter */
    if (n && op->conn) {
      db_conn_unpop_note(op->conn, n);
      db_conn_deliver_notes(op->conn);
    } else if (n)
      db_note_free(n);
    db_op_free(op);
    return 0;
  }
  db_op_free(op);
  lua_createtable(L, 0, 3);
  lua_pushstring(L, n->n->relname);
  lua_setfield(L, -2, "channel");
  lua_pushstring(L, n->n->extra ? n->n->extra : "");
  lua_setfield(L, -2, "payload");
  lua_pushinteger(L, n->n->be_pid);
  lua_setfield(L, -2, "pid");
  db_note_free(n);
  return 1;
}

/* conn:notification([timeout]) -> {channel=, payload=, pid=} | nil, err */
static int conn_notification(lua_State *L) {
  conn_ud *u = check_conn(L);
  double timeout = luaL_optnumber(L, 2, -1);
  ah_task *t;
  db_op *op;
  luaL_argcheck(L, !isnan(timeout), 2, "not a number");
  t = ah_task_check(L, "notification");
  op = db_op_new(u->c->dh, DB_NOTIFY, NULL, 0);
  op->timeout = lua_isnoneornil(L, 2) ? -1 : (timeout < 0 ? 0 : timeout);
  op->task = t;
  db_conn_wait_note(u->c, op);
  return wait_op(L, op, note_k);
}

/* ---- connections
 * ---------------------------------------------------------------- */

static int opt_int(lua_State *L, int t, const char *k, int def, int min) {
  lua_Integer v;
  int ok;
  if (!t || lua_getfield(L, t, k) == LUA_TNIL) {
    if (t) lua_pop(L, 1);
    return def;
  }
  v = lua_tointegerx(L, -1, &ok);
  if (!ok || v < min || v > INT_MAX)
    luaL_error(L, "db: option '%s' must be an integer >= %d", k, min);
  lua_pop(L, 1);
  return (int)v;
}

static void new_conn_ud(lua_State *L, int nullidx) {
  conn_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
  memset(u, 0, sizeof *u);
  luaL_setmetatable(L, CONN_MT);
  if (nullidx)
    lua_pushvalue(L, nullidx);
  else
    lua_pushnil(L);
  lua_setiuservalue(L, -2, 1);
}

static void close_ud(conn_ud *u) {
  db_conn *c = u->c;
  if (!c) return;
  u->c = NULL;
  if (u->lease) {
    if (u->pool) {
      db_pool_release(u->pool, c, u->lease);
      db_pool_unref(u->pool);
      u->pool = NULL;
    } else
      db_conn_release(c, u->lease);
  } else
    db_conn_close(c, "the connection was closed");
  db_conn_unref(c);
}

/* [dsn opts conn] */
static int connect_k(lua_State *L, int status, lua_KContext ctx) {
  db_op *op = (db_op *)ctx;
  conn_ud *u = lua_touserdata(L, 3);
  (void)status;
  if (op->err || (op->task && ah_task_cancelling(op->task))) {
    close_ud(u);
    if (op->err) return push_err(L, op);
    db_op_free(op);
    return 0;
  }
  db_op_free(op);
  lua_settop(L, 3);
  return 1;
}

/* db.connect(dsn [, opts]) or db.connect{dsn = ..., ...} -> conn | nil, err
   opts: null (the value NULL reads as), statement_cache (statements kept
   prepared per connection; 0: none) */
static int l_connect(lua_State *L) {
  db_host *dh = get_dh(L);
  const char *dsn;
  char err[512];
  int opts = 0, nullidx = 0, cache;
  ah_task *t;
  db_conn *c;
  db_op *op;
  conn_ud *u;
  lua_settop(L, 2);
  if (lua_type(L, 1) == LUA_TTABLE) {
    lua_getfield(L, 1, "dsn");
    lua_replace(L, 2);
    luaL_argcheck(L, lua_type(L, 2) == LUA_TSTRING, 1, "dsn must be a string");
    lua_insert(L, 1); /* dsn opts */
    opts = 2;
  } else {
    luaL_checkstring(L, 1);
    if (!lua_isnil(L, 2)) {
      luaL_checktype(L, 2, LUA_TTABLE);
      opts = 2;
    }
  }
  dsn = lua_tostring(L, 1);
  cache = opt_int(L, opts, "statement_cache", DEFAULT_CACHE, 0);
  lua_settop(L, 2);
  if (opts && lua_getfield(L, opts, "null") != LUA_TNIL) nullidx = 3;
  lua_settop(L, nullidx ? 3 : 2);
  t = ah_task_check(L, "db.connect");
  new_conn_ud(L, nullidx);
  if (nullidx) lua_replace(L, nullidx); /* dsn opts conn */
  u = lua_touserdata(L, 3);
  c = db_conn_new(dh, dsn, cache, err, sizeof err);
  if (!c) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  u->c = c;
  op = db_op_new(dh, DB_CONNECT, NULL, 0);
  op->task = t;
  db_conn_wait_connect(c, op);
  return wait_op(L, op, connect_k);
}

/* conn:close(): ends the connection (a lease: gives it back) */
static int conn_close(lua_State *L) {
  close_ud(luaL_checkudata(L, 1, CONN_MT));
  return 0;
}

static int conn_gc(lua_State *L) {
  close_ud(luaL_checkudata(L, 1, CONN_MT));
  return 0;
}

/* conn:pid() -> the server process id */
static int conn_pid(lua_State *L) {
  conn_ud *u = check_conn(L);
  if (!u->c->pg) return ah_push_fail(L, "closed", "the connection is closed");
  lua_pushinteger(L, PQbackendPID(u->c->pg));
  return 1;
}

/* conn:_usable() -> whether the connection can still serve */
static int conn_usable(lua_State *L) {
  conn_ud *u = luaL_checkudata(L, 1, CONN_MT);
  lua_pushboolean(L, u->c && db_conn_usable(u->c));
  return 1;
}

static int conn_tostring(lua_State *L) {
  conn_ud *u = luaL_checkudata(L, 1, CONN_MT);
  static const char *const states[] = {"connecting", "connecting", "ready",
                                       "broken", "closed"};
  const char *st = u->c ? states[u->c->state] : "closed";
  if (u->c && u->c->pg && u->c->state == DB_C_READY)
    lua_pushfstring(L, "db.conn (%s%s, pid %d)", st, u->lease ? ", lent" : "",
                    PQbackendPID(u->c->pg));
  else
    lua_pushfstring(L, "db.conn (%s)", st);
  return 1;
}

/* [self] -> lease handle */
static void push_lease(lua_State *L, db_op *op, db_pool *p) {
  conn_ud *u;
  lua_getiuservalue(L, 1, 1);
  new_conn_ud(L, lua_isnil(L, -1) ? 0 : lua_gettop(L));
  u = lua_touserdata(L, -1);
  u->c = op->granted;
  op->granted = NULL;
  u->lease = op->granted_lease;
  if (p) {
    u->pool = p;
    p->refs++;
  }
  lua_remove(L, -2);
}

static int lease_k(lua_State *L, int status, lua_KContext ctx) {
  db_op *op = (db_op *)ctx;
  pool_ud *pu = luaL_testudata(L, 1, POOL_MT);
  (void)status;
  if (op->err) return push_err(L, op);
  if (op->task && ah_task_cancelling(op->task)) {
    if (pu)
      db_pool_release(pu->p, op->granted, op->granted_lease);
    else
      db_conn_release(op->granted, op->granted_lease);
    db_op_free(op);
    return 0;
  }
  push_lease(L, op, pu ? pu->p : NULL);
  db_op_free(op);
  lua_pushboolean(L, 1);
  return 2;
}

/* conn:_lease() -> lease, true (a new lease on this connection) | self,
   false (self is a lease already) | nil, err. Waits for other leases. */
static int conn_lease(lua_State *L) {
  conn_ud *u = check_conn(L);
  ah_task *t;
  db_op *op;
  lua_settop(L, 1);
  if (u->lease) {
    lua_pushboolean(L, 0);
    return 2;
  }
  t = ah_task_check(L, "transaction");
  op = db_op_new(u->c->dh, DB_LEASE, NULL, 0);
  op->task = t;
  db_conn_wait_lease(u->c, op);
  return wait_op(L, op, lease_k);
}

/* lease:_release(): gives the connection back (rolling back an open
   transaction). Never suspends. */
static int conn_release(lua_State *L) {
  conn_ud *u = luaL_checkudata(L, 1, CONN_MT);
  if (u->lease) close_ud(u);
  return 0;
}

/* conn:_abort(sql): queues sql (ROLLBACK ...) without waiting for it, for
   cleanup where the task can no longer wait (it is being cancelled). */
static int conn_abort(lua_State *L) {
  conn_ud *u = luaL_checkudata(L, 1, CONN_MT);
  const char *sql = luaL_checkstring(L, 2);
  if (u->c && db_conn_usable(u->c)) db_conn_internal(u->c, sql);
  return 0;
}

/* ---- pools
 * ----------------------------------------------------------------------- */

static int pool_run(lua_State *L, int kind, const char *fname) {
  pool_ud *pu = check_pool(L);
  ah_task *t;
  db_op *op;
  if (kind == DB_COPY) luaL_checktype(L, 3, LUA_TTABLE);
  t = ah_task_check(L, fname);
  op = make_op(L, pu->p->dh, kind);
  op->task = t;
  db_pool_submit(pu->p, op);
  return wait_op(L, op, op_k);
}

/* pool:query(sql, ...) -> rows | nil, err */
static int pool_query(lua_State *L) {
  return pool_run(L, DB_QUERY, "query");
}

/* pool:exec(script) -> rows | nil, err */
static int pool_exec(lua_State *L) {
  lua_settop(L, 2);
  return pool_run(L, DB_EXEC, "exec");
}

/* pool:copy_in(sql, rows) -> count | nil, err */
static int pool_copy_in(lua_State *L) {
  lua_settop(L, 3);
  return pool_run(L, DB_COPY, "copy_in");
}

/* pool:_lease() -> lease, true | nil, err: a connection of one's own */
static int pool_lease(lua_State *L) {
  pool_ud *pu = check_pool(L);
  ah_task *t;
  db_op *op;
  lua_settop(L, 1);
  t = ah_task_check(L, "transaction");
  op = db_op_new(pu->p->dh, DB_LEASE, NULL, 0);
  op->task = t;
  db_pool_submit(pu->p, op);
  return wait_op(L, op, lease_k);
}

/* pool:close(): no more queries; idle connections close now, busy ones
   when their work is done */
static int pool_close(lua_State *L) {
  pool_ud *pu = luaL_checkudata(L, 1, POOL_MT);
  if (pu->p) db_pool_close(pu->p);
  return 0;
}

static int pool_gc(lua_State *L) {
  pool_ud *pu = luaL_checkudata(L, 1, POOL_MT);
  if (pu->p) {
    db_pool_close(pu->p);
    db_pool_unref(pu->p);
    pu->p = NULL;
  }
  return 0;
}

/* pool:stats() -> {size=, open=, idle=, busy=, connecting=, waiting=} */
static int pool_stats(lua_State *L) {
  db_pool *p = check_pool(L)->p;
  int i, idle = 0, busy = 0;
  for (i = 0; i < p->nconns; i++) {
    db_conn *c = p->conns[i];
    if (c->state != DB_C_READY) continue;
    if (c->nops == 0 && !c->lent)
      idle++;
    else
      busy++;
  }
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, p->size);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, p->nconns);
  lua_setfield(L, -2, "open");
  lua_pushinteger(L, idle);
  lua_setfield(L, -2, "idle");
  lua_pushinteger(L, busy);
  lua_setfield(L, -2, "busy");
  lua_pushinteger(L, p->nconnecting);
  lua_setfield(L, -2, "connecting");
  lua_pushinteger(L, p->waiters.n);
  lua_setfield(L, -2, "waiting");
  return 1;
}

static int pool_tostring(lua_State *L) {
  pool_ud *pu = luaL_checkudata(L, 1, POOL_MT);
  if (!pu->p)
    lua_pushliteral(L, "db.pool (collected)");
  else
    lua_pushfstring(L, "db.pool (%d/%d open%s)", pu->p->nconns, pu->p->size,
                    pu->p->closed ? ", closed" : "");
  return 1;
}

static double opt_num(lua_State *L, int t, const char *k, double def) {
  double v;
  int ok;
  if (lua_getfield(L, t, k) == LUA_TNIL) {
    lua_pop(L, 1);
    return def;
  }
  v = lua_tonumberx(L, -1, &ok);
  if (!ok || isnan(v) || v < 0)
    luaL_error(L, "db: option '%s' must be a number >= 0", k);
  lua_pop(L, 1);
  return v;
}

/* db.pool{dsn=, size=10, idle_timeout=60, null=, pipeline=64,
   statement_cache=256} -> pool | nil, err */
static int l_pool(lua_State *L) {
  db_host *dh = get_dh(L);
  const char *dsn;
  int size, pipeline, cache, nullidx = 0;
  double idle;
  char err[512];
  pool_ud *pu;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_getfield(L, 1, "dsn");
  luaL_argcheck(L, lua_type(L, 2) == LUA_TSTRING, 1, "dsn must be a string");
  dsn = lua_tostring(L, 2);
  size = opt_int(L, 1, "size", DEFAULT_POOL_SIZE, 1);
  pipeline = opt_int(L, 1, "pipeline", DEFAULT_PIPELINE, 1);
  cache = opt_int(L, 1, "statement_cache", DEFAULT_CACHE, 0);
  idle = opt_num(L, 1, "idle_timeout", DEFAULT_IDLE);
  if (lua_getfield(L, 1, "null") != LUA_TNIL) nullidx = lua_gettop(L);
  if (!db_conn_check_dsn(dsn, err, sizeof err)) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  pu = lua_newuserdatauv(L, sizeof *pu, 1);
  pu->p = NULL;
  luaL_setmetatable(L, POOL_MT);
  if (nullidx)
    lua_pushvalue(L, nullidx);
  else
    lua_pushnil(L);
  lua_setiuservalue(L, -2, 1);
  pu->p = db_pool_new(dh, dsn, size, pipeline, idle, cache);
  return 1;
}

/* ---- the module
 * -------------------------------------------------------------------- */

static void on_host_close(ah_host *h, void *data) {
  db_host *dh = data;
  (void)h;
  db_host_close(dh);
  db_host_unref(dh);
}

static void new_class(lua_State *L, const char *name, const luaL_Reg *methods,
                      const luaL_Reg *meta) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
}

void ah_open_db(lua_State *L, int mod) {
  static const luaL_Reg conn_methods[] = {{"query", conn_query},
                                          {"exec", conn_exec},
                                          {"copy_in", conn_copy_in},
                                          {"listen", conn_listen},
                                          {"unlisten", conn_unlisten},
                                          {"notification", conn_notification},
                                          {"close", conn_close},
                                          {"pid", conn_pid},
                                          {"_lease", conn_lease},
                                          {"_release", conn_release},
                                          {"_abort", conn_abort},
                                          {"_usable", conn_usable},
                                          {NULL, NULL}};
  static const luaL_Reg conn_meta[] = {{"__gc", conn_gc},
                                       {"__close", conn_gc},
                                       {"__tostring", conn_tostring},
                                       {NULL, NULL}};
  static const luaL_Reg pool_methods[] = {
      {"query", pool_query}, {"exec", pool_exec},   {"copy_in", pool_copy_in},
      {"close", pool_close}, {"stats", pool_stats}, {"_lease", pool_lease},
      {NULL, NULL}};
  static const luaL_Reg pool_meta[] = {{"__gc", pool_gc},
                                       {"__close", pool_gc},
                                       {"__tostring", pool_tostring},
                                       {NULL, NULL}};
  static const luaL_Reg funcs[] = {
      {"connect", l_connect}, {"pool", l_pool}, {NULL, NULL}};
  db_host *dh = db_host_new(ah_host_of(L));
  if (ah_host_hook(dh->host, AH_ON_CLOSE, on_host_close, dh) != AH_OK)
    luaL_error(L, "db: out of memory");
  lua_pushlightuserdata(L, dh);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &db_key);
  luaL_newmetatable(L, BUF_MT);
  lua_pushcfunction(L, gbuf_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newlib(L, funcs); /* db */
  new_class(L, CONN_MT, conn_methods, conn_meta);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "_conn");
  lua_pop(L, 1);
  new_class(L, POOL_MT, pool_methods, pool_meta);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "_pool");
  lua_pop(L, 1);
  lua_setfield(L, mod, "db");
  /* transaction() and with(), in Lua */
  lua_getfield(L, mod, "_load");
  lua_pushliteral(L, "db");
  lua_call(L, 1, 1);
  lua_pushvalue(L, mod);
  lua_call(L, 1, 0);
}
