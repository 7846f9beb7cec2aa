#!/usr/bin/env python3
"""The load spec/load_spec.lua puts on our http server, from outside:

    load_client.py PORT IDLE SLOW MEASURE

1. opens IDLE keep-alive connections (raising its own RLIMIT_NOFILE),
   does one request on each and keeps them all open;
2. starts SLOW slowloris clients, each trickling a request head one byte
   every 100 ms and never finishing it;
3. meanwhile makes MEASURE ordinary requests one after the other, half
   on fresh connections and half on one keep-alive connection, 10 ms
   apart, timing each;
4. does a second request on every held connection (they must still be
   served).

Prints one JSON object with the counts, the statuses and the latencies.
"""
import json
import re
import resource
import selectors
import socket
import sys
import threading
import time

HOST = "127.0.0.1"
REQ = b"GET / HTTP/1.1\r\nHost: load\r\n\r\n"
HEAD_END = re.compile(rb"\r\n\r\n")
LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)\r\n", re.I)
STATUS = re.compile(rb"^HTTP/1\.1 (\d{3}) ")


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def one_response(buf):
    """(status, rest) once buf holds a whole response, else None."""
    m = HEAD_END.search(buf)
    if not m:
        return None
    head = buf[:m.end()]
    n = LENGTH.search(head)
    length = int(n.group(1)) if n else 0
    if len(buf) < m.end() + length:
        return None
    st = STATUS.match(head)
    return (int(st.group(1)) if st else 0), buf[m.end() + length:]


def request_all(socks, deadline):
    """Sends REQ on every socket and reads one response from each:
    returns {status: count} (0: no response, closed or failed)."""
    sel = selectors.DefaultSelector()
    bufs = {}
    for s in socks:
        try:
            s.send(REQ)
        except OSError:
            continue
        bufs[s] = b""
        sel.register(s, selectors.EVENT_READ)
    statuses = {}
    left = len(bufs)
    while left and time.time() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                statuses[0] = statuses.get(0, 0) + 1
                sel.unregister(s)
                left -= 1
                continue
            bufs[s] += data
            r = one_response(bufs[s])
            if r:
                statuses[r[0]] = statuses.get(r[0], 0) + 1
                sel.unregister(s)
                left -= 1
    statuses[0] = statuses.get(0, 0) + left
    sel.close()
    return {str(k): v for k, v in statuses.items() if v}


def open_idle(port, n, deadline, batch=500):
    socks, statuses, failed = [], {}, 0
    while len(socks) + failed < n and time.time() < deadline:
        fresh = []
        for _ in range(min(batch, n - len(socks) - failed)):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((HOST, port))
            fresh.append(s)
        sel = selectors.DefaultSelector()
        for s in fresh:
            sel.register(s, selectors.EVENT_WRITE)
        pending = set(fresh)
        while pending and time.time() < deadline:
            for key, _ in sel.select(timeout=0.5):
                pending.discard(key.fileobj)
                sel.unregister(key.fileobj)
        sel.close()
        ok = []
        for s in fresh:
            if s in pending or s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                failed += 1
                s.close()
            else:
                ok.append(s)
        for k, v in request_all(ok, deadline).items():
            statuses[k] = statuses.get(k, 0) + v
        socks.extend(ok)
    return socks, statuses, failed


def slowloris(port, stop, out):
    s = socket.create_connection((HOST, port), timeout=5)
    s.setblocking(False)
    payload = b"GET / HTTP/1.1\r\nHost: load\r\nX-Slow: " + b"a" * 1000
    got, i, t0 = b"", 0, time.time()
    closed = False
    while not stop.is_set() and not closed and time.time() - t0 < 10:
        try:
            if i < len(payload):
                s.send(payload[i:i + 1])
                i += 1
        except OSError:
            closed = True
            break
        try:
            data = s.recv(65536)
            if data:
                got += data
            else:
                closed = True
        except BlockingIOError:
            pass
        except OSError:
            closed = True
        time.sleep(0.1)
    s.close()
    st = STATUS.match(got)
    out.append({"status": int(st.group(1)) if st else None, "closed": closed,
                "seconds": round(time.time() - t0, 2), "sent": i})


def timed_get(conn_or_port):
    """One GET: (status, seconds). conn_or_port: a socket or a port."""
    t0 = time.time()
    if isinstance(conn_or_port, int):
        s = socket.create_connection((HOST, conn_or_port), timeout=5)
        own = True
    else:
        s, own = conn_or_port, False
    s.sendall(REQ)
    buf = b""
    r = None
    while r is None:
        data = s.recv(65536)
        if not data:
            break
        buf += data
        r = one_response(buf)
    if own:
        s.close()
    return (r[0] if r else 0), time.time() - t0


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def main():
    port, idle, slow, measure = (int(a) for a in sys.argv[1:5])
    limit = raise_nofile(idle + slow + 200)
    deadline = time.time() + 40
    t0 = time.time()
    socks, first, failed = open_idle(port, idle, deadline)
    opened_in = time.time() - t0

    stop, loris, threads = threading.Event(), [], []
    t0_slow = time.time()
    for _ in range(slow):
        t = threading.Thread(target=slowloris, args=(port, stop, loris))
        t.start()
        threads.append(t)
    time.sleep(0.3)

    lat, statuses = [], {}
    keep = socket.create_connection((HOST, port), timeout=5)
    for i in range(measure):
        try:
            st, secs = timed_get(port if i % 2 == 0 else keep)
        except OSError:
            st, secs = 0, 5.0
        statuses[str(st)] = statuses.get(str(st), 0) + 1
        lat.append(secs)
        time.sleep(0.01)  # spread over ~2 s, across the server's sweeps
    keep.close()

    second = request_all(socks, time.time() + 15)
    for t in threads:  # until the server closes them (request_timeout)
        t.join(max(0.1, t0_slow + 10 - time.time()))
    stop.set()
    for t in threads:
        t.join(5)
    for s in socks:
        s.close()
    print(json.dumps({
        "nofile": limit, "held": len(socks), "connect_failed": failed,
        "first": first, "opened_in": round(opened_in, 2),
        "statuses": statuses, "measured": len(lat),
        "p50_ms": round(percentile(lat, 50) * 1000, 1),
        "p99_ms": round(percentile(lat, 99) * 1000, 1),
        "max_ms": round(max(lat) * 1000, 1),
        "second": second, "slowloris": loris,
    }))


if __name__ == "__main__":
    main()
