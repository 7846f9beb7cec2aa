"""bench case 5, uvicorn + FastAPI server (uvloop and httptools when
installed, as uvicorn's "standard" install uses): /hello answers JSON,
/sleep the same after asyncio.sleep(0.01). No access log.

   /usr/bin/python3 bench/peers/server_fastapi.py PORT
"""
import asyncio
import importlib.util
import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello():
    return {"message": "hello"}


@app.get("/sleep")
async def sleep():
    await asyncio.sleep(0.01)
    return {"message": "hello"}


if __name__ == "__main__":
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                loop=loop, http=http)
