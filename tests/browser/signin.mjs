// Walks crmkit's OAuth sign-in page in a real headless Chromium, as a person
// would: type the email, type the emailed code, pick the workspace, allow.
//
// Usage: node signin.mjs AUTHORIZE_URL EMAIL SCREENSHOT_DIR
// Prints NEED_CODE and reads the code from stdin (the parent test has the SMTP
// listener); prints LANDED <url> with the final redirect, then exits 0.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [authorizeUrl, email, shots] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage();
  await page.goto(authorizeUrl);
  await page.screenshot({ path: `${shots}/1-email.png` });
  await page.fill("#email", email);
  await page.click("button[type=submit]");
  await page.waitForSelector("#code");
  await page.screenshot({ path: `${shots}/2-code.png` });
  console.log("NEED_CODE");
  const code = (await nextLine()).trim();
  await page.fill("#code", code);
  await page.click("button[type=submit]");
  await page.waitForSelector("#workspace");
  await page.screenshot({ path: `${shots}/3-consent.png` });
  await Promise.all([
    page.waitForURL((u) => u.searchParams.has("code")),
    page.click("button[value=allow]"),
  ]);
  console.log(`LANDED ${page.url()}`);
} finally {
  await browser.close();
  lines.close();
}
