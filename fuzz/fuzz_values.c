/*
** The Lua-to-C conversions of fetch options and db parameters: the input
** is decoded into Lua values (fuzz_values.lua), which go to fetch (an
** unreachable local URL: the options are read and applied, the transfer
** fails at once) and to pool:query / pool:copy_in (a pool whose server
** refuses connections: the parameters are packed, the query fails).
*/
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int fn = LUA_NOREF;
  if (fn == LUA_NOREF) fn = fz_load("fuzz_values");
  fz_call(fn, data, size, 8000);
  fz_after();
  return 0;
}
