// The collector's web page in headless Chromium, driven by Playwright
// (playwright-core, Debian's chromium). Run by tests/it/web_page.rs, which
// starts the collector, feeds it and passes everything in QW_* variables.
// Exits non-zero with the reason on the first failed check.
import { createRequire } from "node:module";
import path from "node:path";

const env = name => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (this script is run by tests/it/web_page.rs)`);
  return v;
};
const require = createRequire(path.join(env("QW_NODE_MODULES"), "noop.js"));
const { chromium } = require("playwright-core");

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

// A fresh profile directory per run (Playwright passes it as --user-data-dir).
const context = await chromium.launchPersistentContext(env("QW_PROFILE"), {
  executablePath: env("QW_CHROMIUM"),
  headless: true,
  viewport: { width: 1400, height: 1000 },
  // No sandbox (root in a container), no GPU, and nothing that phones
  // home: this machine's network is closed, and a refused connection
  // would be noise at best.
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = false;
try {
  const page = context.pages()[0] ?? await context.newPage();
  const problems = [];
  page.on("console", m => { if (m.type() === "error") problems.push(`console error: ${m.text()}`); });
  page.on("pageerror", e => problems.push(`page error: ${e.message}`));
  // ERR_ABORTED is the browser cancelling a request the page no longer
  // needs (a refresh overtaken by the next one), not a failure.
  page.on("requestfailed", r => {
    const why = r.failure()?.errorText ?? "";
    if (!why.includes("ERR_ABORTED")) problems.push(`request failed: ${r.url()} ${why}`);
  });
  page.on("response", r => { if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`); });
  const external = [];
  page.on("request", r => { if (!r.url().startsWith(env("QW_URL"))) external.push(r.url()); });

  const resp = await page.goto(env("QW_URL"), { waitUntil: "networkidle" });
  check(resp.ok(), `GET / answers ${resp.status()}`);

  // Findings: the hot partition of the run, by its subject.
  const subject = env("QW_HOT_SUBJECT");
  await page.locator("#findings tbody tr", { hasText: subject }).first().waitFor({ timeout: 15000 });
  const findingRow = page.locator("#findings tbody tr", { hasText: subject });
  check(await findingRow.count() === 1, `the findings table lists ${subject}`);
  check((await findingRow.innerText()).includes("hot partition"), "its kind reads 'hot partition'");
  check(await page.locator("#findings tbody tr[data-kind=top_consumer]").count() >= 1, "a top consumer is listed");
  check(await page.locator("#findings thead th[scope=col]").count() === 6, "the findings table has column headers");

  // Statements: every row has a sparkline with data.
  const statements = Number(env("QW_STATEMENTS"));
  await page.waitForFunction(n => document.querySelectorAll("#queries tbody tr[data-fingerprint]").length === n, statements);
  const sparks = await page.$$eval("#queries tbody tr[data-fingerprint]", rows => rows.map(r => {
    const svg = r.querySelector("svg.spark");
    return svg ? { points: Number(svg.dataset.points), line: svg.querySelector("polyline")?.getAttribute("points") || "" } : null;
  }));
  check(sparks.every(s => s && s.points >= 10 && s.line.split(" ").length === s.points),
        `every statement row has a sparkline with ≥ 10 buckets (${sparks.map(s => s && s.points).join(", ")})`);

  // A statement whose text its agent withheld: said in words, with the
  // token (and so the fingerprint) in the tooltip only.
  const texts = await page.$$eval("#queries tbody tr[data-fingerprint] code.stmt", cs => cs.map(c => ({ text: c.textContent, title: c.title })));
  const withheld = texts.filter(c => c.text === "query text withheld by the agent");
  check(withheld.length === 1 && withheld[0].title.startsWith("/* querywatch withheld fingerprint=00000000000000ab"),
        `the withheld statement is shown as such (${JSON.stringify(withheld)})`);
  check(!texts.some(c => c.text.includes("querywatch withheld")), "no statement shows a withheld-text token as its text");

  // Sorting: numeric columns descending on the first click, ascending on
  // the second; aria-sort follows.
  const column = async key => page.$$eval("#queries tbody tr[data-fingerprint]", (rows, k) => {
    const idx = [...document.querySelectorAll("#queries thead th")].findIndex(th => th.dataset.key === k);
    return rows.map(r => Number(r.children[idx].textContent.replace(/[,%]/g, "")));
  }, key);
  const sorted = (xs, dir) => xs.every((x, i) => i === 0 || (dir > 0 ? xs[i - 1] <= x : xs[i - 1] >= x));
  check(await page.getAttribute("#queries th[data-key=total_ms]", "aria-sort") === "descending", "by default sorted by total time, descending");
  for (const key of ["calls", "p95_ms"]) {
    const header = page.locator(`#queries th[data-key=${key}] button`);
    await header.click();
    const down = await column(key);
    check(sorted(down, -1) && down[0] > down[down.length - 1], `${key}: one click sorts descending (${down.join(", ")})`);
    check(await page.getAttribute(`#queries th[data-key=${key}]`, "aria-sort") === "descending", `${key}: aria-sort=descending`);
    check(await page.locator("#queries th[aria-sort]").count() === 1, `${key}: only the sorted column has aria-sort`);
    await header.click();
    const up = await column(key);
    check(sorted(up, 1) && up[0] < up[up.length - 1], `${key}: a second click sorts ascending (${up.join(", ")})`);
    check(await page.getAttribute(`#queries th[data-key=${key}]`, "aria-sort") === "ascending", `${key}: aria-sort=ascending`);
  }
  // Calls and p95 put the statements in different orders: the clicks did sort.
  await page.locator("#queries th[data-key=calls] button").click();
  const byCalls = await page.$$eval("#queries tbody tr[data-fingerprint]", rows => rows.map(r => r.dataset.fingerprint));
  await page.locator("#queries th[data-key=p95_ms] button").click();
  const byP95 = await page.$$eval("#queries tbody tr[data-fingerprint]", rows => rows.map(r => r.dataset.fingerprint));
  check(byCalls.join() !== byP95.join(), "sorting by calls and by p95 gives different row orders");

  // A statement's details (/api/v1/queries/{fingerprint}): per node, and
  // they stay open across a re-sort.
  const first = page.locator("#queries tbody tr[data-fingerprint]").first();
  const fp = await first.getAttribute("data-fingerprint");
  await first.locator("button.disclose").click();
  const detail = page.locator(`#detail-${fp}`);
  await detail.locator("tbody tr").first().waitFor();
  check(await first.locator("button.disclose").getAttribute("aria-expanded") === "true", "the details button says it is expanded");
  const perNode = await page.$$eval(`#detail-${fp} tbody tr`, rows => rows.length);
  const nodesOf = await first.locator("td").nth(9).innerText();
  check(perNode === nodesOf.split(",").length, `the details list the statement's nodes (${perNode}: ${nodesOf})`);
  await page.locator("#queries th[data-key=text] button").click();
  check(await page.locator(`#detail-${fp}`).count() === 1, "the details stay open across a re-sort");
  await page.locator(`#queries tr[data-fingerprint="${fp}"] button.disclose`).click();
  check(await page.locator(`#detail-${fp}`).count() === 0, "a second click closes them");

  // Heatmap: the hot cell is marked, and only it.
  const hotCells = await page.$$eval("#partitions td.cell.hot", cells => cells.map(c => ({
    node: c.dataset.node, relation: c.dataset.relation, share: Number(c.dataset.share),
  })));
  check(hotCells.length === 1 && hotCells[0].node === env("QW_HOT_NODE") && hotCells[0].relation === env("QW_HOT_RELATION"),
        `the heatmap marks exactly ${env("QW_HOT_NODE")}/${env("QW_HOT_RELATION")} hot (${JSON.stringify(hotCells)})`);
  const shares = await page.$$eval(`#partitions td.cell[data-node=${env("QW_HOT_NODE")}]`, cells => cells.map(c => Number(c.dataset.share)));
  check(Math.max(...shares) === hotCells[0].share && hotCells[0].share > 0.5, `the hot cell carries the most load (${hotCells[0].share})`);

  // Nodes.
  check(await page.locator("#nodes tbody tr").count() === 3, "three nodes listed");

  // Resolved toggle: the API is asked for all findings, the open ones stay.
  const all = page.waitForResponse(r => r.url().includes("api/v1/findings?state=all"));
  await page.locator("#show-resolved").check();
  await all;
  await page.locator("#findings tbody tr", { hasText: subject }).first().waitFor();
  // The page draws once all four API answers are in, after the findings
  // one: wait for the heading to change (a CI run read it in between).
  const heading = await page.waitForFunction(
    () => document.getElementById("h-findings").textContent === "Findings", null, { timeout: 15000 },
  ).then(() => true, () => false);
  check(heading, "the resolved toggle shows all findings");
  const open = page.waitForResponse(r => r.url().includes("api/v1/findings?state=open"));
  await page.locator("#show-resolved").uncheck();
  await open;

  // Back to the default order for the picture.
  await page.locator("#queries th[data-key=total_ms] button").click();
  const top = page.locator("#queries tbody tr[data-fingerprint]").first();
  await top.locator("button.disclose").click();
  await page.locator(`#detail-${await top.getAttribute("data-fingerprint")} tbody tr`).first().waitFor();
  await page.screenshot({ path: env("QW_SCREENSHOT"), fullPage: true });
  console.log(`ok - screenshot ${env("QW_SCREENSHOT")}`);

  // With [http] token set: the page says what to do without the token,
  // and works with #token=.
  const guarded = await context.newPage();
  const base = env("QW_TOKEN_URL");
  await guarded.goto(base, { waitUntil: "networkidle" });
  await guarded.waitForFunction(() => document.getElementById("status").textContent.includes("needs a token"));
  check((await guarded.locator("#status").innerText()).includes("#token="), "without a token the page says to add #token=");
  await guarded.goto(`${base}#token=wrong`);
  await guarded.reload({ waitUntil: "networkidle" });
  await guarded.waitForFunction(() => document.getElementById("status").textContent.includes("refused the token"));
  check(true, "a wrong token is reported as refused");
  await guarded.goto(`${base}#token=${encodeURIComponent(env("QW_TOKEN"))}`);
  await guarded.reload({ waitUntil: "networkidle" });
  await guarded.waitForFunction(() => document.getElementById("status").textContent.includes("0 nodes"));
  check(await guarded.locator("#status.error").count() === 0, "with #token= the page reads the API");
  check(await guarded.locator("#nodes tbody td.empty").count() === 1, "and shows that no node has reported yet");
  await guarded.close();
  // The 401s above were the point there; only the main page's problems count.
  check(external.length === 0, `nothing fetched from elsewhere (${external.join(", ")})`);
  check(problems.length === 0, `no console errors, page errors or failed requests (${problems.join("; ")})`);
} catch (e) {
  console.error(e.stack || String(e));
  failed = true;
} finally {
  await context.close();
}
process.exit(failed ? 1 : 0);
