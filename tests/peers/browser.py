"""A real browser clicking a confirmation link: Debian's headless Chromium driven
over the DevTools protocol (CDP), with nothing of Clarion's in between.

    browser.py URL [--click SELECTOR]

Opens URL in a fresh profile, waits for the page to load, and prints one JSON
object: the HTTP status and text of the page, and with --click, the status and
text of the page the click led to (the form's POST). Chromium is started with the
flags a locked-down CI needs (no sandbox, no GPU, no background traffic).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from websockets.sync.client import connect

CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)),
    None,
)


class Cdp:
    def __init__(self, url):
        self.ws = connect(url, max_size=None, open_timeout=30)
        self.next_id = 0
        self.events = []

    def call(self, method, session=None, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait(self, method, session, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i, e in enumerate(self.events):
                if e.get("method") == method and e.get("sessionId") == session:
                    return self.events.pop(i)
            try:
                self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.time()))))
            except TimeoutError:
                break
        raise RuntimeError(f"no {method} within {timeout} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--click")
    args = ap.parse_args()
    if CHROMIUM is None:
        print(json.dumps({"skipped": "chromium is not installed"}))
        return
    profile = tempfile.mkdtemp(prefix="clarion-chromium-")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not os.path.exists(port_file) or os.path.getsize(port_file) == 0:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        time.sleep(0.2)
        port, path = open(port_file).read().split("\n")[:2]
        cdp = Cdp(f"ws://127.0.0.1:{port}{path}")
        target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
        session = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        cdp.call("Page.enable", session)
        cdp.call("Network.enable", session)

        def load(action):
            cdp.events.clear()
            action()
            cdp.wait("Page.loadEventFired", session)
            status = None
            for e in cdp.events:
                if e.get("method") == "Network.responseReceived" and e["params"].get("type") == "Document":
                    status = e["params"]["response"]["status"]
            text = cdp.call("Runtime.evaluate", session, expression="document.body.innerText",
                            returnByValue=True)["result"].get("value", "")
            return {"status": status, "text": text}

        out = {"page": load(lambda: cdp.call("Page.navigate", session, url=args.url))}
        if args.click:
            expr = f"document.querySelector({json.dumps(args.click)}).click()"
            out["after_click"] = load(lambda: cdp.call("Runtime.evaluate", session, expression=expr))
        print(json.dumps(out))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
