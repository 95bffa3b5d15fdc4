#!/usr/bin/env python3
"""Drives the controller's web console in headless Chromium through chromedriver (W3C WebDriver
over HTTP, Python's standard library only) against a running controller. tests/console/run.sh
starts the controller and calls this. Prints one PASS/FAIL line per check; exits 1 on a failure.

    drive.py --url http://127.0.0.1:PORT --admin-token TOKEN --screenshot docs/console.png
"""

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

failures = 0


def check(name, ok, detail=""):
    global failures
    print(("PASS" if ok else "FAIL") + ": " + name + (f" ({detail})" if detail and not ok else ""), flush=True)
    if not ok:
        failures += 1
    return ok


def http(method, url, body=None, token=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, text


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Browser:
    """A WebDriver session on a chromedriver this object starts and stops."""

    def __init__(self, chromium, chromedriver):
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="vgpu-console-chromium-")
        self.driver = subprocess.Popen(
            [chromedriver, f"--port={self.port}", "--allowed-ips=127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 20
        while True:
            try:
                if http("GET", self.base + "/status", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.2)
        args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile}",
            "--window-size=1280,1000",
        ]
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": chromium, "args": args},
                }
            }
        }
        st, v = http("POST", self.base + "/session", caps, timeout=60)
        if st != 200:
            raise RuntimeError(f"cannot start a browser session: {v}")
        self.session = self.base + "/session/" + v["value"]["sessionId"]

    def cmd(self, method, path, body=None):
        st, v = http(method, self.session + path, body if body is not None else ({} if method == "POST" else None))
        if st != 200:
            raise RuntimeError(f"webdriver {method} {path}: {v}")
        return v["value"]

    def go(self, url):
        self.cmd("POST", "/url", {"url": url})

    def js(self, script, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css):
        v = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(v.values()))

    def click(self, css):
        self.cmd("POST", f"/element/{self.find(css)}/click")

    def type(self, css, text):
        e = self.find(css)
        self.cmd("POST", f"/element/{e}/clear")
        self.cmd("POST", f"/element/{e}/value", {"text": text})

    def size(self, w, h):
        self.cmd("POST", "/window/rect", {"width": w, "height": h})

    def screenshot(self, path):
        png = base64.b64decode(self.cmd("GET", "/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        return len(png)

    def wait(self, script, timeout=15, *args):
        """Waits until `script` (a JS expression's body returning a value) is truthy."""
        deadline = time.time() + timeout
        while True:
            v = self.js(script, *args)
            if v:
                return v
            if time.time() > deadline:
                return v
            time.sleep(0.2)

    def close(self):
        try:
            http("DELETE", self.session, timeout=10)
        except Exception:
            pass
        self.driver.terminate()
        try:
            self.driver.wait(10)
        except subprocess.TimeoutExpired:
            self.driver.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def login(b, token):
    b.type("#token", token)
    b.click("#login button[type=submit]")


SLICE = "return document.querySelectorAll('#map .slice[data-vm=\"' + arguments[0] + '\"]').length;"
ROW = "return document.querySelectorAll('#allocations tr[data-vm=\"' + arguments[0] + '\"]').length;"
OVERFLOW = (
    "const d = document.documentElement;"
    "return {scroll: d.scrollWidth, client: d.clientWidth, body: document.body.scrollWidth};"
)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--admin-token", required=True)
    p.add_argument("--screenshot", required=True)
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    a = p.parse_args()
    url, admin = a.url.rstrip("/"), a.admin_token

    st, hosts = http("GET", url + "/v1/hosts", token=admin)
    if not check("the controller lists a host", st == 200 and len(hosts) >= 1, f"{st} {hosts}"):
        return 1
    host = hosts[0]["name"]
    st, proj = http("POST", url + "/v1/projects", {"name": "team-a"}, token=admin)
    check("project team-a created", st == 201, f"{st} {proj}")
    team_token = proj["token"]
    # A slice of the project's, made through the API, so two VMs share the map.
    st, a1 = http(
        "POST", url + "/v1/allocations", {"vm": "db-vm", "host": host, "slice": {"profile": "1/4"}}, token=team_token
    )
    check("team-a allocates db-vm through the API", st == 201, f"{st} {a1}")

    # The third GPU unhealthy, to see the colour.
    st, gpus = http("GET", url + "/v1/gpus", token=admin)
    sick = sorted(gpus, key=lambda g: g["index"])[-1]["uuid"]
    st, v = http("PATCH", url + "/v1/gpus/" + sick, {"health": "unhealthy"}, token=admin)
    check("a GPU marked unhealthy", st == 200, f"{st} {v}")

    b = Browser(a.chromium, a.chromedriver)
    try:
        b.go(url + "/console")
        check("the console asks for a token", b.wait("return document.getElementById('status').textContent.includes('Enter a token')"))
        login(b, admin)
        who = b.wait("return document.getElementById('whoami').textContent")
        check("admin login shows the role", who == "admin", who)
        n = b.wait("return document.querySelectorAll('#map .gpu-card').length")
        check("the map shows the three simulated GPUs", n == 3, f"{n} cards")
        check("the map draws team-a's db-vm", b.wait(SLICE, 10, "db-vm"))
        cls = b.js("const c = document.querySelector('#map .gpu-card[data-gpu=\"' + arguments[0] + '\"]');"
                   "return c ? c.className : '';", sick)
        check("the unhealthy GPU is drawn as unhealthy", "health-unhealthy" in cls, cls)
        ok = b.js("return [...document.querySelectorAll('#map .gpu-card')].filter(c => c.dataset.gpu !== arguments[0])"
                  ".every(c => c.classList.contains('health-healthy'))", sick)
        check("the healthy GPUs are drawn as healthy", ok)
        check("the hosts table shows the host alive",
              b.wait("return [...document.querySelectorAll('#hosts td')].some(td => td.textContent === 'alive')"))

        # Allocate through the form.
        b.type("#allocate input[name=vm]", "web-vm")
        b.type("#allocate input[name=host]", host)
        b.type("#allocate input[name=profile]", "1/2")
        b.click("#allocate button[type=submit]")
        drawn = b.wait(SLICE, 10, "web-vm")
        check("an allocation made in the console appears on the map", drawn == 2, f"{drawn} parts (SMs and memory)")
        sock = b.js(
            "const r = document.querySelector('#allocations tr[data-vm=\"web-vm\"] td[data-label=socket]');"
            "return r ? r.textContent : '';"
        )
        same_gpu = b.js(
            "const s = document.querySelector('#map .slice[data-vm=\"web-vm\"]');"
            "return s ? s.closest('.gpu-card').dataset.gpu : null;"
        )
        st, allocs = http("GET", url + "/v1/allocations", token=admin)
        web = [x for x in allocs if x["vm"] == "web-vm"]
        check("the slice is drawn on the GPU the controller placed it on",
              len(web) == 1 and web[0]["gpu_uuid"] == same_gpu, f"{same_gpu} vs {web}")
        check("its row shows the worker's socket path",
              len(web) == 1 and sock == web[0]["socket_path"] != "", f"{sock!r} vs {web}")
        b.wait("return [...document.querySelectorAll('#allocations td[data-label=state]')].every(td => td.textContent === 'running')", 15)
        b.size(1280, 1000)
        time.sleep(0.3)
        size = b.screenshot(a.screenshot)
        check("screenshot saved to " + a.screenshot, size > 10_000, f"{size} bytes")

        # An API error stays until dismissed.
        b.type("#allocate input[name=vm]", "lost-vm")
        b.type("#allocate input[name=host]", "no-such-host")
        b.click("#allocate button[type=submit]")
        err = b.wait("const e = document.querySelector('#errors .error'); return e ? e.textContent : '';")
        check("an API error is shown", "no-such-host" in (err or ""), repr(err))
        b.click("#refresh")
        time.sleep(6)  # past the console's 5 s refresh too
        still = b.js("return document.querySelectorAll('#errors .error').length")
        check("the error is still shown after refreshes", still == 1, f"{still} errors")
        b.click("#errors .error .dismiss")
        gone = b.wait("return document.querySelectorAll('#errors .error').length === 0", 5)
        check("dismiss removes the error", gone)

        # Narrow screen.
        b.size(400, 900)
        time.sleep(0.5)
        o = b.js(OVERFLOW)
        check("400 px wide: no horizontal overflow (admin view)", o["scroll"] <= o["client"], str(o))
        b.size(1280, 1000)

        # Release from the console.
        b.click("#allocations tr[data-vm=\"web-vm\"] button.release")
        gone = b.wait("return " + SLICE.replace("return ", "").rstrip(";") + " === 0", 10, "web-vm")
        check("a released slice leaves the map", gone)
        check("and the allocations table", b.js(ROW, "web-vm") == 0)
        st, allocs = http("GET", url + "/v1/allocations", token=admin)
        check("the controller no longer holds it", not [x for x in allocs if x["vm"] == "web-vm"], str(allocs))

        # A project token sees its own slices: in a fresh tab state, as a project's user would.
        b.js("sessionStorage.clear();")
        b.go(url + "/console")
        b.wait("return document.getElementById('status').textContent.includes('Enter a token')")
        login(b, team_token)
        who = b.wait("const w = document.getElementById('whoami').textContent; return w.startsWith('project') ? w : '';")
        check("a project token's role is shown", who == "project (team-a)", repr(who))
        stat = b.js("return document.getElementById('status').textContent")
        check("no 'Enter a token' for a project token", "Enter a token" not in stat, repr(stat))
        check("the project sees its slice on the map", b.wait(SLICE, 10, "db-vm") == 2)
        projects = b.js("return [...document.querySelectorAll('#allocations td[data-label=project]')].map(td => td.textContent)")
        check("the project sees only its allocations", projects == ["team-a"], str(projects))
        check("the hosts view is hidden for a project", b.js("return document.getElementById('hosts-section').hidden"))
        errs = b.js("return [...document.querySelectorAll('#errors .error')].map(e => e.textContent)")
        check("the project view raised no error", not errs, str(errs))
        b.size(400, 900)
        time.sleep(0.5)
        o = b.js(OVERFLOW)
        check("400 px wide: no horizontal overflow (project view)", o["scroll"] <= o["client"], str(o))
    except Exception as e:  # a step that could not run (an element missing) is a failure
        check("the browser steps ran to the end", False, str(e).splitlines()[0][:300])
    finally:
        b.close()
    http("DELETE", url + "/v1/allocations/" + a1["id"], token=admin)
    print(f"console: {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
