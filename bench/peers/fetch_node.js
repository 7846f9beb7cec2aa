// bench case 3, Node.js peers: the global fetch (undici's pooled keep-alive
// dispatcher) or http.get with a keep-alive http.Agent (maxSockets = CONC);
// CONC workers each fetch the next request until N are done.
//   node bench/peers/fetch_node.js fetch|agent URL N CONC
'use strict';
const http = require('http');

const [mode, url, nArg, concArg] = process.argv.slice(2);
const n = Number(nArg), conc = Number(concArg);
const agent = new http.Agent({ keepAlive: true, maxSockets: conc });

function getAgent() {
  return new Promise((resolve, reject) => {
    http.get(url, { agent }, (res) => {
      let len = 0;
      res.on('data', (c) => { len += c.length; });
      res.on('end', () => resolve(res.statusCode === 200 && len === 1024));
      res.on('error', reject);
    }).on('error', reject);
  });
}

async function getFetch() {
  const res = await fetch(url);
  const body = await res.arrayBuffer();
  return res.status === 200 && body.byteLength === 1024;
}

async function main() {
  const get = mode === 'agent' ? getAgent : getFetch;
  let left = n, got = 0;
  const c0 = process.cpuUsage(), t0 = performance.now();
  async function worker() {
    while (left > 0) {
      left--;
      if (await get()) got++;
    }
  }
  await Promise.all(Array.from({ length: conc }, worker));
  const elapsed = (performance.now() - t0) / 1e3, c = process.cpuUsage(c0);
  agent.destroy();
  return { ok: got === n, n, got, elapsed, cpu: (c.user + c.system) / 1e6 };
}

main().then((r) => { console.log('RESULT ' + JSON.stringify(r)); process.exit(0); });
