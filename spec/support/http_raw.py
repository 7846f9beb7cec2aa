#!/usr/bin/env python3
"""Raw-socket clients for spec/http_clients_spec.lua: malformed and
unusual requests that ordinary clients never send.

    http_raw.py PORT SCENARIO

prints one JSON object: what came back (statuses in order, whether the
server closed the connection, the raw head of the first response, ...).
"""
import json
import re
import socket
import sys
import time

HOST = "127.0.0.1"


def connect(port):
    s = socket.create_connection((HOST, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_all(s, limit=10.0):
    """Reads until the server closes (or limit seconds pass)."""
    data = b""
    closed = False
    deadline = time.time() + limit
    while time.time() < deadline:
        s.settimeout(max(0.01, deadline - time.time()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    return data, closed


def read_until(s, pattern, limit=5.0):
    data = b""
    deadline = time.time() + limit
    while not re.search(pattern, data) and time.time() < deadline:
        s.settimeout(max(0.01, deadline - time.time()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    return data


def statuses(data):
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]


def result(data, closed, **extra):
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    out = {"statuses": statuses(data), "closed": closed, "head": head,
           "raw": data.decode("latin-1")[:4000]}
    out.update(extra)
    return out


def send_and_read(port, payload, limit=5.0):
    s = connect(port)
    s.sendall(payload)
    data, closed = read_all(s, limit)
    s.close()
    return result(data, closed)


def bad_request_line(port):
    return send_and_read(port, b"THIS IS NOT HTTP\r\n\r\n")


def bad_version(port):
    return send_and_read(port, b"GET / HTTP/9.7\r\nHost: x\r\n\r\n")


def empty_target(port):
    """A request target that ends before it begins (fuzz/fuzz_http_request
    found the empty piece of it added to a header buffer not yet made)."""
    return send_and_read(port, b"CONNECT \r\x8a\rEz\r")


def no_target(port):
    """CONNECT without a target, which llhttp lets through (found by
    fuzz/fuzz_http_request)."""
    return send_and_read(port, b"CONNECT \r\n\n")


def huge_header(port):
    big = b"X-Big: " + b"a" * 20000 + b"\r\n"
    return send_and_read(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")


def many_headers(port):
    hs = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    return send_and_read(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + hs + b"\r\n")


def bad_chunk(port):
    return send_and_read(
        port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n")


def smuggle(port):
    return send_and_read(
        port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /n/9 HTTP/1.1\r\n"
        b"Host: x\r\n\r\n")


def header_crlf_in_request(port):
    # a bare CR inside a header value is not allowed by the parser
    return send_and_read(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n")


def inject(port):
    s = connect(port)
    s.sendall(b"GET /inject?v=a%0d%0aX-Evil:%201 HTTP/1.1\r\nHost: x\r\n"
              b"Connection: close\r\n\r\n")
    data, closed = read_all(s)
    s.close()
    return result(data, closed,
                  evil=re.search(rb"(?im)^x-evil", data) is not None)


def inject_ok(port):
    s = connect(port)
    s.sendall(b"GET /inject?v=plain HTTP/1.1\r\nHost: x\r\n"
              b"Connection: close\r\n\r\n")
    data, closed = read_all(s)
    s.close()
    return result(data, closed)


def pipeline(port):
    s = connect(port)
    reqs = (b"GET /slow?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /n/2 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /n/4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    s.sendall(reqs)
    data, closed = read_all(s)
    s.close()
    bodies = re.findall(rb"(slept|n=2|\"len\":3|n=4)", data)
    return result(data, closed, order=[b.decode() for b in bodies])


def http10(port):
    return send_and_read(port, b"GET /n/1 HTTP/1.0\r\n\r\n")


def http10_keepalive(port):
    s = connect(port)
    s.sendall(b"GET /n/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    first = read_until(s, rb"n=1")
    s.sendall(b"GET /n/2 HTTP/1.0\r\n\r\n")
    data, closed = read_all(s)
    s.close()
    return result(first + data, closed)


def expect_continue(port):
    s = connect(port)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
              b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
    interim = read_until(s, rb"\r\n\r\n")
    s.sendall(b"hello")
    data, closed = read_all(s)
    s.close()
    return result(interim + data, closed, interim=interim.decode("latin-1"))


def expect_too_big(port):
    s = connect(port)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n"
              b"Expect: 100-continue\r\n\r\n")
    data, closed = read_all(s)
    s.close()
    return result(data, closed)


def body_too_big(port):
    s = connect(port)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
              b"\r\n\r\n")
    chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
    sent = 0
    try:
        for _ in range(40):  # 2.5 MiB > max_body 1 MiB
            s.sendall(chunk)
            sent += 1
    except (BrokenPipeError, ConnectionResetError):
        pass
    data, closed = read_all(s)
    s.close()
    return result(data, closed, chunks_sent=sent)


def slowloris(port):
    s = connect(port)
    start = time.time()
    payload = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    data = b""
    closed = False
    for ch in payload:
        try:
            s.sendall(bytes([ch]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        s.settimeout(0.2)
        try:
            got = s.recv(65536)
            if not got:
                closed = True
                break
            data += got
        except socket.timeout:
            pass
        except ConnectionResetError:
            closed = True
            break
        if time.time() - start > 15:
            break
    if not closed:
        more, closed = read_all(s, 2)
        data += more
    s.close()
    return result(data, closed, seconds=time.time() - start)


def disconnect(port):
    s = connect(port)
    s.sendall(b"GET /slow?s=3 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    s.close()
    return {"done": True}


def holder(port):
    """Keeps a connection open (for max_connections): prints, then waits."""
    s = connect(port)
    s.sendall(b"GET /slow?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    data, closed = read_all(s, 3)
    s.close()
    return result(data, closed)


SCENARIOS = {f.__name__: f for f in [
    bad_request_line, bad_version, empty_target, no_target, huge_header, many_headers, bad_chunk,
    smuggle, header_crlf_in_request, inject, inject_ok, pipeline, http10,
    http10_keepalive, expect_continue, expect_too_big, body_too_big,
    slowloris, disconnect, holder]}

if __name__ == "__main__":
    port, name = int(sys.argv[1]), sys.argv[2]
    print(json.dumps(SCENARIOS[name](port)))
