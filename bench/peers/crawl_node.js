// bench case 2, Node.js peers: the global fetch (undici) or http.get with a
// keep-alive http.Agent; CONC workers pull the next page; the title with a
// regular expression (Node has no HTML parser built in).
//   node bench/peers/crawl_node.js fetch|agent BASE N CONC
'use strict';
const http = require('http');

const [mode, base, nArg, concArg] = process.argv.slice(2);
const n = Number(nArg), conc = Number(concArg);
const agent = new http.Agent({ keepAlive: true, maxSockets: conc });

function getAgent(url) {
  return new Promise((resolve, reject) => {
    http.get(url, { agent }, (res) => {
      if (res.statusCode !== 200) reject(new Error('status ' + res.statusCode));
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      res.on('error', reject);
    }).on('error', reject);
  });
}

async function getFetch(url) {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error('status ' + res.status);
  return res.text();
}

async function main() {
  const get = mode === 'agent' ? getAgent : getFetch;
  const titles = new Array(n);
  let next = 0;
  const c0 = process.cpuUsage(), t0 = performance.now();
  async function worker() {
    while (next < n) {
      const i = next++;
      const body = await get(base + (i + 1));
      const m = /<title>([^<]*)<\/title>/i.exec(body);
      titles[i] = m && m[1];
    }
  }
  await Promise.all(Array.from({ length: Math.min(conc, n) }, worker));
  const elapsed = (performance.now() - t0) / 1e3, c = process.cpuUsage(c0);
  const ok = titles.every((t, i) => t === 'Page ' + (i + 1));
  agent.destroy();
  return { ok, n, elapsed, cpu: (c.user + c.system) / 1e6 };
}

main().then((r) => { console.log('RESULT ' + JSON.stringify(r)); process.exit(0); });
