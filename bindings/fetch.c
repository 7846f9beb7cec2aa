/* Placeholder while the fetch binding is written; it adds nothing yet. */
#include "bindings.h"

void ah_open_fetch(lua_State *L, int mod) {
  (void)L;
  (void)mod;
}
