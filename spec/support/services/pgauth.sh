# One password-protected role on the throwaway cluster (spec/run starts it
# with trust authentication), for the db specs' authentication tests:
# ah_pw / ah_secret over TCP with scram-sha-256. Sourced by spec/run.
start_pgauth() {
  local data="$AH_TEST_PG_DATA" hba tmpf
  [ -n "$data" ] || return 0
  psql -X -q -h "$AH_TEST_PG_SOCKET" -p "$AH_TEST_PG_PORT" -U postgres -d postgres \
    -c "SET password_encryption = 'scram-sha-256'" \
    -c "CREATE ROLE ah_pw LOGIN PASSWORD 'ah_secret'" >/dev/null || return 1
  hba="$data/pg_hba.conf"
  tmpf=$(mktemp)
  # first match wins: the role's line goes before initdb's trust lines
  { echo "host all ah_pw 127.0.0.1/32 scram-sha-256"; cat "$hba"; } >"$tmpf"
  cat "$tmpf" >"$hba" # keeps the file's owner
  rm -f "$tmpf"
  psql -X -q -h "$AH_TEST_PG_SOCKET" -p "$AH_TEST_PG_PORT" -U postgres -d postgres \
    -c "SELECT pg_reload_conf()" >/dev/null || return 1
  export AH_TEST_PG_PWUSER=ah_pw AH_TEST_PG_PASSWORD=ah_secret
}
