// Firebreak's pages in a real browser: Debian's chromium driven by
// playwright-core. tests/tests/pages.rs seeds a Firebreak, then runs
//
//   node pages.mjs <scenario> '<json input>'
//
// and reads the JSON this prints on its last line. A failed check throws
// with a message that says what the page showed; screenshots go to
// input.shots (kept by the test run, target/browser-screenshots).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [scenario, raw] = process.argv.slice(2);
const input = JSON.parse(raw || "{}");
const base = input.base;
mkdirSync(input.shots, { recursive: true });

function check(ok, message) {
  if (!ok) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: process.env.FIREBREAK_TEST_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});

// Everything a page did that it must not: a dialog (an injected script
// running), a Content-Security-Policy violation, an uncaught error.
const trouble = [];
function watch(page, who) {
  page.on("dialog", async (d) => {
    trouble.push(`${who}: a ${d.type()} dialog opened: ${d.message()}`);
    await d.dismiss();
  });
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Refused to/i.test(m.text())) {
      trouble.push(`${who}: ${m.text()}`);
    }
  });
  page.on("pageerror", (e) => trouble.push(`${who}: script error: ${e.message}`));
  return page;
}

async function person(who, creds, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...options });
  const page = watch(await context.newPage(), who);
  // Any page sends a stranger to sign in, and back afterwards.
  await page.goto(`${base}/incidents`);
  check(new URL(page.url()).pathname === "/login", `${who}: expected the sign-in page, got ${page.url()}`);
  await page.getByLabel("User name").fill(creds.user);
  await page.getByLabel("Password").fill(creds.pass);
  await Promise.all([page.waitForURL(`${base}/incidents`), page.getByRole("button", { name: "Sign in" }).click()]);
  return { context, page };
}

const shot = (page, name) => page.screenshot({ path: join(input.shots, `${name}.png`), fullPage: true });

async function incident() {
  const out = {};
  const { context, page } = await person("operator", input.operator);
  // The list: the incident, its durations, the annotation as text.
  const row = page.locator("#incident-rows tr.incident", { hasText: `${input.incident}` }).first();
  await row.waitFor();
  const title = await row.locator("a").textContent();
  check(title.includes("<img src=x onerror=alert(1)>"), `the title should show the annotation as text: ${title}`);
  check((await page.locator("main img").count()) === 0, "no <img> element may come from an annotation");
  out.list_durations = await row.locator("td").nth(6).textContent();
  await shot(page, "incidents");
  // Keyboard: the first Tab reaches the skip link.
  await page.keyboard.press("Tab");
  out.first_tab = await page.evaluate(() => document.activeElement.className);

  await Promise.all([page.waitForURL(`**/incidents/${input.incident}`), row.locator("a").click()]);
  const svg = page.locator("svg.timeline");
  await svg.waitFor();
  out.marks = await svg.locator(".mark").count();
  out.dots = await svg.locator(".mark.dot").count();
  out.suspect_marker = await svg.locator(".marker.suspect").count();
  out.lanes = await svg.locator("g.lane").count();
  out.header_suspect = await page.locator("dl.facts").textContent();
  check(
    (await page.locator(`tr[data-action="${input.action}"]`).getAttribute("data-status")) === "held",
    "the requested action should be held for approval"
  );
  await shot(page, "incident-before-approval");

  // The held action waits in a banner at the top, Approve and Deny each
  // confirmed on its own.
  out.banner = await page.locator("#held-banner").textContent();
  out.banner_confirms = await page.locator("#held-banner input[name=confirm]").count();
  // Approve from the banner: the box must be ticked first (the browser
  // refuses the form without it).
  const approve = page.locator(`#held-banner form[action="/actions/${input.action}/approve"]`);
  await approve.getByRole("button", { name: "Approve" }).click();
  check(new URL(page.url()).pathname === `/incidents/${input.incident}`, "an unticked confirmation must not submit");
  out.still_held = await page.locator(`tr[data-action="${input.action}"]`).getAttribute("data-status");
  await approve.getByLabel("I'm sure").check();
  await Promise.all([
    page.waitForURL(`**/incidents/${input.incident}?done=approved#actions`),
    approve.getByRole("button", { name: "Approve" }).click(),
  ]);
  out.approved_said = await page.locator("#actions p.done").textContent();
  out.banner_after = await page.locator("#held-banner").count();
  // The executor runs it in the background: reload until it has.
  let status = "";
  for (let i = 0; i < 40; i++) {
    status = await page.locator(`tr[data-action="${input.action}"]`).getAttribute("data-status");
    if (status === "succeeded") break;
    await page.waitForTimeout(250);
    await page.reload();
  }
  out.status_after = status;
  out.killswitch_marker = await page.locator("svg.timeline .marker.killswitch").count();
  out.revert_offered = await page.locator(`form[action="/actions/${input.action}/revert"]`).count();
  await page.locator("#entries").evaluate((t) => t.closest("details").setAttribute("open", ""));
  await shot(page, "incident");

  // A note, through the form.
  await page.getByLabel("Note (on the timeline, under your name)").fill("Checked the dashboards <b>bold?</b>");
  await Promise.all([page.waitForURL(`**/incidents/${input.incident}#notes`), page.getByRole("button", { name: "Add note" }).click()]);
  out.note_shown = await page.locator("#entries td.summary", { hasText: "Checked the dashboards <b>bold?</b>" }).count();

  // Respond: acknowledge, then severity and stage through the form; the page
  // says what it did and shows the new values.
  await Promise.all([
    page.waitForURL(`**/incidents/${input.incident}?done=acknowledged#response`),
    page.locator("#acknowledge").click(),
  ]);
  out.acknowledged = await page.locator("#acknowledged").textContent();
  out.ack_done = await page.locator("#response p.done").textContent();
  out.ack_button_after = await page.locator("#acknowledge").count();
  await page.locator("#set-severity").selectOption("SEV1");
  await page.locator("#set-stage").selectOption("identified");
  await Promise.all([
    page.waitForURL(`**/incidents/${input.incident}?done=saved#response`),
    page.locator("#save-response").click(),
  ]);
  out.severity = await page.locator("#severity").textContent();
  out.stage = await page.locator("#stage").textContent();
  out.updated_entry = await page.locator("#entries td.summary", { hasText: "stage investigating -> identified" }).count();
  await shot(page, "incident-response");

  // Live: another person moves the stage on; this page shows it without a
  // reload (a marker set in this page survives).
  await page.evaluate(() => { window.__sameLoad = "yes"; });
  const other = await person("second operator", input.operator);
  await other.page.goto(`${base}/incidents/${input.incident}`);
  await other.page.locator("#set-stage").selectOption("monitoring");
  await Promise.all([
    other.page.waitForURL(`**/incidents/${input.incident}?done=saved#response`),
    other.page.locator("#save-response").click(),
  ]);
  await other.context.close();
  await page.waitForFunction(
    () => document.getElementById("stage").textContent.trim() === "monitoring",
    null,
    { timeout: 20000 }
  );
  out.live_stage = await page.locator("#stage").textContent();
  out.live_same_load = await page.evaluate(() => window.__sameLoad);
  await context.close();

  // An operator on a phone (390 px): every response control is on screen
  // without scrolling sideways.
  const opPhone = await person("operator on a phone", input.operator, {
    viewport: { width: 390, height: 844 },
    isMobile: true,
    hasTouch: true,
  });
  await opPhone.page.goto(`${base}/incidents/${input.incident}`);
  out.operator_phone_overflow = await opPhone.page.evaluate(
    () => document.documentElement.scrollWidth - window.innerWidth
  );
  out.operator_phone_controls_offscreen = await opPhone.page.evaluate(() =>
    [
      "#set-severity",
      "#set-stage",
      "#set-commander",
      "#save-response",
      "textarea[name=text]",
      "#action-list form[action$='/revert'] button",
    ]
      .map((s) => document.querySelector(s))
      .filter((e) => e)
      .filter((e) => {
        const r = e.getBoundingClientRect();
        return r.left < 0 || r.right > window.innerWidth;
      }).length
  );
  out.operator_phone_controls = await opPhone.page.locator("#set-severity, #set-stage, #set-commander, #save-response").count();
  out.operator_phone_revert = await opPhone.page.locator("#action-list form[action$='/revert'] button").count();
  // The incident list on the phone: no sideways scrolling either.
  await opPhone.page.goto(`${base}/incidents?status=`);
  out.list_phone_overflow = await opPhone.page.evaluate(
    () => document.documentElement.scrollWidth - window.innerWidth
  );
  out.list_phone_rows_offscreen = await opPhone.page.evaluate(() =>
    Array.from(document.querySelectorAll("#incidents tr.incident td")).filter((e) => {
      const r = e.getBoundingClientRect();
      return r.left < 0 || r.right > window.innerWidth + 1;
    }).length
  );
  await shot(opPhone.page, "incident-phone-operator");
  await opPhone.context.close();

  // A viewer on a phone: readable, no controls that would be refused.
  const phone = await person("viewer", input.viewer, {
    viewport: { width: 390, height: 844 },
    isMobile: true,
    hasTouch: true,
  });
  await phone.page.goto(`${base}/incidents/${input.incident}`);
  out.viewer_decide_forms = await phone.page.locator("form.decide").count();
  out.viewer_note_form = await phone.page.locator('form[action$="/notes"]').count();
  out.viewer_response_forms = await phone.page.locator('form[action$="/response"]').count();
  out.phone_overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await shot(phone.page, "incident-phone");
  const state = await phone.context.storageState();
  await phone.context.close();

  // Without JavaScript: the same page, readable.
  const nojs = await browser.newContext({ javaScriptEnabled: false, storageState: state });
  const plain = watch(await nojs.newPage(), "viewer without JavaScript");
  await plain.goto(`${base}/incidents/${input.incident}`);
  out.nojs_marks = await plain.locator("svg.timeline .mark").count();
  out.nojs_entries = await plain.locator("#entries tbody tr").count();
  await plain.goto(`${base}/incidents/${input.incident}/postmortem`);
  out.nojs_editor = await plain.locator("textarea#markdown").count();
  await nojs.close();
  return out;
}

// Replaces the first line equal to `line` after the heading `heading`.
function edit(text, heading, line, replacement) {
  const lines = text.split("\n");
  const h = lines.indexOf(heading);
  check(h >= 0, `the draft has no heading ${heading}`);
  const i = lines.findIndex((l, k) => k > h && l === line);
  check(i > h, `no line ${JSON.stringify(line)} under ${heading}`);
  lines[i] = replacement;
  return lines.join("\n");
}

// An action held on an incident that has since resolved: approving it is
// refused with the reason; the form offers "Run it anyway", which runs it.
async function forced() {
  const out = {};
  const { context, page } = await person("operator", input.operator);
  const incidentPage = `${base}/incidents/${input.incident}`;
  await page.goto(incidentPage);
  const approve = page.locator(`#held-banner form[action="/actions/${input.action}/approve"]`);
  out.force_offered = await approve.getByLabel("Run it anyway").count();
  await approve.getByLabel("I'm sure").check();
  await Promise.all([page.waitForURL(`**/actions/${input.action}/approve`), approve.getByRole("button", { name: "Approve" }).click()]);
  out.refused = await page.locator("main").textContent();
  await shot(page, "approve-refused-resolved");
  await page.goto(incidentPage);
  out.held_after_refusal = await approve.count();
  await shot(page, "run-it-anyway");
  await approve.getByLabel("I'm sure").check();
  await approve.getByLabel("Run it anyway").check();
  await Promise.all([
    page.waitForURL(`**/incidents/${input.incident}?done=approved#actions`),
    approve.getByRole("button", { name: "Approve" }).click(),
  ]);
  out.approved_said = await page.locator("#actions p.done").textContent();
  // The response form of a resolved incident saves what it shows (a
  // commander named afterwards), leaving the stage resolved.
  await page.locator("#set-commander").fill("user:olivia");
  await Promise.all([page.waitForURL(`**/incidents/${input.incident}?done=saved#response`), page.locator("#save-response").click()]);
  out.commander_after = await page.locator("#commander").textContent();
  out.stage_choices = await page.locator("#set-stage").count();
  await shot(page, "resolved-response-saved");
  await context.close();
  return out;
}

async function editor() {
  const out = {};
  const url = `${base}/incidents/${input.incident}/postmortem`;
  const a = await person("alice", input.a);
  const b = await person("bob", input.b);
  await a.page.goto(url);
  await b.page.goto(url);
  // Who else has it open, live.
  await a.page.locator("#presence", { hasText: input.b.id }).waitFor({ timeout: 15000 });
  out.alice_sees = await a.page.locator("#presence").textContent();

  // Different sections, at the same time: both kept, no manual step.
  const area = (p) => p.locator("textarea#markdown");
  const textA = await area(a.page).inputValue();
  const textB = await area(b.page).inputValue();
  const placeholder = "_What happened, in two or three sentences, for someone who was not there._";
  await area(a.page).fill(edit(textA, "## Summary", placeholder, "Checkout's v2 deploy broke payments for 12 minutes."));
  await area(b.page).fill(edit(textB, "## What went well", "- ", "- The kill switch turned the new flow off within a second."));
  const save = (p) =>
    Promise.all([p.waitForURL(/postmortem\?saved=/), p.getByRole("button", { name: "Save", exact: true }).click()]);
  await save(a.page);
  await save(b.page);
  out.bob_flash = await b.page.locator("#saved").textContent();
  out.merged_text = await area(b.page).inputValue();
  await shot(b.page, "editor-merged");

  // The same line: both versions side by side, resolved by hand.
  await a.page.goto(url);
  await b.page.goto(url);
  const t2 = await area(a.page).inputValue();
  await area(a.page).fill(edit(t2, "## What went badly", "- ", "- Alice: the page came 4 minutes after the errors."));
  await area(b.page).fill(edit(t2, "## What went badly", "- ", "- Bob: the runbook named the old flag."));
  await save(a.page);
  await b.page.getByRole("button", { name: "Save", exact: true }).click();
  await b.page.locator(".clash").first().waitFor();
  out.clash_ours = await b.page.locator(".clash pre.ours").first().textContent();
  out.clash_theirs = await b.page.locator(".clash pre.theirs").first().textContent();
  await shot(b.page, "editor-conflict");
  const resolution = await area(b.page).inputValue();
  // Saving with the markers still in is refused, and keeps the text.
  await b.page.getByRole("button", { name: "Save the resolved draft" }).click();
  out.markers_refused = await b.page.locator("p.error", { hasText: "still has a clash marked" }).count();
  const resolved = resolution
    .split("\n")
    .filter((l) => !/^(<<<<<<< |=======$|>>>>>>> )/.test(l))
    .join("\n");
  await area(b.page).fill(resolved);
  await Promise.all([b.page.waitForURL(/postmortem\?saved=/), b.page.getByRole("button", { name: "Save the resolved draft" }).click()]);
  out.resolved_text = await area(b.page).inputValue();

  // The blameless check, live: a hint by its line, with a suggestion.
  await a.page.goto(url);
  const t3 = await area(a.page).inputValue();
  await area(a.page).fill(`${t3}\nThe outage happened because Bob forgot to run the migration. <img src=x onerror=alert(1)>\n`);
  await a.page.locator("#findings .finding", { hasText: "forgot to" }).waitFor({ timeout: 10000 });
  out.finding = await a.page.locator("#findings .finding", { hasText: "forgot to" }).first().textContent();
  await a.page.locator("#preview", { hasText: "forgot to run the migration" }).waitFor({ timeout: 10000 });
  out.preview_imgs = await a.page.locator("#preview img").count();
  await shot(a.page, "editor-lint");

  // Action items: added with the form, closed with a button, no script needed
  // (Bob: Alice's page holds an unsaved edit, which the page guards).
  await b.page.goto(url);
  await b.page.getByLabel("Action", { exact: true }).fill("Add a canary gate on checkout error rate");
  await b.page.getByLabel("Owner").fill("bob");
  await b.page.getByLabel("Due").fill("2026-12-20");
  await b.page.getByLabel("Priority").selectOption("high");
  await Promise.all([b.page.waitForURL(/#item-\d+$/), b.page.getByRole("button", { name: "Add", exact: true }).click()]);
  const item = b.page.locator("table.items tbody tr").first();
  out.item_added = (await item.textContent()).replace(/\s+/g, " ").trim();
  await Promise.all([b.page.waitForURL(/#item-\d+$/), item.getByRole("button", { name: "Done" }).click()]);
  out.item_closed = (await b.page.locator("table.items tbody tr").first().locator('td[data-label="Status"]').textContent()).trim();
  out.item_reopen_offered = await b.page.locator("table.items tbody tr").first().getByRole("button", { name: "Reopen" }).count();
  await shot(b.page, "editor-action-items");
  await a.context.close();
  await b.context.close();
  return out;
}

async function dense() {
  const out = {};
  const { context, page } = await person("viewer", input.viewer);
  await page.goto(`${base}/incidents/${input.incident}`);
  const svg = page.locator("svg.timeline");
  out.buckets = await svg.locator(".mark.bucket").count();
  out.dots = await svg.locator(".mark.dot").count();
  out.bucket_total = await svg.locator(".mark.bucket").evaluateAll((els) =>
    els.reduce((n, e) => n + Number(e.getAttribute("data-count")), 0)
  );
  out.list_rows = await page.locator("#entries tbody tr").count();
  out.overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await shot(page, "incident-dense");
  // A slice zooms in, until single entries show.
  for (let depth = 0; depth < 4; depth++) {
    const zoom = svg.locator("a.zoom").first();
    if ((await zoom.count()) === 0) break;
    await Promise.all([page.waitForURL(/from=\d+&to=\d+/), zoom.click()]);
    out.zoom_depth = depth + 1;
  }
  out.zoomed_dots = await svg.locator(".mark.dot").count();
  out.zoomed_url = new URL(page.url()).search;
  await shot(page, "incident-dense-zoomed");
  await context.close();
  return out;
}

// Signs in through the OpenID provider's own pages (its development sign-in
// form and consent page), from Firebreak's sign-in page. Returns where the
// browser landed on Firebreak and how Firebreak answered there.
async function viaProvider(who, login, start = `${base}/incidents`) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = watch(await context.newPage(), who);
  // The provider's answer (a redirect to the callback), and the flow's
  // cookie as it was before the callback cleared it: a test may replay both.
  const callback = { url: null, cookies: [] };
  page.on("request", (r) => {
    if (r.url().startsWith(`${base}/auth/oidc/callback`)) callback.url = r.url();
  });
  await page.goto(start);
  check(new URL(page.url()).pathname === "/login", `${who}: expected the sign-in page, got ${page.url()}`);
  const answered = page.waitForResponse((r) => r.url().startsWith(`${base}/auth/oidc/callback`));
  await page.getByRole("link", { name: `Sign in with ${input.provider_name}` }).click();
  await page.locator('input[name="login"]').fill(login);
  callback.cookies = await context.cookies(`${base}/auth/oidc/callback`);
  await page.locator('input[name="password"]').fill("anything");
  await page.locator('button:has-text("Sign-in")').click();
  await page.locator('button:has-text("Continue")').click();
  const response = await answered;
  await page.waitForLoadState("domcontentloaded");
  const error = await page.locator("p.error").count() ? await page.locator("p.error").textContent() : null;
  return { context, page, callback, status: response.status(), error };
}

async function me(page) {
  return page.evaluate(async () => {
    const r = await fetch("/api/v1/me");
    return { status: r.status, body: r.status === 200 ? await r.json() : null };
  });
}

// Two people from the provider: alice (group sre-oncall -> operator)
// approves the held action; bob (viewers -> viewer) is offered no decision
// and is refused one through the API; alice signs out at the provider too.
async function oidc() {
  const out = {};
  const alice = await viaProvider("alice", "alice", `${base}/incidents/${input.incident}`);
  out.alice_landed = new URL(alice.page.url()).pathname;
  out.alice = await me(alice.page);
  await shot(alice.page, "alice-signed-in");
  const approve = alice.page.locator(`#held-banner form[action="/actions/${input.action}/approve"]`);
  await approve.getByLabel("I'm sure").check();
  await Promise.all([
    alice.page.waitForURL(`**/incidents/${input.incident}?done=approved#actions`),
    approve.getByRole("button", { name: "Approve" }).click(),
  ]);
  out.alice_approved = await alice.page.locator("#actions p.done").textContent();
  // A token an admin from the provider makes acts as her (one person
  // across the web and the API).
  const dana = await viaProvider("dana", "dana");
  out.dana_token = await dana.page.evaluate(async () => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch("/api/v1/tokens", {
      method: "POST",
      headers: { "x-csrf-token": csrf, "content-type": "application/json" },
      body: JSON.stringify({ name: "dana-laptop", scopes: ["read"] }),
    });
    return { status: r.status, body: await r.json() };
  });
  out.dana = await me(dana.page);
  await dana.context.close();

  const bob = await viaProvider("bob", "bob", `${base}/incidents/${input.incident}`);
  out.bob = await me(bob.page);
  out.bob_offered = await bob.page.locator(`form[action="/actions/${input.second_action}/approve"]`).count();
  out.bob_approve = await bob.page.evaluate(async (id) => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch(`/api/v1/actions/${id}/approve`, { method: "POST", headers: { "x-csrf-token": csrf } });
    return { status: r.status, body: await r.text() };
  }, input.second_action);
  await bob.context.close();

  // Sign out: Firebreak's session ends, then the provider's (it asks first).
  // Firebreak's session ends; its page moves on to the provider's sign-out.
  await alice.page.locator('form[action="/logout"] button').click();
  const confirm = alice.page.locator('button:has-text("Yes, sign me out")');
  await confirm.waitFor({ timeout: 10000 }).catch(() => {});
  await shot(alice.page, "alice-signing-out");
  check(alice.page.url().startsWith(input.issuer), `signing out should go to the provider, went to ${alice.page.url()}`);
  await confirm.click();
  await alice.page.waitForURL(`${base}/login**`);
  out.after_logout = new URL(alice.page.url()).pathname;
  out.alice_after_logout = await me(alice.page);
  await alice.context.close();
  return out;
}

// What Firebreak answers when the provider's answer must not be trusted.
async function oidcRefusals() {
  const out = {};
  const tamper = (mode) =>
    fetch(`${input.issuer}/__test/tamper`, { method: "POST", body: JSON.stringify({ mode }) });
  for (const mode of ["forged", "unknown-kid", "expired", "wrong-audience", "wrong-nonce"]) {
    await tamper(mode);
    const attempt = await viaProvider(mode, "alice");
    out[mode] = { status: attempt.status, error: attempt.error, me: (await me(attempt.page)).status };
    await attempt.context.close();
  }
  await tamper("none");

  // Someone in no mapped group.
  const carol = await viaProvider("carol", "carol");
  out.no_group = { status: carol.status, error: carol.error, me: (await me(carol.page)).status };
  await carol.context.close();

  // A code used twice: the answer replayed with the flow's cookie put back.
  const ok = await viaProvider("replay", "alice");
  out.first_use = { status: ok.status, me: (await me(ok.page)).status };
  await ok.context.clearCookies();
  await ok.context.addCookies(ok.callback.cookies.filter((c) => c.name === "firebreak_oidc"));
  const again = await ok.page.goto(ok.callback.url);
  out.replayed = { status: again.status(), error: await ok.page.locator("p.error").textContent(), me: (await me(ok.page)).status };
  await ok.context.close();

  // An answer with another state than the one this browser's sign-in began with.
  const context = await browser.newContext();
  const page = watch(await context.newPage(), "wrong-state");
  await page.goto(`${base}/auth/oidc/login`);
  await page.locator('input[name="login"]').waitFor();
  const wrong = await page.goto(`${base}/auth/oidc/callback?code=made-up&state=not-the-state`);
  out.wrong_state = { status: wrong.status(), error: await page.locator("p.error").textContent(), me: (await me(page)).status };
  await context.close();
  return out;
}

// One sign-in through the provider: how Firebreak answered, and who it
// says the browser is afterwards.
async function oidcSignIn() {
  const attempt = await viaProvider(input.login, input.login);
  const out = { status: attempt.status, error: attempt.error, me: await me(attempt.page) };
  await attempt.context.close();
  return out;
}

const scenarios = { incident, forced, editor, dense, oidc, "oidc-refusals": oidcRefusals, "oidc-sign-in": oidcSignIn };
try {
  check(scenarios[scenario], `no scenario ${scenario}`);
  const out = await scenarios[scenario]();
  out.trouble = trouble;
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
