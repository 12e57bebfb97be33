// Renders runner's HTML report pages in headless Chromium and checks them:
// nothing is loaded from outside the page (only file: and data: URLs), no
// console errors, at least one <figure class="plot">, and each plot's first
// child is an <svg> with a rendered size and something drawn in it.
//
//   node check-pages.mjs [--screenshot DIR] PAGE.html...
//
// One line per page; exits 1 if any page fails, 2 on bad usage.
// CHROMIUM names the browser binary (default /usr/bin/chromium).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { basename, extname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const args = process.argv.slice(2);
let shotDir = null;
let usage = args.length === 0;
const pages = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--screenshot' && i + 1 < args.length) shotDir = args[++i];
  else if (args[i].startsWith('-')) usage = true;
  else pages.push(args[i]);
}
if (usage || pages.length === 0) {
  console.error('usage: node check-pages.mjs [--screenshot DIR] PAGE.html...');
  process.exit(2);
}
if (shotDir) mkdirSync(shotDir, { recursive: true });

// The machine has no network: without the background-networking flags
// Chromium keeps trying to reach Google's hosts. Playwright itself adds
// --headless and a fresh temporary --user-data-dir for each launch.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

// Runs in the page: one entry per figure.plot, with what is wrong with it.
function inspectPlots() {
  const drawn = 'path, rect, line, polyline, polygon, circle, ellipse, text';
  return [...document.querySelectorAll('figure.plot')].map((fig, i) => {
    const name = fig.id ? '#' + fig.id : `figure.plot[${i}]`;
    const problems = [];
    const svg = fig.firstElementChild;
    if (!fig.id) problems.push('no id');
    if (!fig.querySelector(':scope > figcaption')) problems.push('no figcaption');
    if (!svg || svg.namespaceURI !== 'http://www.w3.org/2000/svg' || svg.localName !== 'svg') {
      problems.push('first child is not an <svg>');
    } else {
      const box = svg.getBoundingClientRect();
      if (!(box.width > 0 && box.height > 0)) problems.push(`svg renders ${box.width}x${box.height}`);
      // Count only shapes with some extent: an empty <text/> or a 0x0 rect draws nothing.
      const shapes = [...svg.querySelectorAll(drawn)].filter((el) => {
        const b = el.getBBox();
        return b.width > 0 || b.height > 0;
      });
      if (shapes.length === 0) problems.push('svg draws nothing');
    }
    return { name, problems };
  });
}

const shotNames = new Set();
let failed = 0;
for (const file of pages) {
  const url = pathToFileURL(resolve(file)).href;
  const errors = [];
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  // data: URLs never reach the router; everything else but file: is refused.
  await page.route('**/*', (route) => {
    const u = route.request().url();
    if (u.startsWith('file:')) return route.continue();
    errors.push(`loads ${u}`);
    return route.abort('blockedbyclient');
  });
  page.on('websocket', (ws) => errors.push(`opens websocket ${ws.url()}`));
  page.on('requestfailed', (r) => {
    if (r.url().startsWith('file:')) errors.push(`missing ${r.url()}`);
  });
  // Blocked loads also log "Failed to load resource": already reported above.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) {
      errors.push(`console error: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => errors.push(`uncaught: ${e.message}`));

  let plots = [];
  try {
    await page.goto(url, { waitUntil: 'load', timeout: 30_000 });
    await page.evaluate(() => document.fonts.ready);
    plots = await page.evaluate(inspectPlots);
    if (plots.length === 0) errors.push('no figure.plot');
    for (const p of plots) if (p.problems.length) errors.push(`${p.name}: ${p.problems.join(', ')}`);
    if (shotDir) {
      const kind = await page.$eval('meta[name="runner-page"]', (m) => m.content).catch(() => null);
      const stem = basename(file, extname(file));
      let name = kind || stem;
      if (shotNames.has(name)) name = `${name}-${stem}`;
      shotNames.add(name);
      await page.screenshot({ path: join(shotDir, `${name}.png`), fullPage: true, animations: 'disabled' });
    }
  } catch (e) {
    errors.push(e.message.split('\n')[0]);
  }
  await context.close();

  const head = `${file}: ${plots.length} plot${plots.length === 1 ? '' : 's'}`;
  if (errors.length === 0) {
    console.log(`${head}, ok`);
  } else {
    failed++;
    console.log(`${head}, FAILED: ${[...new Set(errors)].join('; ')}`);
  }
}
await browser.close();
console.log(`pages: ${pages.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
