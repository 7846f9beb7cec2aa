// bench case 4, Node.js peer: pg.Pool({max: CONNS}) from npm (bench/node_modules);
// CONNS clients checked out of the pool (pool.connect()), each running its
// share of the queries as named (prepared) statements, gathered with
// Promise.all. (Promise.all over one pool.query per query is 1.5x slower
// here: a checkout and release per query.)
//   node bench/peers/db_node.js select|insert DSN N CONNS
'use strict';
const path = require('path');
const { Pool } = require(path.join(__dirname, '..', 'node_modules', 'pg'));

const [mode, dsn, nArg, connsArg] = process.argv.slice(2);
const n = Number(nArg), conns = Number(connsArg);

async function main() {
  const pool = new Pool({ connectionString: dsn, max: conns });
  // open every connection first, as asyncpg's pool does
  await Promise.all(Array.from({ length: conns }, () => pool.query('SELECT 1')));
  const c0 = process.cpuUsage(), t0 = performance.now();
  let next = 1, sum = 0;
  await Promise.all(Array.from({ length: conns }, async () => {
    const client = await pool.connect();
    try {
      while (next <= n) {
        const i = next++;
        if (mode === 'select') {
          const r = await client.query({ name: 'sel', text: 'SELECT $1::int + 1 AS v', values: [i] });
          sum += r.rows[0].v;
        } else {
          await client.query({ name: 'ins', text: 'INSERT INTO bench_insert (a, b) VALUES ($1, $2)', values: [i, 'row'] });
        }
      }
    } finally {
      client.release();
    }
  }));
  const elapsed = (performance.now() - t0) / 1e3, c = process.cpuUsage(c0);
  await pool.end();
  const ok = mode !== 'select' || sum === n * (n + 1) / 2 + n;
  return { ok, n, elapsed, cpu: (c.user + c.system) / 1e6 };
}

main().then((r) => console.log('RESULT ' + JSON.stringify(r)), (e) => { console.error(e); process.exit(1); });
