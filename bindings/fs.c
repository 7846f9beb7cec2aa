/* Placeholder while the fs binding is written; it adds nothing yet. */
#include "bindings.h"

void ah_open_fs(lua_State *L, int mod) {
  (void)L;
  (void)mod;
}
