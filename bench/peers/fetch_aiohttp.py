"""bench case 3, Python asyncio + aiohttp peer: one pooled ClientSession
(keep-alive, TCPConnector limit = CONC), CONC workers each fetching the
next request until N are done.

   /usr/bin/python3 bench/peers/fetch_aiohttp.py URL N CONC [uvloop]
"""
import asyncio
import json
import sys
import time

import aiohttp


async def main(url, n, conc):
    left = n
    got = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        async def worker():
            nonlocal left, got
            while left > 0:
                left -= 1
                async with session.get(url) as r:
                    body = await r.read()
                    if r.status == 200 and len(body) == 1024:
                        got += 1
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dict(ok=got == n, n=n, got=got, elapsed=elapsed, cpu=cpu)


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[4] == "uvloop":
        import uvloop
        uvloop.install()
    print("RESULT " + json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))))
