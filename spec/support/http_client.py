#!/usr/bin/env python3
"""python3's http.client against the asynchost server, for
spec/http_clients_spec.lua: several requests on one keep-alive
connection (GET, POST JSON, bad JSON, HEAD, 404), printed as JSON.

    http_client.py PORT
"""
import http.client
import json
import sys


def main(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    ports = set()

    def call(method, path, body=None, headers=None):
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        ports.add(conn.sock.getsockname()[1] if conn.sock else None)
        out.append({
            "method": method, "path": path, "status": r.status,
            "reason": r.reason, "version": r.version,
            "ctype": r.getheader("Content-Type"),
            "length": r.getheader("Content-Length"),
            "body": data.decode("utf-8", "replace"),
        })

    for i in range(3):
        call("GET", "/n/%d" % i)
    call("POST", "/json", json.dumps({"a": [1, 2], "b": "x"}),
         {"Content-Type": "application/json"})
    call("POST", "/json", "{not json", {"Content-Type": "application/json"})
    call("HEAD", "/n/7")
    call("GET", "/no/such/path")
    call("GET", "/boom")
    call("GET", "/")
    conn.close()
    print(json.dumps({"responses": out, "connections": len(ports)}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
