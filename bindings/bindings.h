/*
** The bindings: each file adds one capability to the "asynchost" module,
** through the public API in asynchost.h only.
*/
#ifndef AH_BINDINGS_H
#define AH_BINDINGS_H

#include <lauxlib.h>

#include "../host/asynchost.h"

/* Each opener sets its names in the module table at stack index mod. */
void ah_open_sleep(lua_State *L, int mod); /* sleep, now */
void ah_open_sync(lua_State *L, int mod);  /* queue, semaphore */
void ah_open_stdin(lua_State *L, int mod); /* stdin */
void ah_open_json(lua_State *L, int mod);  /* json */
void ah_open_log(lua_State *L, int mod);   /* log, progress, env, signal */
void ah_open_fetch(lua_State *L, int mod); /* fetch */
void ah_open_db(lua_State *L, int mod);    /* db */
void ah_open_http(lua_State *L, int mod);  /* http */
void ah_open_html(lua_State *L, int mod);  /* html, url */
void ah_open_fs(lua_State *L, int mod);    /* fs */
void ah_open_exec(lua_State *L, int mod);  /* exec */
void ah_open_net(lua_State *L, int mod);   /* net */

/* JSON for the other bindings (bindings/json.c). */

/* Pushes the JSON text of the value at idx and returns 1; on a value JSON
   cannot hold pushes nothing and returns 0 with the reason in err (if not
   NULL), without the "json: " kind: callers add their own words. */
int ah_json_encode(lua_State *L, int idx, char *err, size_t errlen);

/* Pushes the decoded value; on bad JSON pushes nil and "json: <detail>"
   and returns 0. */
int ah_json_decode(lua_State *L, const char *s, size_t len);

/* Pushes json.null, the sentinel for JSON null. */
void ah_json_push_null(lua_State *L);

/* A log line from C, as log.<level>(...) writes it (bindings/log.c):
   level is "debug", "info", "warn" or "error". */
void ah_log(lua_State *L, const char *level, const char *fmt, ...);

#endif
