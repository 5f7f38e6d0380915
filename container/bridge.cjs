// The egress bridge, started inside every sandbox by start.sh: a listener on the sandbox's own
// loopback (its HTTP_PROXY) that forwards each connection to the host proxy's Unix socket. It is
// plumbing, not a boundary: it runs as the agent and the proxy decides. noDelay: without it Nagle
// and delayed ACKs add ~40 ms to every response (research/egress.md).
const net = require('net');
const [port, sock] = process.argv.slice(2);
net
  .createServer({ allowHalfOpen: true, noDelay: true }, (c) => {
    const u = net.connect({ path: sock, allowHalfOpen: true });
    c.pipe(u);
    u.pipe(c);
    c.on('error', () => u.destroy());
    u.on('error', () => c.destroy());
    c.on('close', () => u.destroy());
    u.on('close', () => c.destroy());
  })
  .listen(Number(port), '127.0.0.1');
