#!/usr/bin/env bash
# Runs the examples/embed program and checks what it prints.
#   tests/check_embed.sh <embed binary> [env NAME=value...]
# With AH_TEST_ORIGIN set (spec/run sets it), the program fetches its /ping.
set -uo pipefail
bin=$1
shift
url=""
[ -n "${AH_TEST_ORIGIN:-}" ] && url="$AH_TEST_ORIGIN/ping"
out=$(env "$@" "$bin" $url 2>&1)
rc=$?
echo "$out"
fail() { echo "check_embed: $*" >&2; exit 1; }
[ $rc -eq 0 ] || fail "exit status $rc"
expect() { grep -qF -- "$1" <<<"$out" || fail "missing line: $1"; }
expect "lua: slept 0.2 s"
expect "lua: compute(200000) = 17984 primes"
expect "lua: timeout(0.05, myapp.compute, 2^40) -> nil, timeout:"
expect "app: heartbeat ticked on while the Lua tasks ran"
expect "app: host freed, loop closed cleanly"
if grep -qF "lua: fetch: not in this build" <<<"$out"; then
  echo "check_embed: (fetch is not built in yet)"
elif [ -n "$url" ]; then
  expect "lua: fetch $url -> 200"
else
  expect "lua: fetch: no url given"
fi
echo "check_embed: ok"
