#!/usr/bin/env python3
"""Misbehaving HTTP servers for spec/faults_spec.lua, each its own
process so a spec can kill it (kill -9 mid-transfer):

    fault_server.py MODE READYFILE

writes "PORT PID" to READYFILE once it listens, then serves until killed
(or for at most 120 s, so a failed spec leaves nothing behind).

MODE origin: python3's http.server (ThreadingHTTPServer)
    /ping                      200 "pong"
    /trickle?total=N&chunk=C&ms=M
                               Content-Length N, then C bytes every M ms
MODE raw: socketserver over raw sockets, one keep-alive connection per
    client, a response chosen by the request's path:
    /short    Content-Length: 100, sends 10 bytes, keeps the connection
    /long     Content-Length: 5, sends "hello" and then a whole second
              response ("smuggled") the client never asked for
    /badlen   Content-Length: abc
    /duplen   two different Content-Length headers
    /neglen   Content-Length: -1
    other     200 "clean" (with the path echoed in X-Path)
"""
import http.server
import os
import re
import socket
import socketserver
import sys
import threading
import time
import urllib.parse


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/trickle":
            total = int(q.get("total", "1000000"))
            chunk = int(q.get("chunk", "1000"))
            pause = float(q.get("ms", "50")) / 1000
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(total))
            self.end_headers()
            left = total
            try:
                while left > 0:
                    n = min(left, chunk)
                    self.wfile.write(b"t" * n)
                    self.wfile.flush()
                    left -= n
                    time.sleep(pause)
            except OSError:
                self.close_connection = True
            return
        body = b"pong"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class OriginServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


def raw_response(path):
    if path == "/short":
        return (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"s" * 10), False
    if path == "/long":
        return (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Path: smuggled\r\n\r\nsmuggled"), True
    if path == "/badlen":
        return b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nabc", True
    if path == "/duplen":
        return (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 7\r\n\r\n"
                b"abcdefg"), True
    if path == "/neglen":
        return b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc", True
    body = b"clean"
    return (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Path: " + path.encode() +
            b"\r\n\r\n" + body), True


class Raw(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        s.settimeout(60)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = s.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                m = re.match(rb"[A-Z]+ (\S+) HTTP/1\.[01]", head)
                path = m.group(1).decode() if m else "/"
                out, more = raw_response(path)
                s.sendall(out)
                if not more:  # /short: hold the connection, say nothing more
                    while s.recv(65536):
                        pass
                    return
        except OSError:
            return


class RawServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    mode, ready = sys.argv[1], sys.argv[2]
    if mode == "origin":
        srv = OriginServer(("127.0.0.1", 0), Origin)
    elif mode == "raw":
        srv = RawServer(("127.0.0.1", 0), Raw)
    else:
        sys.exit("unknown mode " + mode)
    with open(ready + ".tmp", "w") as f:
        f.write("%d %d\n" % (srv.server_address[1], os.getpid()))
    os.rename(ready + ".tmp", ready)
    threading.Timer(120, lambda: os._exit(0)).start()
    srv.serve_forever()


if __name__ == "__main__":
    main()
