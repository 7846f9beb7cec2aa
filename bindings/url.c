/*
** url.parse, url.resolve, url.normalize: thin wrappers over libcurl's URL
** API (curl_url), so asynchost parses URLs exactly as fetch does. Also the
** link resolver that doc:links() in html.c uses.
**
** A bad URL is an expected failure (it usually comes from a page or a
** user): nil, "http: bad URL '<url>': <curl's reason>", the same kind fetch
** uses for a malformed URL. A non-string argument raises.
*/
#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

/* Shared with html.c (declared there): */
void ah__url_open(lua_State *L, int mod);
CURLU *ah__url_base(const char *s);
char *ah__url_link(CURLU *base, const char *ref, size_t len);

static int bad_url(lua_State *L, const char *s, CURLUcode rc) {
  return ah_push_fail(L, "http", "bad URL '%s': %s", s, curl_url_strerror(rc));
}

/* curl decodes %7f in a host name and keeps the byte, but refuses it raw
   when the URL is read again: such a URL could be neither fetched nor
   parsed back, so it is a bad one from the start. */
static int host_ok(CURLU *u) {
  char *host = NULL;
  int ok;
  if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) return 1;
  ok = strchr(host, 0x7f) == NULL;
  curl_free(host);
  return ok;
}

/* Hosts are case-insensitive; curl keeps the case it was given. */
static void lower_host(CURLU *u) {
  char *host = NULL, *p;
  int upper = 0;
  if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) return;
  for (p = host; *p; p++)
    if (*p >= 'A' && *p <= 'Z') {
      *p = (char)(*p - 'A' + 'a');
      upper = 1;
    }
  if (upper) curl_url_set(u, CURLUPART_HOST, host, 0);
  curl_free(host);
}

/* Pushes part of u as a string, or nil when the URL has none. */
static void push_part(lua_State *L, CURLU *u, CURLUPart part, unsigned flags) {
  char *s = NULL;
  if (curl_url_get(u, part, &s, flags) == CURLUE_OK && s) {
    lua_pushstring(L, s);
    curl_free(s);
  } else
    lua_pushnil(L);
}

/* url.parse(s) -> {scheme, host, port, path, query, fragment, user,
   password} | nil, err. Parts stay percent-encoded; port is a number,
   the scheme's default when the URL has none. */
static int l_parse(lua_State *L) {
  const char *s = luaL_checkstring(L, 1);
  CURLU *u = curl_url();
  CURLUcode rc;
  char *port = NULL;
  if (!u) return luaL_error(L, "url.parse: out of memory");
  rc = curl_url_set(u, CURLUPART_URL, s, CURLU_NON_SUPPORT_SCHEME);
  if (rc == CURLUE_OK && !host_ok(u)) rc = CURLUE_BAD_HOSTNAME;
  if (rc != CURLUE_OK) {
    curl_url_cleanup(u);
    return bad_url(L, s, rc);
  }
  lua_createtable(L, 0, 8);
  push_part(L, u, CURLUPART_SCHEME, 0);
  lua_setfield(L, -2, "scheme");
  push_part(L, u, CURLUPART_HOST, 0);
  lua_setfield(L, -2, "host");
  if (curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK &&
      port) {
    lua_pushinteger(L, strtol(port, NULL, 10));
    lua_setfield(L, -2, "port");
    curl_free(port);
  }
  push_part(L, u, CURLUPART_PATH, 0);
  lua_setfield(L, -2, "path");
  push_part(L, u, CURLUPART_QUERY, 0);
  lua_setfield(L, -2, "query");
  push_part(L, u, CURLUPART_FRAGMENT, 0);
  lua_setfield(L, -2, "fragment");
  push_part(L, u, CURLUPART_USER, 0);
  lua_setfield(L, -2, "user");
  push_part(L, u, CURLUPART_PASSWORD, 0);
  lua_setfield(L, -2, "password");
  curl_url_cleanup(u);
  return 1;
}

/* Pushes the whole URL, normalized as curl prints it; 1 on success. */
static int push_url(lua_State *L, CURLU *u, const char *what) {
  char *out = NULL;
  CURLUcode rc = curl_url_get(u, CURLUPART_URL, &out, CURLU_NO_DEFAULT_PORT);
  if (rc != CURLUE_OK) return bad_url(L, what, rc);
  lua_pushstring(L, out);
  curl_free(out);
  return 1;
}

/* A reference that is empty or only a fragment names the base document
   itself (RFC 3986 5.2.2); curl 7.88 resolves it to the base's directory. */
static int same_document(const char *ref) {
  return ref[0] == '\0' || ref[0] == '#';
}

/* url.resolve(base, ref) -> absolute URL | nil, err */
static int l_resolve(lua_State *L) {
  const char *base = luaL_checkstring(L, 1);
  const char *ref = luaL_checkstring(L, 2);
  CURLU *u = curl_url();
  CURLUcode rc;
  int n;
  if (!u) return luaL_error(L, "url.resolve: out of memory");
  rc = curl_url_set(u, CURLUPART_URL, base, CURLU_NON_SUPPORT_SCHEME);
  if (rc == CURLUE_OK && !host_ok(u)) rc = CURLUE_BAD_HOSTNAME;
  if (rc != CURLUE_OK) {
    curl_url_cleanup(u);
    return bad_url(L, base, rc);
  }
  if (same_document(ref))
    rc = curl_url_set(u, CURLUPART_FRAGMENT, ref[0] ? ref + 1 : NULL, 0);
  else
    rc = curl_url_set(u, CURLUPART_URL, ref,
                      CURLU_NON_SUPPORT_SCHEME | CURLU_URLENCODE);
  if (rc == CURLUE_OK && !host_ok(u)) rc = CURLUE_BAD_HOSTNAME;
  if (rc != CURLUE_OK) {
    curl_url_cleanup(u);
    return bad_url(L, ref, rc);
  }
  n = push_url(L, u, ref);
  curl_url_cleanup(u);
  return n;
}

/* url.normalize(s) -> URL | nil, err: scheme and host lower-cased, the
   default port dropped, dot segments removed, an empty path made "/". */
static int l_normalize(lua_State *L) {
  const char *s = luaL_checkstring(L, 1);
  CURLU *u = curl_url();
  CURLUcode rc;
  int n;
  if (!u) return luaL_error(L, "url.normalize: out of memory");
  rc = curl_url_set(u, CURLUPART_URL, s,
                    CURLU_NON_SUPPORT_SCHEME | CURLU_URLENCODE);
  if (rc == CURLUE_OK && !host_ok(u)) rc = CURLUE_BAD_HOSTNAME;
  if (rc != CURLUE_OK) {
    curl_url_cleanup(u);
    return bad_url(L, s, rc);
  }
  lower_host(u);
  n = push_url(L, u, s);
  curl_url_cleanup(u);
  return n;
}

/* ---- for doc:links() ----------------------------------------------------- */

CURLU *ah__url_base(const char *s) {
  CURLU *u = curl_url();
  if (u && (curl_url_set(u, CURLUPART_URL, s, CURLU_URLENCODE) != CURLUE_OK ||
            !host_ok(u))) {
    curl_url_cleanup(u);
    u = NULL;
  }
  return u;
}

static int is_http(CURLU *u) {
  char *scheme = NULL;
  int ok;
  if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK) return 0;
  ok = strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0;
  curl_free(scheme);
  return ok;
}

/* The absolute http(s) URL that ref (len bytes, not 0-terminated, already
   stripped of white space) names against base (may be NULL), without its
   fragment; NULL if there is none. Free the result with curl_free. */
char *ah__url_link(CURLU *base, const char *ref, size_t len) {
  char buf[2048], *tmp = NULL, *out = NULL;
  const char *r = ref;
  CURLU *u;
  if (len < sizeof buf) {
    memcpy(buf, ref, len);
    buf[len] = '\0';
    r = buf;
  } else {
    if (!(tmp = malloc(len + 1))) return NULL;
    memcpy(tmp, ref, len);
    tmp[len] = '\0';
    r = tmp;
  }
  if (memchr(r, '\0', len)) goto done; /* an embedded NUL */
  u = base ? curl_url_dup(base) : curl_url();
  if (!u) goto done;
  if (same_document(r)
          ? base != NULL
          : curl_url_set(u, CURLUPART_URL, r, CURLU_URLENCODE) == CURLUE_OK) {
    if (is_http(u) && host_ok(u)) {
      curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0);
      lower_host(u);
      if (curl_url_get(u, CURLUPART_URL, &out, CURLU_NO_DEFAULT_PORT) !=
          CURLUE_OK)
        out = NULL;
    }
  }
  curl_url_cleanup(u);
done:
  free(tmp);
  return out;
}

void ah__url_open(lua_State *L, int mod) {
  static const luaL_Reg funcs[] = {{"parse", l_parse},
                                   {"resolve", l_resolve},
                                   {"normalize", l_normalize},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_setfield(L, mod, "url");
}
