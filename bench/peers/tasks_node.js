// bench case 1, Node.js peer: Promise.all of N (setTimeout-promise) tasks;
// N setImmediate yields in one async function (the event-loop round trip
// that sleep(0) is).
//   node bench/peers/tasks_node.js sleep|yield N
'use strict';
const fs = require('fs');
const { setTimeout: sleep, setImmediate: yieldLoop } = require('timers/promises');

function statusKb(field) {
  const m = fs.readFileSync('/proc/self/status', 'utf8').match(new RegExp(field + ':\\s*(\\d+)'));
  return Number(m[1]);
}

async function work(i) {
  await sleep(100);
  return i;
}

async function main(mode, n) {
  if (mode === 'sleep') {
    const rss0 = statusKb('VmRSS');
    const c0 = process.cpuUsage(), t0 = performance.now();
    const tasks = new Array(n);
    for (let i = 0; i < n; i++) tasks[i] = work(i + 1);
    const res = await Promise.all(tasks);
    const elapsed = (performance.now() - t0) / 1e3;
    const c = process.cpuUsage(c0);
    let sum = 0;
    for (const v of res) sum += v;
    return { ok: sum === n * (n + 1) / 2 && res.length === n, n, sum, elapsed,
             cpu: (c.user + c.system) / 1e6, rss0_kb: rss0, hwm_kb: statusKb('VmHWM') };
  }
  const c0 = process.cpuUsage(), t0 = performance.now();
  let count = 0;
  for (let i = 0; i < n; i++) {
    await yieldLoop();
    count++;
  }
  const c = process.cpuUsage(c0);
  return { ok: count === n, n, elapsed: (performance.now() - t0) / 1e3, cpu: (c.user + c.system) / 1e6 };
}

main(process.argv[2], Number(process.argv[3])).then((r) => console.log('RESULT ' + JSON.stringify(r)));
