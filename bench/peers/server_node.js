// bench case 5, Node.js http server: /hello answers JSON, /sleep answers
// the same after a 10 ms setTimeout.
//   node bench/peers/server_node.js PORT
'use strict';
const http = require('http');

function json(res) {
  const body = JSON.stringify({ message: 'hello' });
  res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

http.createServer((req, res) => {
  if (req.url === '/hello') return json(res);
  if (req.url === '/sleep') return setTimeout(json, 10, res);
  res.writeHead(404);
  res.end();
}).listen(Number(process.argv[2]), '127.0.0.1');
