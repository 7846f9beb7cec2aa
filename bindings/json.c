/*
** json: encode and decode JSON with jansson, for Lua and for the other
** bindings (ah_json_encode / ah_json_decode / ah_json_push_null).
**
** jansson parses, and validates and escapes strings; compact output is
** written straight from the Lua values (see "encoding"). Integers stay
** exact (both sides are 64-bit), floats are written with %.17g so they
** read back the same, and a JSON number without a fraction or exponent
** decodes to a Lua integer.
** Arrays are told from objects by a marker: decoded arrays and tables
** passed to json.array() carry it; an unmarked table is an array only when
** its keys are exactly 1..n.
*/
#include <limits.h>
#include <math.h>
#include <string.h>

#include <jansson.h>

#include "bindings.h"

#define NULL_MT "asynchost.json.null"
/* Tables nested deeper than the parser accepts are refused (a cycle?). */
#define MAX_DEPTH JSON_PARSER_MAX_DEPTH
#define PATH_MAX_LEN 120

/* The per-state JSON context is json.null itself: a full userdata in the
   registry whose user values hold the array metatable (1), the weak set
   of tables marked by json.array() that already had a metatable of their
   own (2) and the string "__jsontype" (3). Its memory holds the encoder's
   output buffer, reused from call to call, and the jansson tree being
   decoded, so that a Lua error thrown while it is converted (only out of
   memory can) does not leak it: the next call or __gc frees it.
   Conversions never call Lua code, so one context per state is enough. */
typedef struct jstate {
  json_t *pending;
  char *out;
  size_t cap;
} jstate;

#define OUT_KEEP 65536 /* a bigger output buffer is freed after the call */

static const char state_key = 'j';

/* Pushes json.null; returns its state. */
static jstate *push_state(lua_State *L) {
  jstate *js;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key);
  js = lua_touserdata(L, -1);
  if (!js) luaL_error(L, "json: the json binding is not open in this state");
  if (js->pending) {
    json_decref(js->pending);
    js->pending = NULL;
  }
  return js;
}

void ah_json_push_null(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key);
}

/* ---- encoding ------------------------------------------------------------

   Compact output (the hot path: HTTP responses, query parameters) is
   written straight from the Lua values into the output buffer: brackets,
   commas, integers, floats (%.17g, then the same touches jansson makes)
   and strings of plain printable ASCII. Any other string is validated
   and escaped by jansson. Pretty and sorted output builds a jansson tree
   and lets jansson write it. Both walk tables the same way (enc_shape). */

typedef struct enc {
  lua_State *L;
  jstate *js;
  size_t len;           /* bytes written to js->out */
  size_t flags;         /* jansson dump flags */
  const void *null;     /* json.null */
  const void *array_mt; /* the array marker metatable */
  int weak;             /* stack index: the weak set of marked tables */
  int typekey;          /* stack index: "__jsontype" */
  int depth;
  const char *msg; /* why it failed (static or in buf) */
  char buf[64];
  char path[PATH_MAX_LEN + 1]; /* where it failed, built while unwinding */
  size_t pathlen;
  int cut; /* the path lost its outer part */
} enc;

static int enc_fail(enc *e, const char *msg) {
  e->msg = msg;
  return 0;
}

static int enc_fail_type(enc *e, const char *what, int idx) {
  lua_State *L = e->L;
  const char *t = lua_type(L, idx) == LUA_TNUMBER ? "float" /* a key */
                                                  : luaL_typename(L, idx);
  snprintf(e->buf, sizeof e->buf, "cannot encode a %s%s", t, what);
  return enc_fail(e, e->buf);
}

/* Prepends one step (".key" or "[i]") to the path of the failing value. */
static void enc_path(enc *e, const char *step, size_t len) {
  if (e->pathlen + len > PATH_MAX_LEN) { /* keep the innermost part */
    e->cut = 1;
    return;
  }
  memmove(e->path + len, e->path, e->pathlen + 1);
  memcpy(e->path, step, len);
  e->pathlen += len;
}

static void enc_path_index(enc *e, lua_Integer i) {
  char step[32];
  int n = snprintf(step, sizeof step, "[" LUA_INTEGER_FMT "]", i);
  enc_path(e, step, (size_t)n);
}

/* The key at the top of the stack. */
static void enc_path_key(enc *e) {
  char step[40];
  size_t len;
  const char *k;
  if (lua_type(e->L, -1) != LUA_TSTRING) {
    enc_path_index(e, lua_tointeger(e->L, -1));
    return;
  }
  k = lua_tolstring(e->L, -1, &len);
  if (len > 32) len = 32;
  step[0] = '.';
  memcpy(step + 1, k, len);
  enc_path(e, step, len + 1);
}

/* Whether the table at idx is marked as an array. */
static int enc_marked(enc *e, int idx) {
  lua_State *L = e->L;
  int marked;
  if (!lua_getmetatable(L, idx)) return 0;
  if (lua_topointer(L, -1) == e->array_mt) {
    lua_pop(L, 1);
    return 1;
  }
  lua_pushvalue(L, e->typekey); /* mt "__jsontype" */
  lua_rawget(L, -2);
  marked = lua_type(L, -1) == LUA_TSTRING &&
           strcmp(lua_tostring(L, -1), "array") == 0;
  lua_pop(L, 2);
  if (marked) return 1;
  lua_pushvalue(L, idx);
  lua_rawget(L, e->weak);
  marked = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return marked;
}

/* Whether the table at idx is an array (1, its length in *n) or an object
   (0); -1 if it cannot be encoded. */
static int enc_shape(enc *e, int idx, lua_Integer *n) {
  lua_State *L = e->L;
  lua_Integer max = 0, count = 0;
  int marked, ints = 1;
  if (e->depth >= MAX_DEPTH) {
    enc_fail(e, "tables nested too deep (a cycle?)");
    return -1;
  }
  if (!lua_checkstack(L, 6)) {
    enc_fail(e, "out of memory");
    return -1;
  }
  marked = enc_marked(e, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) { /* are the keys exactly 1..n? */
    lua_pop(L, 1);
    count++;
    if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
      lua_Integer k = lua_tointeger(L, -1);
      if (k > max) max = k;
    } else {
      ints = 0;
      lua_pop(L, 1);
      break;
    }
  }
  if (marked && !ints) {
    enc_fail(e, "array has a key that is not a positive integer");
    return -1;
  }
  *n = max;
  return marked || (ints && count > 0 && max == count);
}

/* ---- the output buffer ---- */

static int out_reserve(enc *e, size_t n) {
  jstate *js = e->js;
  size_t cap;
  char *p;
  if (js->cap - e->len >= n) return 1;
  cap = js->cap ? js->cap : 1024;
  while (cap - e->len < n) {
    if (cap > ((size_t)-1) / 4) return enc_fail(e, "out of memory");
    cap *= 2;
  }
  p = realloc(js->out, cap);
  if (!p) return enc_fail(e, "out of memory");
  js->out = p;
  js->cap = cap;
  return 1;
}

static int out_add(enc *e, const char *s, size_t n) {
  if (!out_reserve(e, n)) return 0;
  memcpy(e->js->out + e->len, s, n);
  e->len += n;
  return 1;
}

static int out_char(enc *e, char c) {
  if (!out_reserve(e, 1)) return 0;
  e->js->out[e->len++] = c;
  return 1;
}

static int out_dump(const char *s, size_t n, void *data) {
  return out_add(data, s, n) ? 0 : -1;
}

/* ---- compact output, written directly ---- */

static int w_value(enc *e, int idx);

static int w_integer(enc *e, lua_Integer v) {
  char tmp[24], *p = tmp + sizeof tmp;
  lua_Unsigned u = v < 0 ? 0u - (lua_Unsigned)v : (lua_Unsigned)v;
  do *--p = (char)('0' + u % 10);
  while (u /= 10);
  if (v < 0) *--p = '-';
  return out_add(e, p, (size_t)(tmp + sizeof tmp - p));
}

/* %.17g, as jansson writes reals: a '.', never the locale's decimal
   point; ".0" when it would read back as an integer; no '+' or leading
   zeros in the exponent. */
static int w_real(enc *e, double d) {
  char tmp[48], *x;
  int n, i, point = 0;
  if (d == floor(d) && fabs(d) < 1e15 && !(d == 0 && signbit(d)))
    return w_integer(e, (lua_Integer)d) && out_add(e, ".0", 2); /* quicker */
  n = snprintf(tmp, sizeof tmp - 2, "%.17g", d);
  for (i = 0; i < n; i++) {
    char c = tmp[i];
    if (c == 'e') break;
    if ((c < '0' || c > '9') && c != '-') tmp[i] = '.', point = 1;
  }
  x = strchr(tmp, 'e');
  if (!point && !x) {
    tmp[n++] = '.';
    tmp[n++] = '0';
  } else if (x) {
    char *from = x + 1, *to = x + 1;
    if (*from == '+')
      from++;
    else if (*from == '-')
      from++, to++;
    while (*from == '0' && from[1]) from++;
    memmove(to, from, strlen(from) + 1);
    n = (int)strlen(tmp);
  }
  return out_add(e, tmp, (size_t)n);
}

/* A string, as a value or a key: plain printable ASCII is copied; other
   UTF-8 is validated by jansson, and escaped by it when it must be. */
static int w_string(enc *e, const char *s, size_t len, const char *bad) {
  json_t *j;
  size_t i;
  int ascii = 1, rc;
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == '"' || c == '\\') break;
    if (c >= 0x80) ascii = 0;
  }
  if (i == len && (ascii || !(e->flags & JSON_ENSURE_ASCII))) {
    if (!ascii) { /* copied as it is, once jansson says it is UTF-8 */
      if (!(j = json_stringn(s, len))) return enc_fail(e, bad);
      json_decref(j);
    }
    if (!out_reserve(e, len + 2)) return 0;
    e->js->out[e->len] = '"';
    memcpy(e->js->out + e->len + 1, s, len);
    e->js->out[e->len + len + 1] = '"';
    e->len += len + 2;
    return 1;
  }
  if (!(j = json_stringn(s, len))) return enc_fail(e, bad);
  rc = json_dump_callback(j, out_dump, e, JSON_ENCODE_ANY | e->flags);
  json_decref(j);
  return rc == 0 ? 1 : enc_fail(e, "out of memory");
}

static int w_array(enc *e, int idx, lua_Integer n) {
  lua_State *L = e->L;
  lua_Integer i;
  if (!out_char(e, '[')) return 0;
  for (i = 1; i <= n; i++) {
    int ok;
    if (i > 1 && !out_char(e, ',')) return 0;
    lua_rawgeti(L, idx, i);
    ok = w_value(e, lua_gettop(L));
    lua_pop(L, 1);
    if (!ok) {
      enc_path_index(e, i);
      return 0;
    }
  }
  return out_char(e, ']');
}

static int w_object(enc *e, int idx) {
  lua_State *L = e->L;
  int first = 1;
  if (!out_char(e, '{')) return 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) { /* key value */
    int ok;
    if (!first && !out_char(e, ',')) goto fail;
    first = 0;
    if (lua_type(L, -2) == LUA_TSTRING) {
      size_t klen;
      const char *k = lua_tolstring(L, -2, &klen);
      ok = w_string(e, k, klen, "table key is not valid UTF-8");
    } else if (lua_isinteger(L, -2))
      ok = out_char(e, '"') && w_integer(e, lua_tointeger(L, -2)) &&
           out_char(e, '"');
    else
      ok = enc_fail_type(e, " key", -2);
    if (!ok || !out_char(e, ':')) goto fail;
    if (!w_value(e, lua_gettop(L))) {
      lua_pop(L, 1);
      enc_path_key(e);
      lua_pop(L, 1);
      return 0;
    }
    lua_pop(L, 1);
  }
  return out_char(e, '}');
fail:
  lua_pop(L, 2);
  return 0;
}

static int w_value(enc *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    return out_add(e, "null", 4);
  case LUA_TBOOLEAN:
    return lua_toboolean(L, idx) ? out_add(e, "true", 4)
                                 : out_add(e, "false", 5);
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) return w_integer(e, lua_tointeger(L, idx));
    if (!isfinite(lua_tonumber(L, idx)))
      return enc_fail(e, "cannot encode NaN or infinity");
    return w_real(e, lua_tonumber(L, idx));
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    return w_string(e, s, len, "string is not valid UTF-8");
  }
  case LUA_TTABLE: {
    lua_Integer n;
    int shape = enc_shape(e, idx, &n), ok;
    if (shape < 0) return 0;
    e->depth++;
    ok = shape ? w_array(e, idx, n) : w_object(e, idx);
    e->depth--;
    return ok;
  }
  case LUA_TUSERDATA:
    if (lua_touserdata(L, idx) == e->null) return out_add(e, "null", 4);
    /* fall through */
  default:
    return enc_fail_type(e, "", idx);
  }
}

/* ---- pretty or sorted output, through a jansson tree ---- */

static json_t *t_value(enc *e, int idx);

static json_t *t_array(enc *e, int idx, lua_Integer n) {
  lua_State *L = e->L;
  json_t *arr = json_array(), *v;
  lua_Integer i;
  if (!arr) return enc_fail(e, "out of memory"), NULL;
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    v = t_value(e, lua_gettop(L));
    lua_pop(L, 1);
    if (!v || json_array_append_new(arr, v) != 0) {
      if (v) enc_fail(e, "out of memory");
      enc_path_index(e, i);
      json_decref(arr);
      return NULL;
    }
  }
  return arr;
}

static json_t *t_object(enc *e, int idx) {
  lua_State *L = e->L;
  json_t *obj = json_object(), *v;
  if (!obj) return enc_fail(e, "out of memory"), NULL;
  lua_pushnil(L);
  while (lua_next(L, idx)) { /* key value */
    char num[24];
    const char *k;
    size_t klen;
    if (lua_type(L, -2) == LUA_TSTRING)
      k = lua_tolstring(L, -2, &klen);
    else if (lua_isinteger(L, -2)) {
      klen = (size_t)snprintf(num, sizeof num, LUA_INTEGER_FMT,
                              lua_tointeger(L, -2));
      k = num;
    } else {
      enc_fail_type(e, " key", -2);
      goto fail;
    }
    if (!(v = t_value(e, lua_gettop(L)))) {
      lua_pop(L, 1);
      enc_path_key(e);
      lua_pop(L, 1);
      json_decref(obj);
      return NULL;
    }
    if (json_object_setn_new(obj, k, klen, v) != 0) { /* v is freed */
      enc_fail(e, "table key is not valid UTF-8");
      goto fail;
    }
    lua_pop(L, 1);
  }
  return obj;
fail:
  lua_pop(L, 2);
  json_decref(obj);
  return NULL;
}

static json_t *t_value(enc *e, int idx) {
  lua_State *L = e->L;
  json_t *j;
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    return json_null();
  case LUA_TBOOLEAN:
    return json_boolean(lua_toboolean(L, idx));
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx))
      j = json_integer((json_int_t)lua_tointeger(L, idx));
    else if (!isfinite(lua_tonumber(L, idx)))
      return enc_fail(e, "cannot encode NaN or infinity"), NULL;
    else
      j = json_real(lua_tonumber(L, idx));
    return j ? j : (enc_fail(e, "out of memory"), NULL);
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    j = json_stringn(s, len);
    return j ? j : (enc_fail(e, "string is not valid UTF-8"), NULL);
  }
  case LUA_TTABLE: {
    lua_Integer n;
    int shape = enc_shape(e, idx, &n);
    if (shape < 0) return NULL;
    e->depth++;
    j = shape ? t_array(e, idx, n) : t_object(e, idx);
    e->depth--;
    return j;
  }
  case LUA_TUSERDATA:
    if (lua_touserdata(L, idx) == e->null) return json_null();
    /* fall through */
  default:
    return enc_fail_type(e, "", idx), NULL;
  }
}

/* Pushes the text of the value at idx (flags: jansson's dump flags), or
   returns 0 and pushes nothing, with the reason in msg ("cannot encode a
   function at .a[2]": the caller adds "json: " or its own words). */
static int encode(lua_State *L, int idx, size_t flags, char *msg,
                  size_t msglen) {
  enc e;
  int ok;
  idx = lua_absindex(L, idx);
  e.js = push_state(L);        /* null */
  lua_getiuservalue(L, -1, 1); /* null mt */
  lua_getiuservalue(L, -2, 2); /* null mt weak */
  lua_getiuservalue(L, -3, 3); /* null mt weak typekey */
  e.L = L;
  e.len = 0;
  e.flags = flags;
  e.null = e.js;
  e.array_mt = lua_topointer(L, -3);
  e.weak = lua_gettop(L) - 1;
  e.typekey = lua_gettop(L);
  e.depth = 0;
  e.msg = "out of memory";
  e.path[0] = '\0';
  e.pathlen = 0;
  e.cut = 0;
  if (flags & (JSON_INDENT(JSON_MAX_INDENT) | JSON_SORT_KEYS)) {
    json_t *root = t_value(&e, idx);
    ok = root && json_dump_callback(root, out_dump, &e,
                                    flags | JSON_ENCODE_ANY |
                                        JSON_REAL_PRECISION(17)) == 0;
    json_decref(root);
  } else
    ok = w_value(&e, idx);
  lua_pop(L, 4);
  if (ok)
    lua_pushlstring(L, e.js->out, e.len);
  else if (msg && msglen)
    snprintf(msg, msglen, "%s%s%s%s", e.msg, e.pathlen ? " at " : "",
             e.cut ? "..." : "", e.path);
  if (e.js->cap > OUT_KEEP) {
    free(e.js->out);
    e.js->out = NULL;
    e.js->cap = 0;
  }
  return ok;
}

int ah_json_encode(lua_State *L, int idx, char *err, size_t errlen) {
  return encode(L, idx, JSON_COMPACT, err, errlen);
}

static int opt_flag(lua_State *L, int opts, const char *name) {
  int on;
  lua_getfield(L, opts, name);
  on = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return on;
}

/* json.encode(v [, opts]) -> text | nil, "json: ..." */
static int l_encode(lua_State *L) {
  size_t flags = JSON_COMPACT;
  char msg[256];
  luaL_checkany(L, 1);
  if (!lua_isnoneornil(L, 2)) {
    lua_Integer indent;
    luaL_checktype(L, 2, LUA_TTABLE);
    indent = opt_flag(L, 2, "pretty") ? 2 : 0;
    if (lua_getfield(L, 2, "indent") != LUA_TNIL) {
      int ok;
      indent = lua_tointegerx(L, -1, &ok);
      luaL_argcheck(L, ok && indent >= 0 && indent <= JSON_MAX_INDENT, 2,
                    "indent must be an integer from 0 to 31");
    }
    lua_pop(L, 1);
    if (indent > 0) flags = JSON_INDENT(indent);
    if (opt_flag(L, 2, "sort_keys")) flags |= JSON_SORT_KEYS;
    if (opt_flag(L, 2, "ascii")) flags |= JSON_ENSURE_ASCII;
  }
  if (encode(L, 1, flags, msg, sizeof msg)) return 1;
  return ah_push_fail(L, "json", "%s", msg);
}

/* ---- decoding ------------------------------------------------------------ */

/* [.. null mt] -> [.. null mt value]; Lua may raise out of memory only. */
static void dec_value(lua_State *L, json_t *j, int null) {
  size_t i, n;
  switch (json_typeof(j)) {
  case JSON_OBJECT: {
    void *it;
    luaL_checkstack(L, 3, "json: nested too deep");
    lua_createtable(L, 0, (int)json_object_size(j));
    for (it = json_object_iter(j); it; it = json_object_iter_next(j, it)) {
      lua_pushlstring(L, json_object_iter_key(it),
                      json_object_iter_key_len(it));
      dec_value(L, json_object_iter_value(it), null);
      lua_rawset(L, -3);
    }
    break;
  }
  case JSON_ARRAY:
    luaL_checkstack(L, 3, "json: nested too deep");
    n = json_array_size(j);
    lua_createtable(L, n > INT_MAX ? 0 : (int)n, 0);
    for (i = 0; i < n; i++) {
      dec_value(L, json_array_get(j, i), null);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_pushvalue(L, null + 1);
    lua_setmetatable(L, -2);
    break;
  case JSON_STRING:
    lua_pushlstring(L, json_string_value(j), json_string_length(j));
    break;
  case JSON_INTEGER:
    lua_pushinteger(L, (lua_Integer)json_integer_value(j));
    break;
  case JSON_REAL:
    lua_pushnumber(L, json_real_value(j));
    break;
  case JSON_TRUE:
    lua_pushboolean(L, 1);
    break;
  case JSON_FALSE:
    lua_pushboolean(L, 0);
    break;
  case JSON_NULL:
    lua_pushvalue(L, null);
    break;
  }
}

int ah_json_decode(lua_State *L, const char *s, size_t len) {
  json_error_t err;
  jstate *js = push_state(L); /* null */
  json_t *root = json_loadb(s, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
  if (!root) {
    lua_pop(L, 1);
    lua_pushnil(L);
    if (err.line > 0)
      lua_pushfstring(L, "json: %s at line %d column %d", err.text, err.line,
                      err.column);
    else
      lua_pushfstring(L, "json: %s", err.text);
    return 0;
  }
  js->pending = root;
  lua_getiuservalue(L, -1, 1); /* null mt */
  dec_value(L, root, lua_gettop(L) - 1);
  js->pending = NULL;
  json_decref(root);
  lua_replace(L, -3);
  lua_pop(L, 1);
  return 1;
}

/* json.decode(s) -> value | nil, "json: ..." */
static int l_decode(lua_State *L) {
  size_t len;
  const char *s;
  luaL_checktype(L, 1, LUA_TSTRING);
  s = lua_tolstring(L, 1, &len);
  return ah_json_decode(L, s, len) ? 1 : 2;
}

/* ---- json.array, json.null ---------------------------------------------- */

/* json.array([t]) -> t, marked as a JSON array (a new table if none) */
static int l_array(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  } else
    luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  push_state(L);                 /* t null */
  lua_getiuservalue(L, 2, 1);    /* t null amt */
  if (!lua_getmetatable(L, 1)) { /* no metatable: give it the marker */
    lua_pushvalue(L, 3);
    lua_setmetatable(L, 1);
  } else if (!lua_rawequal(L, -1, 3)) { /* someone else's: remember it */
    lua_getiuservalue(L, 2, 2);
    lua_pushvalue(L, 1);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
  }
  lua_settop(L, 1);
  return 1;
}

static int null_tostring(lua_State *L) {
  lua_pushliteral(L, "null");
  return 1;
}

static int null_gc(lua_State *L) {
  jstate *js = lua_touserdata(L, 1);
  if (js->pending) json_decref(js->pending);
  js->pending = NULL;
  free(js->out);
  js->out = NULL;
  js->cap = 0;
  return 0;
}

void ah_open_json(lua_State *L, int mod) {
  static const luaL_Reg funcs[] = {{"encode", l_encode},
                                   {"decode", l_decode},
                                   {"array", l_array},
                                   {NULL, NULL}};
  jstate *js;
  mod = lua_absindex(L, mod);
  lua_createtable(L, 0, 4); /* json */
  luaL_setfuncs(L, funcs, 0);
  js = lua_newuserdatauv(L, sizeof *js, 3); /* json null */
  js->pending = NULL;
  js->out = NULL;
  js->cap = 0;
  luaL_newmetatable(L, NULL_MT);
  lua_pushcfunction(L, null_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushcfunction(L, null_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_createtable(L, 0, 1); /* the array marker */
  lua_pushliteral(L, "array");
  lua_setfield(L, -2, "__jsontype");
  lua_setiuservalue(L, -2, 1);
  lua_newtable(L); /* tables marked by json.array() that have their own mt */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_setiuservalue(L, -2, 2);
  lua_pushliteral(L, "__jsontype");
  lua_setiuservalue(L, -2, 3);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &state_key);
  lua_setfield(L, -2, "null");
  lua_setfield(L, mod, "json");
}
