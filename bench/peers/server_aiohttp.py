"""bench case 5, Python aiohttp.web server: /hello answers JSON, /sleep the
same after asyncio.sleep(0.01). No access log.

   /usr/bin/python3 bench/peers/server_aiohttp.py PORT
"""
import asyncio
import sys

from aiohttp import web


async def hello(request):
    return web.json_response({"message": "hello"})


async def sleep(request):
    await asyncio.sleep(0.01)
    return web.json_response({"message": "hello"})


app = web.Application()
app.add_routes([web.get("/hello", hello), web.get("/sleep", sleep)])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
