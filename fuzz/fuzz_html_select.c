/*
** html.parse, then doc:select(css) and doc:xpath(expr) with arbitrary
** selectors; the checks are in fuzz_html_select.lua.
*/
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int fn = LUA_NOREF;
  if (fn == LUA_NOREF) fn = fz_load("fuzz_html_select");
  fz_call(fn, data, size, 5000);
  fz_after();
  return 0;
}
