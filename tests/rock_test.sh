#!/usr/bin/env bash
# The rockspec: `luarocks make` in a copy of the source tree (it builds in
# build.luarocks/ there), into a private rocks tree; then lua5.4 loads the
# module from that tree.   tests/rock_test.sh <build> <src>
set -euo pipefail
build=$1 src=$2
out="$build/test-rock"
fail() { echo "rock_test: $*" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/src"
# the files the main build sees: tracked and untracked, not ignored ones
# (so no build directories)
(cd "$src" && git ls-files -z -co --exclude-standard | xargs -0 cp --parents -t "$out/src")
rock=$(cd "$out/src" && ls asynchost-*.rockspec)
luarocks lint "$out/src/$rock" || fail "lint"
(cd "$out/src" && luarocks --lua-version 5.4 --tree "$out/tree" make "$rock") \
  >"$out/make.log" 2>&1 || { cat "$out/make.log"; fail "luarocks make failed"; }
mod=$(find "$out/tree" -path "*/lua/5.4/asynchost.so" -print -quit)
[ -n "$mod" ] || fail "no asynchost.so in the rocks tree"
[ -z "$(find "$out/tree" -name 'libasynchost*' -o -name asynchost.h | head -1)" ] ||
  fail "the rock installs more than the module"
res=$(LUA_CPATH="$(dirname "$mod")/?.so" lua5.4 -e '
  local ah = require "asynchost"
  print(ah.run(function() ah.sleep(0.01) return "from the rock" end))')
[ "$res" = "from the rock" ] || fail "lua5.4 printed '$res'"
echo "rock_test: ok ($mod)"
