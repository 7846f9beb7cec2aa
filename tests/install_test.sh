#!/usr/bin/env bash
# The installed package, as its users get it.
#   tests/install_test.sh install|find_package|pkg_config|lua_module <build> <src>
# install: cmake --install into <build>/test-install and check the layout;
# the others build/run examples/embed (or the Lua module) against it.
# AH_CONSUMER_CFLAGS: flags for the consumer builds (the sanitizers);
# AH_LUA_PRELOAD: LD_PRELOAD for lua5.4 (a sanitized module needs libasan).
set -euo pipefail
mode=$1 build=$2 src=$3
prefix="$build/test-install"
cflags=${AH_CONSUMER_CFLAGS:-}
fail() { echo "install_test($mode): $*" >&2; exit 1; }
pcfile() { find "$prefix" -name asynchost.pc | head -1; }

case "$mode" in
install)
  rm -rf "$prefix"
  cmake --install "$build" --prefix "$prefix" >"$build/test-install.log" ||
    { cat "$build/test-install.log"; fail "cmake --install failed"; }
  for f in bin/asynchost include/asynchost.h share/man/man1/asynchost.1; do
    [ -f "$prefix/$f" ] || fail "not installed: $f"
  done
  for f in libasynchost.a libasynchost.so "libasynchost.so.0" pkgconfig/asynchost.pc \
           cmake/asynchost/asynchost-config.cmake \
           cmake/asynchost/asynchost-config-version.cmake lua/5.4/asynchost.so; do
    [ -n "$(find "$prefix" -path "*/$f" -print -quit)" ] || fail "not installed: $f"
  done
  # the shared library exports the public ah_ names only
  so=$(find "$prefix" -name "libasynchost.so.0" -print -quit)
  extra=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -v '^ah_[a-z]' || true)
  [ -z "$extra" ] || fail "libasynchost.so exports more than ah_ names: $extra"
  syms=$(nm -D --defined-only "$so")
  grep -q " ah_host_new$" <<<"$syms" || fail "ah_host_new is not exported"
  # the installed CLI runs
  out=$("$prefix/bin/asynchost" -e 'print(gather({1, 2}, function(x) sleep(0.01) return x * 2 end)[2])')
  [ "$out" = "4" ] || fail "installed asynchost printed '$out'"
  if command -v man >/dev/null; then
    page=$(man -l "$prefix/share/man/man1/asynchost.1" 2>&1)
    grep -q -- "--workers" <<<"$page" || fail "the man page does not render"
  fi
  echo "install_test: installed into $prefix"
  ;;
find_package)
  out="$build/test-consumer-cmake"
  rm -rf "$out"
  cmake -S "$src/examples/embed" -B "$out" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_C_FLAGS="$cflags" >"$out.log" 2>&1 || { cat "$out.log"; fail "configure"; }
  cmake --build "$out" >>"$out.log" 2>&1 || { cat "$out.log"; fail "build"; }
  # the shared library is found through the build tree's RPATH
  libs=$(ldd "$out/embed")
  grep -q "$prefix/.*libasynchost.so.0" <<<"$libs" ||
    fail "embed is not linked with the installed libasynchost.so"
  "$src/tests/check_embed.sh" "$out/embed"
  "$src/tests/check_embed.sh" "$out/embed_static"
  ;;
pkg_config)
  pc=$(pcfile)
  [ -n "$pc" ] || fail "no asynchost.pc"
  export PKG_CONFIG_PATH="$(dirname "$pc")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  [ "$(pkg-config --modversion asynchost)" = "0.1.0" ] || fail "modversion"
  [ -f "$(pkg-config --variable=includedir asynchost)/asynchost.h" ] ||
    fail "includedir: $(pkg-config --variable=includedir asynchost)"
  grep -q "lua5.4" <<<"$(pkg-config --cflags asynchost)" || fail "no lua5.4 in cflags"
  grep -q -- "-lcurl" <<<"$(pkg-config --static --libs asynchost)" || fail "static libs lack curl"
  out="$build/test-consumer-pc"
  rm -rf "$out"
  mkdir -p "$out"
  # shellcheck disable=SC2046,SC2086
  cc $cflags -o "$out/embed" "$src/examples/embed/main.c" $(pkg-config --cflags --libs asynchost)
  libdir=$(pkg-config --variable=libdir asynchost)
  "$src/tests/check_embed.sh" "$out/embed" LD_LIBRARY_PATH="$libdir"
  ;;
lua_module)
  mod=$(find "$prefix" -path "*/lua/5.4/asynchost.so" -print -quit)
  [ -n "$mod" ] || fail "no installed asynchost.so"
  out=$(env LD_PRELOAD="${AH_LUA_PRELOAD:-}" LUA_CPATH="$(dirname "$mod")/?.so" lua5.4 -e '
    local ah = require "asynchost"
    print(ah.run(function(a) ah.sleep(0.01) return a * 2 end, 21))')
  [ "$out" = "42" ] || fail "lua5.4 printed '$out'"
  echo "install_test: lua5.4 loads the installed module"
  ;;
*) fail "unknown mode" ;;
esac
