/* Placeholder while the exec binding is written; it adds nothing yet. */
#include "bindings.h"

void ah_open_exec(lua_State *L, int mod) {
  (void)L;
  (void)mod;
}
