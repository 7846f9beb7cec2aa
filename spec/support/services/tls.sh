# shellcheck shell=bash
# nginx over TLS (HTTP/2 and HTTP/1.1 by ALPN) with a self-signed
# certificate made here, for the fetch specs. Sourced by spec/run.
#   AH_TEST_TLS_ORIGIN  https://127.0.0.1:PORT  (h2 + http/1.1)
#   AH_TEST_TLS_CA      the certificate, to pass as cafile
start_tls() {
  local dir="$tmp/tls" port i
  command -v nginx >/dev/null || { echo "spec/run: nginx not installed: TLS specs skipped" >&2; return 0; }
  mkdir -p "$dir/html" "$dir/temp"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$dir/openssl.log" 2>&1 ||
    { cat "$dir/openssl.log" >&2; return 1; }
  head -c 20000 /dev/zero | tr '\0' 'a' >"$dir/html/big.txt"
  port=$(free_port)
  cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  default_type text/plain;
  client_body_temp_path $dir/temp/body;
  proxy_temp_path $dir/temp/proxy;
  fastcgi_temp_path $dir/temp/fastcgi;
  uwsgi_temp_path $dir/temp/uwsgi;
  scgi_temp_path $dir/temp/scgi;
  server {
    listen 127.0.0.1:$port ssl http2;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    root $dir/html;
    gzip on;
    gzip_types text/plain;
    gzip_min_length 100;
    location = /ping { return 200 "pong"; }
    location = /conn { return 200 "\$connection"; }
    location = /proto { return 200 "\$server_protocol"; }
  }
}
CONF
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
  stops+=("kill $!")
  for i in $(seq 100); do
    curl -fsk "https://127.0.0.1:$port/ping" >/dev/null 2>&1 && break
    sleep 0.05
  done
  export AH_TEST_TLS_ORIGIN="https://127.0.0.1:$port"
  export AH_TEST_TLS_CA="$dir/cert.pem"
}
