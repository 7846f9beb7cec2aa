/* Placeholder while the http binding is written; it adds nothing yet. */
#include "bindings.h"

void ah_open_http(lua_State *L, int mod) {
  (void)L;
  (void)mod;
}
