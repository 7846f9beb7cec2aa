#!/usr/bin/env python3
"""The independent HTTP origin the fetch and crawl specs talk to:
python3's own http.server (ThreadingHTTPServer), not asynchost's."""
import argparse
import gzip
import http.server
import json
import socket
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
        # every route reads the request body, so keep-alive stays in step
        n = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(n) if n else b""
        if self.path.startswith("http://"):  # asked as a forward proxy
            return proxied(self)
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
    body = h.body.decode("utf-8", "replace")
    h.send_body(200, json.dumps({
        "method": h.command,
        "path": h.path,
        "headers": {k.lower(): v for k, v in h.headers.items()},
        "body": body,
    }), "application/json")


def delay(h, url, q):
    time.sleep(float(q.get("ms", "100")) / 1000)
    h.send_body(200, q.get("body", "delayed"))


def proxied(h):
    h.send_body(200, "proxied " + h.command + " " + h.path)


def redirect(h, url, q):
    """/redirect?n=N: a chain of N redirects, then 200 "done"."""
    n = int(q.get("n", "1"))
    if n <= 0:
        return h.send_body(200, "done")
    code = int(q.get("code", "302"))
    h.send_body(code, "", headers=[("Location", "/redirect?n=%d&code=%d" % (n - 1, code))])


def loop(h, url, q):
    h.send_body(302, "", headers=[("Location", "/loop")])


def redirect_to(h, url, q):
    h.send_body(int(q.get("code", "302")), "", headers=[("Location", q["url"])])


def hang(h, url, q):
    """Reads the request and never answers (until the client goes away)."""
    deadline = time.time() + float(q.get("s", "30"))
    h.connection.settimeout(0.2)
    while time.time() < deadline:
        try:
            if h.connection.recv(1) == b"":
                break
        except socket.timeout:
            pass
        except OSError:
            break
    h.close_connection = True


def truncate(h, url, q):
    """Promises 100000 bytes, sends 1000, then closes the connection."""
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Content-Length", "100000")
    h.end_headers()
    h.wfile.write(b"x" * 1000)
    h.wfile.flush()
    h.close_connection = True
    h.connection.shutdown(socket.SHUT_RDWR)


def big(h, url, q):
    """/big?n=BYTES[&chunked=1]: n bytes of "x", with or without a length."""
    n = int(q.get("n", "1000"))
    if q.get("chunked") != "1":
        return h.send_body(200, b"x" * n, "application/octet-stream")
    h.send_response(200)
    h.send_header("Content-Type", "application/octet-stream")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    left = n
    try:
        while left > 0:
            c = min(left, 65536)
            h.wfile.write(b"%x\r\n" % c + b"x" * c + b"\r\n")
            left -= c
        h.wfile.write(b"0\r\n\r\n")
    except OSError:  # the client stopped reading (max_size)
        h.close_connection = True


FLAKY = {}
FLAKY_LOCK = threading.Lock()


def flaky(h, url, q):
    """/flaky?key=K&fails=2&status=503[&retry_after=S]: fails `fails` times
    for each key, then answers 200 with the attempt number."""
    with FLAKY_LOCK:
        n = FLAKY[q["key"]] = FLAKY.get(q["key"], 0) + 1
    if n <= int(q.get("fails", "2")):
        hdrs = []
        if "retry_after" in q:
            hdrs.append(("Retry-After", q["retry_after"]))
        return h.send_body(int(q.get("status", "503")), "try again", headers=hdrs)
    h.send_body(200, "ok after %d" % n)


def flaky_count(h, url, q):
    with FLAKY_LOCK:
        h.send_body(200, str(FLAKY.get(q["key"], 0)))


def gzipped(h, url, q):
    body = gzip.compress(q.get("body", "hello gzip " * 100).encode())
    h.send_body(200, body, headers=[("Content-Encoding", "gzip")])


def cookies(h, url, q):
    h.send_response(200)
    h.send_header("Content-Length", "2")
    h.send_header("Set-Cookie", "a=1; Path=/")
    h.send_header("Set-Cookie", "b=2; Path=/")
    h.send_header("X-Multi", "one")
    h.send_header("X-Multi", "two")
    h.send_header("X-Single", "only")
    h.send_header("X-" + "Long" * 40, "name over 64 bytes")
    h.end_headers()
    h.wfile.write(b"ok")


def json_route(h, url, q):
    h.send_body(200, json.dumps({"ok": True, "n": 3, "list": [1, 2]}), "application/json")


def badjson(h, url, q):
    h.send_body(200, "{not json", "application/json")


def empty(h, url, q):
    """Closes the connection without a word."""
    h.close_connection = True
    h.connection.shutdown(socket.SHUT_RDWR)


def status(h, url, q):
    h.send_body(int(q.get("code", "200")), "status " + q.get("code", "200"))


ROUTES = {
    "/ping": ping, "/echo": echo, "/delay": delay, "/redirect": redirect,
    "/loop": loop, "/redirect-to": redirect_to, "/hang": hang,
    "/truncate": truncate, "/big": big, "/flaky": flaky,
    "/flaky-count": flaky_count, "/gzip": gzipped, "/cookies": cookies,
    "/json": json_route, "/badjson": badjson, "/status": status,
    "/empty": empty,
}
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
