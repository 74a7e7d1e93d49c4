// Drives Debian's chromium (playwright-core, executablePath) through the status page of a sidecar
// that tests/test_status_page_browser.py started on 127.0.0.1, as a person would: a wrong token
// first, then the right one through the login form, then log out. Prints one JSON report on
// stdout; the Python test makes every assertion, this script only observes.
//
// Usage: node status_page.mjs <origin> <good token> <wrong token> <screenshot.png> <user-data-dir>
import { chromium } from "playwright-core";

const [origin, token, wrongToken, screenshot, userDataDir] = process.argv.slice(2);
// Each step waits on what the page shows, never on a fixed delay; this bounds any one wait.
const STEP_MS = 15000;
const SECTIONS = ["viewer", "health", "mode", "tools", "breakers", "jobs", "recent-scans", "policy", "logout-form"];

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  chromiumSandbox: false,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  viewport: { width: 1200, height: 900 },
});
const report = { requests: [], steps: {} };
try {
  // Every request the browser made, from any page: the test checks they all went to the sidecar.
  context.on("request", (request) => report.requests.push(request.url()));

  async function step(name, run) {
    const page = await context.newPage();
    const seen = { console_errors: [], page_errors: [] };
    page.on("console", (message) => {
      if (message.type() === "error") seen.console_errors.push(message.text());
    });
    page.on("pageerror", (error) => seen.page_errors.push(String(error)));
    try {
      Object.assign(seen, await run(page));
    } finally {
      await page.close();
    }
    report.steps[name] = seen;
  }

  await step("wrong_token", async (page) => {
    await page.goto(`${origin}/`, { timeout: STEP_MS });
    await page.fill("#token", wrongToken);
    const [response] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${origin}/login`, { timeout: STEP_MS }),
      page.click("#login-submit"),
    ]);
    await page.waitForSelector("#refusal", { timeout: STEP_MS });
    return {
      status: response.status(),
      rule: await page.getAttribute("#refusal", "data-rule"),
      recovery: await page.textContent("#refusal-recovery"),
      cookies: (await context.cookies()).length,
    };
  });

  await step("login", async (page) => {
    const first = await page.goto(`${origin}/`, { timeout: STEP_MS });
    const before = {
      status: first.status(),
      login_form_visible: await page.isVisible("#login-form"),
      tools_present: (await page.$("#tools")) !== null,
      csp: first.headers()["content-security-policy"],
    };
    await page.fill("#token", token);
    await Promise.all([
      page.waitForURL(`${origin}/`, { timeout: STEP_MS, waitUntil: "load" }),
      page.click("#login-submit"),
    ]);
    await page.waitForSelector("#tools", { timeout: STEP_MS });
    const visible = {};
    for (const id of SECTIONS) visible[id] = await page.isVisible(`#${id}`);
    const result = {
      before,
      title: await page.title(),
      visible,
      viewer_kind: await page.getAttribute("#viewer", "data-kind"),
      health_status: await page.getAttribute("#health", "data-status"),
      mode: await page.getAttribute("#mode", "data-mode"),
      tools: await page.$$eval("tr.tool", (rows) =>
        rows.map((r) => ({ tool: r.dataset.tool, available: r.dataset.available, reason: r.querySelector(".reason").textContent })),
      ),
      scans: await page.$$eval("tr.scan", (rows) => rows.map((r) => r.dataset.scanId)),
      scan_text: await page.textContent("#recent-scans"),
      script_elements: await page.$$eval("script", (s) => s.length),
      cookies: (await context.cookies()).map((c) => ({
        name: c.name,
        value_length: c.value.length,
        value_is_token: c.value === token,
        httpOnly: c.httpOnly,
        sameSite: c.sameSite,
        secure: c.secure,
        path: c.path,
        expires: c.expires,
      })),
      // What a script on the page would see: an HttpOnly cookie is not in document.cookie.
      document_cookie: await page.evaluate(() => document.cookie),
      now: Date.now() / 1000,
    };
    await page.screenshot({ path: screenshot, fullPage: true });
    await Promise.all([page.waitForSelector("#login-form", { timeout: STEP_MS }), page.click("#logout-form button")]);
    result.after_logout = {
      login_form_visible: await page.isVisible("#login-form"),
      tools_present: (await page.$("#tools")) !== null,
      cookies: (await context.cookies()).length,
    };
    return result;
  });
} finally {
  await context.close();
}
process.stdout.write(JSON.stringify(report) + "\n");
