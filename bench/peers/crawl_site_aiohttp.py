"""bench case 6, Python crawler: asyncio + one pooled aiohttp.ClientSession,
CONC worker tasks on an asyncio.Queue frontier, links extracted with
BeautifulSoup(lxml) the way scripts/crawl.lua does (absolute, fragment
removed, de-duplicated, kept under the start URL's directory).

   /usr/bin/python3 bench/peers/crawl_site_aiohttp.py START_URL EXPECTED_PAGES CONC
"""
import asyncio
import json
import sys
import time
from urllib.parse import urldefrag, urljoin

import aiohttp
from bs4 import BeautifulSoup


async def main(start, expected, conc):
    scope = start.rsplit("/", 1)[0] + "/"
    seen = {start}
    queue = asyncio.Queue()
    queue.put_nowait(start)
    pages = ok_pages = errors = 0
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        async def worker():
            nonlocal pages, ok_pages, errors
            while True:
                url = await queue.get()
                try:
                    async with session.get(url) as r:
                        body = await r.read()
                        status, ctype = r.status, r.headers.get("content-type", "")
                    pages += 1
                    if status == 200 and "html" in ctype:
                        soup = BeautifulSoup(body, "lxml")
                        if soup.title and soup.title.string.startswith("Site page"):
                            ok_pages += 1
                        for a in soup.find_all("a", href=True):
                            link = urldefrag(urljoin(url, a["href"]))[0]
                            if link.startswith(scope) and link not in seen:
                                seen.add(link)
                                queue.put_nowait(link)
                except aiohttp.ClientError:
                    errors += 1
                finally:
                    queue.task_done()
        workers = [asyncio.create_task(worker()) for _ in range(conc)]
        await queue.join()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    elapsed = time.perf_counter() - t0
    return dict(ok=pages == expected and ok_pages == expected and errors == 0, n=pages, errors=errors,
                elapsed=elapsed)


if __name__ == "__main__":
    print("RESULT " + json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))))
