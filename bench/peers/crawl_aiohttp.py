"""bench case 2, Python asyncio + aiohttp peer: one pooled ClientSession,
at most CONC requests at once (TCPConnector limit), asyncio.gather over all
pages, the title with lxml.html (libxml2, as asynchost's html.parse).

   /usr/bin/python3 bench/peers/crawl_aiohttp.py BASE N CONC [uvloop]
"""
import asyncio
import json
import sys
import time

import aiohttp
import lxml.html


async def main(base, n, conc):
    c0, t0 = time.process_time(), time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        async def title(url):
            async with session.get(url) as r:
                r.raise_for_status()
                body = await r.read()
            return lxml.html.fromstring(body).findtext(".//title")
        titles = await asyncio.gather(*(title("%s%d" % (base, i)) for i in range(1, n + 1)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    ok = all(t == "Page %d" % i for i, t in enumerate(titles, 1))
    return dict(ok=ok, n=n, elapsed=elapsed, cpu=cpu)


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[4] == "uvloop":
        import uvloop
        uvloop.install()
    print("RESULT " + json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))))
