# A TCP port that accepts connections and never answers (python3), for
# specs of connection timeouts and of cancelling a connection attempt:
# AH_TEST_BLACKHOLE_PORT. Sourced by spec/run.
start_blackhole() {
  local port
  port=$(free_port)
  /usr/bin/python3 -c '
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
held = []
while True:
    c, _ = s.accept()
    held.append(c)  # kept open, never read, never answered
' "$port" >/dev/null 2>&1 &
  stops+=("kill $!")
  for _ in $(seq 100); do
    /usr/bin/python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port" 2>/dev/null && break
    sleep 0.05
  done
  export AH_TEST_BLACKHOLE_PORT="$port"
}
