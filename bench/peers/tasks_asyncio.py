"""bench case 1, Python asyncio peer (asyncio.gather of N tasks; N sleep(0) yields).

   /usr/bin/python3 bench/peers/tasks_asyncio.py sleep|yield N [uvloop]
"""
import asyncio
import json
import sys
import time


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])


async def work(i):
    await asyncio.sleep(0.1)
    return i


async def main(mode, n):
    if mode == "sleep":
        rss0 = status_kb("VmRSS")
        c0, t0 = time.process_time(), time.perf_counter()
        res = await asyncio.gather(*[work(i) for i in range(1, n + 1)])
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        s = sum(res)
        return dict(ok=s == n * (n + 1) // 2 and len(res) == n, n=n, sum=s, elapsed=elapsed,
                    cpu=cpu, rss0_kb=rss0, hwm_kb=status_kb("VmHWM"))
    c0, t0 = time.process_time(), time.perf_counter()
    count = 0
    for _ in range(n):
        await asyncio.sleep(0)
        count += 1
    return dict(ok=count == n, n=n, elapsed=time.perf_counter() - t0, cpu=time.process_time() - c0)


if __name__ == "__main__":
    mode, n = sys.argv[1], int(sys.argv[2])
    if len(sys.argv) > 3 and sys.argv[3] == "uvloop":
        import uvloop
        uvloop.install()
    print("RESULT " + json.dumps(asyncio.run(main(mode, n))))
