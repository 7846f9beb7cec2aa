/* Placeholder while the json binding is written; it adds nothing yet. */
#include "bindings.h"

void ah_open_json(lua_State *L, int mod) {
  (void)L;
  (void)mod;
}

int ah_json_encode(lua_State *L, int idx, char *err, size_t errlen) {
  (void)L;
  (void)idx;
  if (err && errlen) err[0] = '\0';
  return 0;
}

int ah_json_decode(lua_State *L, const char *s, size_t len) {
  (void)s;
  (void)len;
  lua_pushnil(L);
  lua_pushliteral(L, "json: not built yet");
  return 0;
}

void ah_json_push_null(lua_State *L) {
  lua_pushlightuserdata(L, NULL);
}
