/*
** fetch(url [, opts]) -> res | nil, "<kind>: <url>: <detail>"
**
** The Lua surface of the HTTP client: options in, response out. The
** transfers themselves run in the engine (fetch_engine.c); retries and the
** callable `fetch` table are in lua/fetch.lua.
*/
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <stdlib.h>
#include <time.h>

#include <curl/curl.h>
#include <curl/header.h>

#include "fetch_engine.h"

#define RESPONSE_MT "asynchost.fetch.response"
#define DEFAULT_MAX_SIZE ((lua_Integer)64 << 20)
#define DEFAULT_REDIRECTS 10

/* ---- raising with the caller's position ---------------------------------- */

/* The C function is called by the wrapper in lua/fetch.lua, which is called
   by the user: level 2 is the line to blame. */
static int opt_raise(lua_State *L, const char *fmt, ...) {
  va_list ap;
  luaL_where(L, 2);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  return lua_error(L);
}

static int bad_option(lua_State *L, const char *name, const char *expected,
                      int idx) {
  return opt_raise(L, "fetch: bad option '%s' (%s expected, got %s)", name,
                   expected, luaL_typename(L, idx));
}

/* ---- options ------------------------------------------------------------- */

typedef struct req_opts {
  const char *method; /* upper case, in mbuf */
  char mbuf[32];
  int headers;      /* stack index of the headers table, 0 if none */
  const char *body; /* body or encoded json (kept on the stack) */
  size_t body_len;
  int json; /* body came from opts.json */
  double timeout, connect_timeout;
  lua_Integer redirects;
  int verify;
  const char *cafile, *proxy, *output;
  lua_Integer max_size;
  int has_ctype, has_expect;
} req_opts;

static double opt_seconds(lua_State *L, const char *name, int idx) {
  double v;
  if (lua_type(L, idx) != LUA_TNUMBER) bad_option(L, name, "number", idx);
  v = lua_tonumber(L, idx);
  if (isnan(v) || v < 0)
    opt_raise(L, "fetch: bad option '%s' (must be >= 0 seconds)", name);
  return v;
}

static lua_Integer opt_count(lua_State *L, const char *name, int idx) {
  int ok;
  lua_Integer v = lua_tointegerx(L, idx, &ok);
  if (lua_type(L, idx) != LUA_TNUMBER || !ok)
    bad_option(L, name, "integer", idx);
  if (v < 0) opt_raise(L, "fetch: bad option '%s' (must be >= 0)", name);
  return v;
}

static const char *opt_string(lua_State *L, const char *name, int idx) {
  if (lua_type(L, idx) != LUA_TSTRING) bad_option(L, name, "string", idx);
  return lua_tostring(L, idx);
}

static int bad_text(const char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return 1;
  return 0;
}

/* Checks opts.headers (at idx) without building anything. */
static void check_headers(lua_State *L, int idx, req_opts *o) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t n, vn;
    const char *k, *v;
    if (lua_type(L, -2) != LUA_TSTRING)
      opt_raise(L, "fetch: bad header name (string expected, got %s)",
                luaL_typename(L, -2));
    k = lua_tolstring(L, -2, &n);
    if (n == 0 || bad_text(k, n) || memchr(k, ':', n) || memchr(k, ' ', n))
      opt_raise(L, "fetch: bad header name '%s'", k);
    if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
      /* false: leave out a header curl would send */
    } else if (lua_type(L, -1) == LUA_TSTRING ||
               lua_type(L, -1) == LUA_TNUMBER) {
      v = lua_tolstring(L, -1, &vn); /* a number becomes a string in place */
      if (bad_text(v, vn))
        opt_raise(L, "fetch: bad value for header '%s' (CR, LF or NUL)", k);
    } else
      opt_raise(L, "fetch: bad value for header '%s' (string expected, got %s)",
                k, luaL_typename(L, -1));
    if (strcasecmp(k, "content-type") == 0) o->has_ctype = 1;
    if (strcasecmp(k, "expect") == 0) o->has_expect = 1;
    lua_pop(L, 1);
  }
}

/* Reads and checks opts (at index 2); raises on misuse. Leaves the json
   body, if any, on the stack. */
static void read_opts(lua_State *L, req_opts *o) {
  int have_body = 0, json_idx = 0;
  memset(o, 0, sizeof *o);
  o->redirects = DEFAULT_REDIRECTS;
  o->verify = 1;
  o->max_size = DEFAULT_MAX_SIZE;
  if (lua_isnoneornil(L, 2)) {
    lua_settop(L, 4);
    o->method = "GET";
    return;
  }
  if (!lua_istable(L, 2))
    opt_raise(L, "fetch: bad argument #2 (table expected, got %s)",
              luaL_typename(L, 2));
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    const char *k;
    int v = lua_gettop(L);
    if (lua_type(L, -2) != LUA_TSTRING)
      opt_raise(L, "fetch: bad option key (string expected, got %s)",
                luaL_typename(L, -2));
    k = lua_tostring(L, -2);
    if (strcmp(k, "method") == 0) {
      size_t n = 0, i;
      const char *m =
          lua_type(L, v) == LUA_TSTRING ? lua_tolstring(L, v, &n) : NULL;
      if (!m) bad_option(L, k, "string", v);
      if (n == 0 || n >= sizeof o->mbuf)
        opt_raise(L, "fetch: bad method '%s'", m);
      for (i = 0; i < n; i++) {
        if (!isalpha((unsigned char)m[i]) && m[i] != '-' && m[i] != '_')
          opt_raise(L, "fetch: bad method '%s'", m);
        o->mbuf[i] = (char)toupper((unsigned char)m[i]);
      }
      o->mbuf[n] = '\0';
      o->method = o->mbuf;
    } else if (strcmp(k, "headers") == 0) {
      if (!lua_istable(L, v)) bad_option(L, k, "table", v);
      o->headers = 1; /* checked below, once it has a fixed slot */
    } else if (strcmp(k, "body") == 0) {
      if (lua_type(L, v) != LUA_TSTRING) bad_option(L, k, "string", v);
      have_body = 1;
    } else if (strcmp(k, "json") == 0) {
      json_idx = 1;
    } else if (strcmp(k, "timeout") == 0)
      o->timeout = opt_seconds(L, k, v);
    else if (strcmp(k, "connect_timeout") == 0)
      o->connect_timeout = opt_seconds(L, k, v);
    else if (strcmp(k, "redirects") == 0)
      o->redirects = opt_count(L, k, v);
    else if (strcmp(k, "verify") == 0) {
      if (!lua_isboolean(L, v)) bad_option(L, k, "boolean", v);
      o->verify = lua_toboolean(L, v);
    } else if (strcmp(k, "cafile") == 0)
      o->cafile = opt_string(L, k, v);
    else if (strcmp(k, "proxy") == 0)
      o->proxy = opt_string(L, k, v);
    else if (strcmp(k, "output") == 0)
      o->output = opt_string(L, k, v);
    else if (strcmp(k, "max_size") == 0) {
      if ((lua_type(L, v) == LUA_TNUMBER && lua_tonumber(L, v) == HUGE_VAL) ||
          (lua_type(L, v) == LUA_TBOOLEAN && !lua_toboolean(L, v)))
        o->max_size = -1; /* math.huge or false: no limit */
      else
        o->max_size = opt_count(L, k, v);
    } else if (strcmp(k, "retries") == 0 || strcmp(k, "retry_delay") == 0) {
      /* lua/fetch.lua's */
    } else
      opt_raise(L, "fetch: unknown option '%s'", k);
    lua_pop(L, 1);
  }
  if (have_body && json_idx)
    opt_raise(L, "fetch: give either 'body' or 'json', not both");
  /* stable slots: 3 headers, 4 body (string, or the encoded json) */
  lua_settop(L, 2);
  lua_getfield(L, 2, "headers");
  if (o->headers) {
    o->headers = 3;
    check_headers(L, 3, o);
  }
  if (json_idx) {
    char err[200];
    lua_getfield(L, 2, "json");
    if (!ah_json_encode(L, 4, err, sizeof err))
      opt_raise(L, "fetch: option 'json' cannot be encoded: %s",
                err[0] ? err : "no JSON encoder");
    lua_replace(L, 4);
    lua_settop(L, 4);
    o->json = 1;
  } else
    lua_getfield(L, 2, "body");
  if (lua_isstring(L, 4)) o->body = lua_tolstring(L, 4, &o->body_len);
  if (!o->method) o->method = o->body ? "POST" : "GET";
}

/* curl_slist of the request headers; NULL (and *oom) when out of memory. */
static struct curl_slist *build_headers(lua_State *L, const req_opts *o,
                                        int *oom) {
  struct curl_slist *list = NULL, *t;
  char small[512];
  *oom = 0;
#define ADD(s)                                                                 \
  do {                                                                         \
    if (!(t = curl_slist_append(list, (s)))) goto fail;                        \
    list = t;                                                                  \
  } while (0)
  if (o->headers) {
    lua_pushnil(L);
    while (lua_next(L, o->headers)) {
      size_t n, vn = 0;
      const char *k = lua_tolstring(L, -2, &n), *v = NULL;
      char *line = small;
      if (lua_type(L, -1) != LUA_TBOOLEAN) v = lua_tolstring(L, -1, &vn);
      if (n + vn + 3 > sizeof small && !(line = malloc(n + vn + 3))) goto fail;
      /* "Name: value"; "Name;" sends it empty; "Name:" leaves it out */
      if (!v)
        snprintf(line, n + 3, "%s:", k);
      else if (vn == 0)
        snprintf(line, n + 3, "%s;", k);
      else
        snprintf(line, n + vn + 3, "%s: %s", k, v);
      t = curl_slist_append(list, line);
      if (line != small) free(line);
      if (!t) goto fail;
      list = t;
      lua_pop(L, 1);
    }
  }
  if (o->json && !o->has_ctype) ADD("Content-Type: application/json");
  if (o->body && !o->has_ctype) ADD("Content-Type:"); /* not curl's form type */
  if (!o->has_expect) ADD("Expect:"); /* no 100-continue round trip */
  return list;
fail:
  curl_slist_free_all(list);
  *oom = 1;
  return NULL;
#undef ADD
}

/* Seconds (> 0, maybe math.huge) -> curl's milliseconds: at least 1, at
   most INT_MAX (24 days: as good as none; a bigger double does not fit
   a long). */
static long curl_ms(double s) {
  double ms = ceil(s * 1000);
  return ms < 1 ? 1 : ms > INT_MAX ? INT_MAX : (long)ms;
}

/* Sets the request's options on x's easy handle. A plain GET (no body,
   verify on, no cafile or proxy) sets only options that every request
   sets again, so its handle is recycled without a curl_easy_reset. */
static void apply_opts(fetch_xfer *x, const char *url, const req_opts *o) {
  CURL *c = x->easy;
  int https = strncmp(url, "https:", 6) == 0 || strncmp(url, "HTTPS:", 6) == 0;
  x->plain = strcmp(o->method, "GET") == 0 && !o->body && o->verify &&
             !o->cafile && !o->proxy;
  curl_easy_setopt(c, CURLOPT_URL, url);
  if (strcmp(o->method, "HEAD") == 0)
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  else if (strcmp(o->method, "GET") == 0 && !o->body)
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  else {
    /* POST: curl turns it into GET on 301/302/303 as browsers do; any
       other method (or GET with a body) is kept as given. */
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t)(o->body ? o->body_len : 0));
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, o->body ? o->body : "");
    if (strcmp(o->method, "POST") != 0)
      curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, o->method);
  }
  /* 0 is each one's default (no limit, 300 s, off, off) */
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, x->headers);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS,
                   o->timeout > 0 ? curl_ms(o->timeout) : 0L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                   o->connect_timeout > 0 ? curl_ms(o->connect_timeout) : 0L);
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, o->redirects > 0 ? 1L : 0L);
  if (o->redirects > 0)
    curl_easy_setopt(c, CURLOPT_MAXREDIRS,
                     (long)(o->redirects > 1000 ? 1000 : o->redirects));
  if (!o->verify) {
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
    curl_easy_setopt(c, CURLOPT_PROXY_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(c, CURLOPT_PROXY_SSL_VERIFYHOST, 0L);
  }
  if (o->cafile) curl_easy_setopt(c, CURLOPT_CAINFO, o->cafile);
  if (o->proxy) curl_easy_setopt(c, CURLOPT_PROXY, o->proxy);
  x->max_size = o->max_size;
  curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE,
                   (curl_off_t)(o->max_size >= 0 ? o->max_size : 0));
  /* wait to multiplex (h2) */
  curl_easy_setopt(c, CURLOPT_PIPEWAIT, https ? 1L : 0L);
}

/* ---- the URL ------------------------------------------------------------- */

/* Checks that url is an absolute http(s) URL; on success sets *hostkey
   (malloc'd "host:port") if want_key. Returns NULL or a reason. */
static const char *check_url(const char *url, int want_key, char **hostkey) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL;
  const char *why = NULL;
  CURLUcode rc;
  *hostkey = NULL;
  if (!u) return "out of memory";
  rc = curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME);
  if (rc != CURLUE_OK)
    why = curl_url_strerror(rc);
  else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
           (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
    why = "only http and https URLs can be fetched";
  else if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
    why = "no host";
  else if (want_key && curl_url_get(u, CURLUPART_PORT, &port,
                                    CURLU_DEFAULT_PORT) == CURLUE_OK) {
    size_t n = strlen(host) + strlen(port) + 2;
    if ((*hostkey = malloc(n)) != NULL) {
      size_t i;
      snprintf(*hostkey, n, "%s:%s", host, port);
      for (i = 0; (*hostkey)[i]; i++)
        (*hostkey)[i] = (char)tolower((unsigned char)(*hostkey)[i]);
    }
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return why;
}

/* ---- the response -------------------------------------------------------- */

/* Pushes s in lower case. */
static void push_lower(lua_State *L, const char *s) {
  char small[64];
  size_t n = strlen(s), i;
  char *p = n <= sizeof small ? small : lua_newuserdatauv(L, n, 0);
  for (i = 0; i < n; i++) p[i] = (char)tolower((unsigned char)s[i]);
  lua_pushlstring(L, p, n);
  if (p != small) lua_remove(L, -2);
}

/* Pushes the headers of the final response: lower-case names, repeats
   joined with ", ", set-cookie a list. */
static void push_headers(lua_State *L, CURL *easy) {
  struct curl_header *h = NULL;
  lua_createtable(L, 0, 8); /* a typical response fits: no rehashing */
  while ((h = curl_easy_nextheader(easy, CURLH_HEADER, -1, h)) != NULL) {
    int cookie = strcasecmp(h->name, "set-cookie") == 0;
    push_lower(L, h->name); /* headers name */
    lua_pushvalue(L, -1);
    lua_rawget(L, -3); /* headers name old */
    if (cookie) {
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_createtable(L, (int)h->amount, 0);
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, -5); /* headers name list */
      }
      lua_pushstring(L, h->value);
      lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
      lua_pop(L, 2);
      continue;
    }
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushstring(L, h->value);
    } else {
      lua_pushliteral(L, ", ");
      lua_pushstring(L, h->value);
      lua_concat(L, 3);
    }
    lua_rawset(L, -3);
  }
}

static void push_response(lua_State *L, fetch_xfer *x) {
  CURL *c = x->easy;
  long status = 0, version = 0;
  char *url = NULL;
  curl_off_t us = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(c, CURLINFO_HTTP_VERSION, &version);
  curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &url);
  curl_easy_getinfo(c, CURLINFO_TOTAL_TIME_T, &us);
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
  push_headers(L, c);
  lua_setfield(L, -2, "headers");
  if (x->out) {
    lua_pushstring(L, fetch_xfer_output_path(x));
    lua_setfield(L, -2, "output");
  } else {
    lua_pushlstring(L, x->body ? x->body : "", x->len);
    lua_setfield(L, -2, "body");
  }
  lua_pushinteger(L, (lua_Integer)x->received);
  lua_setfield(L, -2, "size");
  lua_pushstring(L, url ? url : lua_tostring(L, 1));
  lua_setfield(L, -2, "url");
  lua_pushnumber(L, (double)us / 1e6);
  lua_setfield(L, -2, "time");
  switch (version) {
  case CURL_HTTP_VERSION_1_0:
    lua_pushnumber(L, 1.0);
    break;
  case CURL_HTTP_VERSION_1_1:
    lua_pushnumber(L, 1.1);
    break;
  case CURL_HTTP_VERSION_2_0:
    lua_pushinteger(L, 2);
    break;
  case CURL_HTTP_VERSION_3:
    lua_pushinteger(L, 3);
    break;
  default:
    lua_pushnil(L);
  }
  lua_setfield(L, -2, "http_version");
  luaL_setmetatable(L, RESPONSE_MT);
}

/* [url opts headers body] -> res | nil, err */
static int request_k(lua_State *L, int status, lua_KContext ctx) {
  fetch_xfer *x = (fetch_xfer *)ctx;
  fetch_engine *e = x->e;
  const char *detail;
  int kind = fetch_xfer_error(x, &detail);
  (void)status;
  if (kind != FK_NONE) {
    char *url = NULL;
    if (x->easy) curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url);
    e->errors[kind]++;
    ah_push_fail(L, fetch_kind_names[kind], "%s: %s",
                 url && *url ? url : lua_tostring(L, 1), detail);
  } else
    push_response(L, x);
  fetch_xfer_release(x);
  return kind != FK_NONE ? 2 : 1;
}

/* fetch._request(url [, opts]) -> res | nil, err: one attempt */
static int l_request(lua_State *L) {
  fetch_engine *e = lua_touserdata(L, lua_upvalueindex(1));
  req_opts o;
  const char *url, *why;
  char *hostkey, err[128];
  fetch_xfer *x;
  ah_task *t;
  int kind, oom;
  if (lua_type(L, 1) != LUA_TSTRING)
    opt_raise(L, "fetch: bad argument #1 (URL string expected, got %s)",
              luaL_typename(L, 1));
  read_opts(L, &o); /* [url opts headers body] */
  url = lua_tostring(L, 1);
  t = ah_task_check(L, "fetch");
  if (fetch_engine_ready(e, err, sizeof err) != 0)
    return luaL_error(L, "fetch: %s", err);
  if ((why = check_url(url, e->per_host > 0, &hostkey)) != NULL) {
    e->errors[FK_HTTP]++;
    return ah_push_fail(L, "http", "bad URL '%s': %s", url, why);
  }
  if (!(x = fetch_xfer_new(e))) {
    free(hostkey);
    return luaL_error(L, "fetch: out of memory");
  }
  x->hostkey = hostkey;
  x->headers = build_headers(L, &o, &oom);
  if (oom || (o.output && fetch_xfer_output(x, o.output) != 0)) {
    fetch_xfer_release(x);
    return luaL_error(L, "fetch: out of memory");
  }
  apply_opts(x, url, &o);
  if ((kind = fetch_xfer_start(x, t)) != FK_NONE)
    return request_k(L, 0, (lua_KContext)x);
  return ah_task_suspend(L, fetch_xfer_cancel, x, request_k, (lua_KContext)x);
}

/* res:json() -> value | nil, "json: ..." */
static int res_json(lua_State *L) {
  size_t n;
  const char *s;
  int top;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "body");
  if (lua_type(L, -1) != LUA_TSTRING)
    return ah_push_fail(L, "json", "the response has no body in memory");
  s = lua_tolstring(L, -1, &n);
  top = lua_gettop(L);
  ah_json_decode(L, s, n);
  return lua_gettop(L) - top;
}

/* ---- config and stats ---------------------------------------------------- */

static lua_Integer limit_value(lua_State *L, const char *name) {
  lua_Integer v;
  int ok;
  if (lua_getfield(L, 1, name) == LUA_TNIL) return -1;
  if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) return 0;
  v = lua_tointegerx(L, -1, &ok);
  if (!ok || v < 0)
    luaL_error(L,
               "fetch.config: '%s' must be an integer >= 0 (0 or false: "
               "unlimited)",
               name);
  return v;
}

/* fetch.config{per_host = n, total = n, user_agent = s} -> current config */
static int l_config(lua_State *L) {
  fetch_engine *e = lua_touserdata(L, lua_upvalueindex(1));
  if (!lua_isnoneornil(L, 1)) {
    lua_Integer per_host, total;
    const char *ua = NULL;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
      const char *k =
          lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
      if (strcmp(k, "per_host") && strcmp(k, "total") &&
          strcmp(k, "user_agent"))
        luaL_error(L, "fetch.config: unknown setting '%s'", k);
      lua_pop(L, 1);
    }
    per_host = limit_value(L, "per_host");
    total = limit_value(L, "total");
    if (lua_getfield(L, 1, "user_agent") != LUA_TNIL) {
      ua = lua_tostring(L, -1);
      if (lua_type(L, -1) != LUA_TSTRING || bad_text(ua, strlen(ua)))
        luaL_error(L, "fetch.config: 'user_agent' must be a one-line string");
    }
    if (ua) {
      char *copy = strdup(ua);
      if (!copy) return luaL_error(L, "fetch.config: out of memory");
      free(e->user_agent);
      e->user_agent = copy;
      e->defaults++; /* recycled handles take it up */
    }
    fetch_engine_limits(e, per_host, total);
    lua_settop(L, 0);
  }
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, e->per_host);
  lua_setfield(L, -2, "per_host");
  lua_pushinteger(L, e->total);
  lua_setfield(L, -2, "total");
  lua_pushstring(L, e->user_agent);
  lua_setfield(L, -2, "user_agent");
  return 1;
}

/* fetch.stats() -> {requests, reused, bytes, errors = {kind = n}, ...} */
static int l_stats(lua_State *L) {
  fetch_engine *e = lua_touserdata(L, lua_upvalueindex(1));
  fetch_xfer *x;
  int i, queued = 0;
  for (x = e->wait_head; x; x = x->next) queued++;
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, (lua_Integer)e->requests);
  lua_setfield(L, -2, "requests");
  lua_pushinteger(L, (lua_Integer)e->reused);
  lua_setfield(L, -2, "reused");
  lua_pushinteger(L, (lua_Integer)e->bytes);
  lua_setfield(L, -2, "bytes");
  lua_createtable(L, 0, FK_COUNT);
  for (i = 1; i < FK_COUNT; i++)
    if (e->errors[i]) {
      lua_pushinteger(L, (lua_Integer)e->errors[i]);
      lua_setfield(L, -2, fetch_kind_names[i]);
    }
  lua_setfield(L, -2, "errors");
  lua_pushinteger(L, e->running);
  lua_setfield(L, -2, "running");
  lua_pushinteger(L, e->active);
  lua_setfield(L, -2, "active");
  lua_pushinteger(L, queued);
  lua_setfield(L, -2, "queued");
  lua_pushinteger(L, e->sockets);
  lua_setfield(L, -2, "sockets");
  lua_pushinteger(L, e->nfree);
  lua_setfield(L, -2, "idle_handles");
  lua_pushinteger(L, (lua_Integer)e->stale_fds);
  lua_setfield(L, -2, "stale_fds");
  lua_pushboolean(L, e->async_dns);
  lua_setfield(L, -2, "async_dns");
  return 1;
}

/* fetch._getdate(s) -> epoch seconds | nil: an HTTP date (Retry-After) */
static int l_getdate(lua_State *L) {
  time_t t = curl_getdate(luaL_checkstring(L, 1), NULL);
  if (t == -1)
    lua_pushnil(L);
  else
    lua_pushinteger(L, (lua_Integer)t);
  return 1;
}

void ah_open_fetch(lua_State *L, int mod) {
  static const luaL_Reg funcs[] = {{"request", l_request},
                                   {"config", l_config},
                                   {"stats", l_stats},
                                   {NULL, NULL}};
  fetch_engine *e = fetch_engine_new(ah_host_of(L));
  if (!e) luaL_error(L, "fetch: cannot initialise libcurl");
  if (luaL_newmetatable(L, RESPONSE_MT)) {
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, res_json);
    lua_setfield(L, -2, "json");
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_createtable(L, 0, 4); /* the C half, handed to lua/fetch.lua */
  lua_pushlightuserdata(L, e);
  luaL_setfuncs(L, funcs, 1);
  lua_pushcfunction(L, l_getdate);
  lua_setfield(L, -2, "getdate");
  lua_getfield(L, mod, "_load");
  lua_pushliteral(L, "fetch");
  lua_call(L, 1, 1);
  lua_pushvalue(L, mod);
  lua_pushvalue(L, -3);
  lua_call(L, 2, 0);
  lua_pop(L, 1);
}
