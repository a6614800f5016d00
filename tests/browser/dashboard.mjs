// Drives the ferry dashboard of a running hub in headless Chromium and
// prints what it shows as JSON, for node/tests/dashboard.rs to check.
//
//   node dashboard.mjs API_URL SCREENSHOT.png
//
// Uses Debian's Chromium (CHROMIUM, default /usr/bin/chromium); nothing is
// downloaded. Every request the page makes is recorded: it must only talk
// to the node itself.
import { chromium } from "playwright-core";

const [api, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const shown = { requests: [], errors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  page.on("request", (r) => shown.requests.push(r.url()));
  page.on("pageerror", (e) => shown.errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") shown.errors.push(m.text()); });
  await page.goto(api + "/");
  await page.waitForSelector("#live.on", { timeout: 20000 });
  await page.waitForFunction(() => document.querySelectorAll("#clinics tbody tr[data-node]").length >= 3, null, { timeout: 20000 });

  const rows = (sel) => page.$$eval(sel + " tbody tr[data-node]", (trs) =>
    trs.map((tr) => Array.from(tr.cells, (td) => td.textContent.trim())));
  shown.node = {
    name: await page.textContent("#node-name"),
    role: await page.textContent("#node-role"),
    events: await page.textContent("#node-events"),
    connected: await page.textContent("#node-connected"),
    conflicts: await page.waitForFunction(() => document.getElementById("node-conflicts").textContent !== "-", null, { timeout: 20000 })
      .then(() => page.textContent("#node-conflicts")),
  };
  shown.clinics = await rows("#clinics");
  shown.peers = await rows("#peers");

  // Sorting: by last sync the other way, then by name.
  await page.click("#clinics th[data-key=last_sync_unix]");
  shown.clinicsNewestFirst = (await rows("#clinics")).map((r) => r[0]);
  await page.click("#clinics th[data-key=name]");
  shown.clinicsByName = (await rows("#clinics")).map((r) => r[0]);
  await page.click("#clinics th[data-key=last_sync_unix]");

  // The live feed: an event written now appears without a reload.
  const payload = JSON.stringify({ type: "referral", patient: "dashboard-test" });
  const res = await fetch(api + "/v1/events?topic=referrals", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: payload,
  });
  const written = await res.json();
  await page.waitForSelector(`#feed-rows tr[data-id="${written.events[0].id}"]`, { timeout: 20000 });
  shown.feed = await page.$$eval("#feed-rows tr", (trs) => trs.map((tr) => Array.from(tr.cells, (td) => td.textContent.trim())));
  shown.html_bytes = (await (await fetch(api + "/")).text()).length;
  await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(shown));
