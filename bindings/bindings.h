/*
** The bindings: each file adds one capability to the "asynchost" module,
** through the public API in asynchost.h only.
*/
#ifndef AH_BINDINGS_H
#define AH_BINDINGS_H

#include <lauxlib.h>

#include "../host/asynchost.h"

/* Each opener sets its names in the module table at stack index mod. */
void ah_open_sleep(lua_State *L, int mod);
void ah_open_sync(lua_State *L, int mod);
void ah_open_stdin(lua_State *L, int mod);

#endif
