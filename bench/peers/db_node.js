// bench case 4, Node.js peer: pg.Pool({max: CONNS}) from npm (bench/node_modules),
// Promise.all over all queries, named (prepared) statements.
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
  let ok = true;
  if (mode === 'select') {
    const q = [];
    for (let i = 1; i <= n; i++) q.push(pool.query({ name: 'sel', text: 'SELECT $1::int + 1 AS v', values: [i] }));
    const res = await Promise.all(q);
    let sum = 0;
    for (const r of res) sum += r.rows[0].v;
    ok = sum === n * (n + 1) / 2 + n;
  } else {
    const q = [];
    for (let i = 1; i <= n; i++) {
      q.push(pool.query({ name: 'ins', text: 'INSERT INTO bench_insert (a, b) VALUES ($1, $2)', values: [i, 'row'] }));
    }
    await Promise.all(q);
  }
  const elapsed = (performance.now() - t0) / 1e3, c = process.cpuUsage(c0);
  await pool.end();
  return { ok, n, elapsed, cpu: (c.user + c.system) / 1e6 };
}

main().then((r) => console.log('RESULT ' + JSON.stringify(r)), (e) => { console.error(e); process.exit(1); });
