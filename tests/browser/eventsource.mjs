// Opens a native EventSource in headless Chromium on the gateway's own
// origin and prints what it sees, one JSON object per line:
//   node eventsource.mjs <gateway base URL> <jwt> <topic>
// It runs until stdin closes. The browser reconnects by itself (with
// Last-Event-ID) when the server drops the stream.
import puppeteer from 'puppeteer-core';

const [base, token, topic] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
try {
  const page = await browser.newPage();
  await page.exposeFunction('report', out);
  // Same origin as the stream: no CORS involved.
  await page.goto(`${base}/healthz`);
  await page.evaluate((topic, token) => {
    const url = `/v1/sse?topic=${encodeURIComponent(topic)}&access_token=${encodeURIComponent(token)}`;
    const es = new EventSource(url);
    es.addEventListener('connected', (e) => window.report({ kind: 'connected', data: e.data }));
    es.addEventListener('message', (e) => window.report({ kind: 'message', id: e.lastEventId, data: e.data }));
    es.addEventListener('reset', (e) => window.report({ kind: 'reset', data: e.data }));
    es.onerror = () => window.report({ kind: 'error', state: es.readyState });
  }, topic, token);
  out({ kind: 'ready' });
  await new Promise((resolve) => {
    process.stdin.on('end', resolve);
    process.stdin.on('close', resolve);
    process.stdin.resume();
  });
} finally {
  await browser.close();
}
