/*
** url.parse, url.resolve, url.normalize and doc:links() on arbitrary
** strings; the checks are in fuzz_url.lua.
*/
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int fn = LUA_NOREF;
  if (fn == LUA_NOREF) fn = fz_load("fuzz_url");
  fz_call(fn, data, size, 2000);
  fz_after();
  return 0;
}
