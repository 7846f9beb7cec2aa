#!/usr/bin/env python3
"""The independent web server the crawl specs crawl: python3's own
http.server (ThreadingHTTPServer + SimpleHTTPRequestHandler) serving a
directory the spec wrote, not asynchost's.

It logs every request as one line "start end method path status" (times
from time.monotonic(), flushed at once) so a spec can check exactly which
URLs were fetched, how often, and how requests overlapped. Extras:
  --delay S        every response waits S seconds first (a slow site)
  /go/<path>       301 redirect to /<path>
  /flaky/<path>    503 the first time each path is asked for, then /<path>
"""
import argparse
import functools
import http.server
import os
import threading
import time


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 0.0
    log_file = None
    lock = threading.Lock()
    flaky_seen = set()

    def log_message(self, fmt, *args):
        pass

    def log_request(self, code="-", size="-"):
        end = time.monotonic()
        line = "%.6f %.6f %s %s %s\n" % (self.t0, end, self.command, self.path, code)
        with Handler.lock:
            Handler.log_file.write(line)
            Handler.log_file.flush()

    def send_plain(self, status, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        self.t0 = time.monotonic()
        if Handler.delay:
            time.sleep(Handler.delay)
        if self.path.startswith("/go/"):
            return self.send_plain(301, [("Location", self.path[3:])])
        if self.path.startswith("/flaky/"):
            with Handler.lock:
                first = self.path not in Handler.flaky_seen
                Handler.flaky_seen.add(self.path)
            if first:
                return self.send_plain(503, [("Retry-After", "0")])
            self.path = self.path[6:]
        return super().do_GET()

    def do_HEAD(self):
        self.t0 = time.monotonic()
        return super().do_HEAD()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--delay", type=float, default=0.0)
    a = ap.parse_args()
    Handler.delay = a.delay
    Handler.log_file = open(a.log, "a")
    handler = functools.partial(Handler, directory=a.dir)
    http.server.ThreadingHTTPServer.daemon_threads = True
    http.server.ThreadingHTTPServer.request_queue_size = 1024
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, a.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
