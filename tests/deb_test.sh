#!/usr/bin/env bash
# cpack -G DEB, then checks the package's fields and contents and runs the
# CLI from it.   tests/deb_test.sh <build>
set -euo pipefail
build=$1
out="$build/test-deb"
fail() { echo "deb_test: $*" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"
(cd "$build" && cpack -G DEB -B "$out") >"$out/cpack.log" 2>&1 ||
  { cat "$out/cpack.log"; fail "cpack failed"; }
deb=$(ls "$out"/*.deb)
info=$(dpkg-deb -I "$deb")
contents=$(dpkg-deb -c "$deb")
echo "$info"
depends=$(sed -n 's/^ Depends: //p' <<<"$info")
for dep in liblua5.4-0 libuv1 libcurl4 libpq5 libjansson4 libxml2; do
  grep -qE "(^|, )$dep( |,|$)" <<<"$depends" || fail "Depends lacks $dep: $depends"
done
grep -q "^ Package: asynchost$" <<<"$info" || fail "package name"
grep -q "^ Version: 0.1.0$" <<<"$info" || fail "version"
for f in ./usr/bin/asynchost ./usr/include/asynchost.h ./usr/lib/libasynchost.a \
         ./usr/lib/libasynchost.so.0.1.0 ./usr/lib/libasynchost.so.0 ./usr/lib/libasynchost.so \
         ./usr/lib/pkgconfig/asynchost.pc ./usr/lib/cmake/asynchost/asynchost-config.cmake \
         ./usr/lib/lua/5.4/asynchost.so ./usr/share/man/man1/asynchost.1; do
  grep -qE " $f( |$)" <<<"$contents" || fail "not in the package: $f"
done
# the CLI from the package runs
dpkg-deb -x "$deb" "$out/root"
res=$("$out/root/usr/bin/asynchost" -e 'print(gather({1, 2}, function(x) sleep(0.01) return x * 2 end)[2])')
[ "$res" = "4" ] || fail "the packaged asynchost printed '$res'"
echo "deb_test: ok ($(basename "$deb"))"
