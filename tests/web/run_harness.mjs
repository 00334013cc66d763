// node run_harness.mjs <chromium> <user-data-dir> <page url> <json list of runModel configs>
// Prints one JSON line: the list of runModel results. Page console and errors go to stderr.
import puppeteer from "puppeteer-core";

const [chromium, userDataDir, url, configsJson] = process.argv.slice(2);
const configs = JSON.parse(configsJson);

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  userDataDir,
  protocolTimeout: 240_000,  // one runModel call; the test gives node 300 s in all
  // WebGPU on SwiftShader (CPU) needs only --enable-unsafe-webgpu in headless Chromium
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
let failed = false;
try {
  const results = [];
  for (const cfg of configs) {
    const page = await browser.newPage();
    page.on("console", (msg) => process.stderr.write(`[page ${msg.type()}] ${msg.text()}\n`));
    page.on("pageerror", (err) => process.stderr.write(`[page error] ${err}\n`));
    await page.goto(url, {waitUntil: "load"});
    results.push(await page.evaluate((c) => window.runModel(c), cfg));
    await page.close();
  }
  process.stdout.write(JSON.stringify(results) + "\n");
} catch (err) {
  process.stderr.write(`harness failed: ${err && err.stack ? err.stack : err}\n`);
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
