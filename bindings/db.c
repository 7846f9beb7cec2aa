/* Placeholder while the db binding is written; it adds nothing yet. */
#include "bindings.h"

void ah_open_db(lua_State *L, int mod) {
  (void)L;
  (void)mod;
}
