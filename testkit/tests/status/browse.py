#!/usr/bin/env python3
"""Drives headless Chromium over the supernode's status page for testkit/tests/status.rs.

Usage: browse.py CONFIG_JSON, where CONFIG_JSON holds
  base      http://IP:PORT of the supernode's HTTP API
  token     the API token
  chromium  the Chromium binary (Debian's; playwright's own browsers need a download)
  out_dir   where the screenshots go
  peers     how many peers the task must show done before the final look
  timeout_s how long to wait for that
Prints `signed-in` once the browser is signed in (the test then starts the pulls), then one JSON
object with what the browser saw; the Rust test checks it against /metrics. Exits non-zero (with
the reason on stderr) when a step fails.
"""

import json
import os
import sys
import tempfile

from playwright.sync_api import sync_playwright

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Everything the test compares, read from the data-* attributes the views write.
EXTRACT_OVERVIEW = """() => ({
  generated: document.getElementById('live').dataset.generated,
  tiles: Object.fromEntries([...document.querySelectorAll('.tile[data-metric]')]
      .map(t => [t.dataset.metric, {value: Number(t.dataset.value), text: t.querySelector('.v').textContent}])),
  tasks: [...document.querySelectorAll('tr[data-task]')].map(r => ({
      id: r.dataset.task, size: Number(r.dataset.size), origin: Number(r.dataset.originBytes),
      delivered: Number(r.dataset.delivered), peers: Number(r.dataset.peers),
      peers_done: Number(r.dataset.peersDone), href: r.querySelector('a').getAttribute('href')})),
  hosts: [...document.querySelectorAll('tr[data-host]')].map(r => ({
      id: r.dataset.host, addr: r.dataset.addr, uploaded: Number(r.dataset.uploaded),
      downloaded: Number(r.dataset.downloaded), failures: Number(r.dataset.failures)})),
  chart_paths: document.querySelectorAll('.chart svg path, .chart svg polyline').length,
  text: document.body.innerText,
})"""

EXTRACT_TASK = """() => ({
  task: document.querySelector('h2[data-task]') && document.querySelector('h2[data-task]').dataset.task,
  peers: [...document.querySelectorAll('tr[data-host]')].map(r => ({
      id: r.dataset.host, addr: r.dataset.addr, pieces: Number(r.dataset.pieces),
      uploaded: Number(r.dataset.uploaded), downloaded: Number(r.dataset.downloaded)})),
  segments: document.querySelectorAll('.stack > span').length,
  text: document.body.innerText,
})"""

ALL_DONE = """n => {
  const rows = [...document.querySelectorAll('tr[data-task]')];
  return rows.length > 0 && rows.every(r => r.dataset.peers === String(n) && r.dataset.peersDone === String(n));
}"""

DELIVERING = """() => {
  const tile = document.querySelector('.tile[data-metric="delivered-bytes"]');
  return tile !== null && Number(tile.dataset.value) > 0;
}"""

NO_OVERFLOW = "() => document.documentElement.scrollWidth <= window.innerWidth + 1"


def console_text(message):
    """A console message with the resource it is about, if any."""
    url = (message.location or {}).get("url")
    return f"{message.text} ({url})" if url else message.text


def main():
    cfg = json.loads(sys.argv[1])
    base, token, out_dir = cfg["base"], cfg["token"], cfg["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    seen = {"console_errors": [], "screenshots": {}}
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="damselfly-chromium-") as profile:
        ctx = p.chromium.launch_persistent_context(
            profile,
            executable_path=cfg["chromium"],
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        # Not signed in: refused. In a tab of its own: the browser's own follow-up requests for
        # the refused page (its favicon) are refused too, and would be logged in the tab.
        anonymous = ctx.new_page()
        seen["anonymous_status"] = anonymous.goto(base + "/status").status
        anonymous.close()

        # From here on, any console error (a script error, a blocked resource, a CSP violation)
        # is a failure.
        page = ctx.new_page()
        page.on("console", lambda m: m.type == "error" and seen["console_errors"].append(console_text(m)))
        page.on("pageerror", lambda e: seen["console_errors"].append(str(e)))
        # Signed in once with the token: redirected to /status, a session cookie set.
        response = page.goto(base + "/status?token=" + token)
        seen["sign_in_status"] = response.status
        seen["sign_in_url"] = page.url
        seen["cookies"] = [
            {"name": c["name"], "http_only": c["httpOnly"], "same_site": c["sameSite"], "holds_token": token in c["value"]}
            for c in ctx.cookies(base)
        ]
        # Reloaded without the token: still signed in.
        seen["reload_status"] = page.goto(base + "/status").status
        print("signed-in", flush=True)

        # The test starts the pulls now. The page refreshes itself: wait, without reloading,
        # until it shows bytes delivered.
        page.wait_for_function(DELIVERING, timeout=cfg["timeout_s"] * 1000, polling=250)
        # A server render while the pull runs, between two reads of /metrics: every counter it
        # shows must lie between the two.
        seen["live_metrics_before"] = page.request.get(base + "/metrics").text()
        page.goto(base + "/status")
        seen["live"] = page.evaluate(EXTRACT_OVERVIEW)
        seen["live_metrics_after"] = page.request.get(base + "/metrics").text()
        shot = os.path.join(out_dir, "status-live.png")
        page.screenshot(path=shot, full_page=True)
        seen["screenshots"]["live"] = shot
        first = seen["live"]["generated"]

        # Again without reloading, until every peer is done.
        page.wait_for_function(ALL_DONE, arg=cfg["peers"], timeout=cfg["timeout_s"] * 1000, polling=250)
        page.wait_for_function(
            "g => document.getElementById('live').dataset.generated !== g", arg=first, timeout=10000, polling=250
        )
        seen["refreshed_in_place"] = True
        # A fresh server render for the numbers: every peer reported done, so every piece it
        # got was reported before.
        page.goto(base + "/status")
        seen["overview"] = page.evaluate(EXTRACT_OVERVIEW)
        shot = os.path.join(out_dir, "status.png")
        page.screenshot(path=shot, full_page=True)
        seen["screenshots"]["overview"] = shot

        # One task's view, reached by its link.
        page.click("tr[data-task] a")
        page.wait_for_selector("h2[data-task]")
        seen["task_url"] = page.url
        seen["task"] = page.evaluate(EXTRACT_TASK)
        shot = os.path.join(out_dir, "status-task.png")
        page.screenshot(path=shot, full_page=True)
        seen["screenshots"]["task"] = shot

        # A phone: nothing wider than the screen (tables scroll inside their boxes).
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(base + "/status")
        seen["phone_fits"] = page.evaluate(NO_OVERFLOW)
        shot = os.path.join(out_dir, "status-phone.png")
        page.screenshot(path=shot, full_page=True)
        seen["screenshots"]["phone"] = shot
        page.goto(seen["task_url"])
        seen["phone_task_fits"] = page.evaluate(NO_OVERFLOW)
        shot = os.path.join(out_dir, "status-task-phone.png")
        page.screenshot(path=shot, full_page=True)
        seen["screenshots"]["task_phone"] = shot
        ctx.close()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
