"""bench case 4, Python asyncpg peer: asyncpg.create_pool(min=max=CONNS)
and asyncio.gather of CONNS workers, each holding a pooled connection and
running its share of the queries (asyncpg prepares and caches the
statement); copy_records_to_table for COPY. (gather over one
pool.fetchval per query is 3x slower here: the pool's acquire/release per
query costs more than the query.)

   /usr/bin/python3 bench/peers/db_asyncpg.py select|insert|copy DSN N CONNS [uvloop]
"""
import asyncio
import json
import sys
import time

import asyncpg


async def main(mode, dsn, n, conns):
    pool = await asyncpg.create_pool(dsn, min_size=conns, max_size=conns)
    c0, t0 = time.process_time(), time.perf_counter()
    if mode in ("select", "insert"):
        todo = iter(range(1, n + 1))
        total = 0

        async def worker():
            nonlocal total
            async with pool.acquire() as con:
                if mode == "select":
                    for i in todo:
                        v = await con.fetchval("SELECT $1::int + 1", i)
                        total += v  # (not `total += await ...`: that reads total before the await)
                else:
                    for i in todo:
                        await con.execute("INSERT INTO bench_insert (a, b) VALUES ($1, $2)", i, "row")
        await asyncio.gather(*(worker() for _ in range(conns)))
        ok = mode == "insert" or total == n * (n + 1) // 2 + n
    else:
        async with pool.acquire() as con:
            await con.copy_records_to_table("bench_insert", records=[(i, "row %d" % i) for i in range(1, n + 1)],
                                            columns=["a", "b"])
        ok = True
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    await pool.close()
    return dict(ok=ok, n=n, elapsed=elapsed, cpu=cpu)


if __name__ == "__main__":
    if len(sys.argv) > 5 and sys.argv[5] == "uvloop":
        import uvloop
        uvloop.install()
    print("RESULT " + json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))))
