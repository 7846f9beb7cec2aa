/* Placeholder while the log binding is written; it adds nothing yet. */
#include "bindings.h"

void ah_open_log(lua_State *L, int mod) {
  (void)L;
  (void)mod;
}
