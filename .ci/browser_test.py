#!/usr/bin/env python3
"""The web view in a real browser: starts examples/web_view (a word count under chaos kills,
serving its web view on loopback), loads the page in headless Debian Chromium through
chromedriver (WebDriver over HTTP, standard library only), and checks the DOM:

- the job graph shows the job's vertices;
- at least two checkpoints are listed;
- the timeline shows a chaos kill and a restore after it;
- the page updates live: a value changes between two reads without a navigation.

It saves a screenshot as target/web_view.png, then stops the example with Ctrl-C (SIGINT),
whose exactly-once check of the committed output must pass. Every process it starts is
stopped by process id on the way out, whatever happens.

Usage: python3 .ci/browser_test.py [path/to/web_view binary]
"""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TIMEOUT = 90


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {url}: HTTP {e.code}: {e.read()[:500]!r}") from e


def wait_for(what, f, timeout=TIMEOUT):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        last = f()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last reading: {last!r}")


class Driver:
    def __init__(self, port, profile):
        self.base = f"http://127.0.0.1:{port}"
        wait_for("chromedriver", self._ready, 30)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1400,1700"]}}}}
        self.session = http("POST", self.base + "/session", caps)["value"]["sessionId"]

    def _ready(self):
        try:
            return http("GET", self.base + "/status")["value"]["ready"]
        except (OSError, RuntimeError):
            return False

    def cmd(self, method, path, body=None):
        return http(method, f"{self.base}/session/{self.session}{path}", body)["value"]

    def js(self, script):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": []})

    def quit(self):
        try:
            http("DELETE", f"{self.base}/session/{self.session}")
        except (OSError, RuntimeError):
            pass


READ_DOM = """
const q = (s) => Array.from(document.querySelectorAll(s));
return {
  vertices: q('#graph .vertex').map((e) => e.dataset.vertex),
  edges: q('#graph .edge').map((e) => e.dataset.from + '->' + e.dataset.to + ':' + e.dataset.partitioning),
  checkpoints: q('#checkpoints tr.checkpoint:not(.aborted)').length,
  timeline: q('#timeline li').map((e) => e.dataset.kind),
  tasks: q('#tasks tr.task').length,
  records: Number((document.getElementById('summary-1') || {dataset: {}}).dataset.records || 0),
  refreshes: Number(document.getElementById('refreshes').textContent),
  navigations: performance.getEntriesByType('navigation').length,
  marker: window.__snapflowTestMarker || null,
};
"""


def test_the_page_shows_graph_checkpoints_restarts_and_updates_live(driver, url):
    driver.cmd("POST", "/url", {"url": url})
    driver.js("window.__snapflowTestMarker = 'set before the first read'; return 1;")
    first = wait_for("the graph and two checkpoints", lambda: (
        lambda d: d if len(d["vertices"]) == 4 and d["checkpoints"] >= 2 and d["records"] > 0 else None
    )(driver.js(READ_DOM)))
    assert first["vertices"] == ["lines", "split", "count", "out"], first
    assert "split->count:hash" in first["edges"], first
    assert first["tasks"] == 8, first
    # A chaos kill, then a restore after it (the timeline is newest first).
    restored = wait_for("a restore after a chaos kill", lambda: (
        lambda d: d if "kill" in d["timeline"] and "restore" in d["timeline"][: d["timeline"].index("kill")] else None
    )(driver.js(READ_DOM)))
    second = wait_for("a changed value", lambda: (
        lambda d: d if d["records"] != first["records"] and d["refreshes"] > first["refreshes"] else None
    )(driver.js(READ_DOM)))
    assert second["marker"] == "set before the first read", "the page was reloaded"
    assert second["navigations"] == 1, second
    print(f"ok: vertices {first['vertices']}, {second['checkpoints']} checkpoints listed, "
          f"timeline {restored['timeline'][:6]}, records {first['records']} -> {second['records']} "
          f"after {second['refreshes'] - first['refreshes']} refreshes without navigation")
    png = base64.b64decode(driver.cmd("GET", "/screenshot"))
    os.makedirs("target", exist_ok=True)
    with open("target/web_view.png", "wb") as f:
        f.write(png)
    print(f"screenshot: target/web_view.png ({len(png)} bytes)")


def stop(proc, sig=signal.SIGTERM):
    """Stops `proc` and everything it started (its own process group: chromedriver's
    chromium too), by process id."""
    if not proc:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/examples/web_view"
    for exe in (CHROMIUM, CHROMEDRIVER, binary):
        if not os.path.exists(exe):
            sys.exit(f"browser test: {exe} is missing")
    port, driver_port = free_port(), free_port()
    example = chromedriver = driver = None
    profile = tempfile.mkdtemp(prefix="snapflow-chromium-")
    try:
        example = subprocess.Popen([binary, "--port", str(port), "--kill-every-ms", "1500"],
                                   stdout=subprocess.PIPE, text=True, start_new_session=True)
        url = None
        for line in example.stdout:
            print("web_view:", line.rstrip())
            if line.startswith("web view: "):
                url = line.split(": ", 1)[1].strip()
                break
        assert url and url.startswith("http://127.0.0.1:"), url
        chromedriver = subprocess.Popen([CHROMEDRIVER, f"--port={driver_port}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        driver = Driver(driver_port, profile)
        test_the_page_shows_graph_checkpoints_restarts_and_updates_live(driver, url)
        driver.quit()
        driver = None
        # Ctrl-C: the example stops with a final checkpoint and checks its output.
        os.killpg(example.pid, signal.SIGINT)
        rest, _ = example.communicate(timeout=60)
        print("\n".join("web_view: " + l for l in rest.splitlines()))
        assert example.returncode == 0, f"web_view exited with {example.returncode}"
        assert "web_view: OK (exactly once)" in rest, rest
        print("browser test: OK")
    finally:
        if driver:
            driver.quit()
        stop(chromedriver)
        stop(example, signal.SIGKILL)
        subprocess.run(["rm", "-rf", profile], check=False)


if __name__ == "__main__":
    # Killed by .ci/run's trap: run the cleanup in `main`'s finally rather than die at once.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("browser test: terminated"))
    main()
