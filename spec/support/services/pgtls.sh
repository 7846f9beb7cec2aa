# A second throwaway PostgreSQL cluster that speaks TLS (ssl = on, a
# self-signed certificate made here), for the db specs' TLS tests; the
# main cluster stays plain so nobody else's connections change.
# AH_TEST_PGTLS (URI with sslmode=require). Sourced by spec/run.
start_pgtls() {
  local bin=/usr/lib/postgresql/15/bin dir="$tmp/pgtls" port
  [ -x "$bin/initdb" ] || bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  command -v openssl >/dev/null || return 0
  port=$(free_port)
  local as=()
  if [ "$(id -u)" -eq 0 ]; then as=(runuser -u postgres --); fi
  mkdir -p "$dir"
  [ ${#as[@]} -gt 0 ] && chown postgres "$dir"
  "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 \
    >"$tmp/pgtls-initdb.log" 2>&1 || { cat "$tmp/pgtls-initdb.log" >&2; return 1; }
  openssl req -new -x509 -days 2 -nodes -subj "/CN=localhost" \
    -keyout "$dir/data/server.key" -out "$dir/data/server.crt" >/dev/null 2>&1 || return 1
  chmod 600 "$dir/data/server.key"
  [ ${#as[@]} -gt 0 ] && chown postgres "$dir/data/server.key" "$dir/data/server.crt"
  cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
ssl = on
max_connections = 50
CONF
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 30 start >/dev/null ||
    { cat "$dir/log" >&2; return 1; }
  stops+=("${as[*]} $bin/pg_ctl -D $dir/data -m immediate stop")
  export AH_TEST_PGTLS="postgresql://postgres@127.0.0.1:$port/postgres?sslmode=require"
}
