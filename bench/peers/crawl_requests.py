"""bench case 2, Python requests peers: serial (threads=1) or a
ThreadPoolExecutor, each thread with its own requests.Session (keep-alive);
the title of each page with lxml.html.

   /usr/bin/python3 bench/peers/crawl_requests.py BASE N THREADS
"""
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import lxml.html
import requests

local = threading.local()


def session():
    s = getattr(local, "s", None)
    if s is None:
        s = local.s = requests.Session()
    return s


def get_title(url):
    r = session().get(url, timeout=30)
    r.raise_for_status()
    return lxml.html.fromstring(r.content).findtext(".//title")


def main(base, n, threads):
    urls = ["%s%d" % (base, i) for i in range(1, n + 1)]
    c0, t0 = time.process_time(), time.perf_counter()
    if threads == 1:
        titles = [get_title(u) for u in urls]
    else:
        with ThreadPoolExecutor(threads) as ex:
            titles = list(ex.map(get_title, urls))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    ok = all(t == "Page %d" % i for i, t in enumerate(titles, 1))
    return dict(ok=ok, n=n, elapsed=elapsed, cpu=cpu)


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
