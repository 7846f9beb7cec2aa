/* Placeholder while the html binding is written; it adds nothing yet. */
#include "bindings.h"

void ah_open_html(lua_State *L, int mod) {
  (void)L;
  (void)mod;
}
