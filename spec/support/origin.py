#!/usr/bin/env python3
"""The independent HTTP origin the fetch and crawl specs talk to:
python3's own http.server (ThreadingHTTPServer), not asynchost's."""
import argparse
import http.server
import json
import socketserver
import threading
import time
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def send_body(self, status, body, ctype="text/plain", headers=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        route = ROUTES.get(url.path)
        if route is None:
            for prefix, fn in PREFIX_ROUTES:
                if url.path.startswith(prefix):
                    route = fn
                    break
        if route is None:
            return self.send_body(404, "not found: " + url.path)
        route(self, url, q)

    do_POST = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET
    do_PATCH = do_GET
    do_HEAD = do_GET


def ping(h, url, q):
    h.send_body(200, "pong")


def echo(h, url, q):
    n = int(h.headers.get("Content-Length") or 0)
    body = h.rfile.read(n).decode("utf-8", "replace") if n else ""
    h.send_body(200, json.dumps({
        "method": h.command,
        "path": h.path,
        "headers": {k.lower(): v for k, v in h.headers.items()},
        "body": body,
    }), "application/json")


def delay(h, url, q):
    time.sleep(float(q.get("ms", "100")) / 1000)
    h.send_body(200, q.get("body", "delayed"))


ROUTES = {"/ping": ping, "/echo": echo, "/delay": delay}
PREFIX_ROUTES = []


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    srv = Server(("127.0.0.1", args.port), Handler)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
