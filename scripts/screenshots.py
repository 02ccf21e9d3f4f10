"""Screenshots of the Airflow UI for the docs, from running services (``llmops up``).

Takes, with headless Chromium (Debian's ``chromium``) driven over the DevTools protocol:

* ``trigger-form.png``: the trigger form of ``llm_retraining`` with its Params;
* ``required-action.png``: a run waiting for approval in *Required actions*;
* ``approvals-page.png``: the plugin's approvals page inside the UI, after the approval.

With ``--seed-run`` (the default) it triggers one short run with approval required through the
REST API, screenshots it waiting, approves it with a comment and waits for ``production`` to move,
so the pages have something to show. It logs in as a simple-auth-manager user (password from the
generated passwords file) and hands Chromium the same JWT cookie the UI's login sets.

    .venv/bin/llmops up &        # wait for "ready"
    .venv/bin/python scripts/screenshots.py --out docs/screenshots
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

DAG_ID = "llm_retraining"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--disable-dev-shm-usage"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--airflow-url", default="http://127.0.0.1:8080", help="the API server `llmops up` started")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password", default="", help="default: from the simple auth manager's passwords file")
    parser.add_argument("--home", default=os.environ.get("LLMOPS_HOME", ".llmops"), help="LLMOPS_HOME of the services")
    parser.add_argument("--out", default="docs/screenshots", help="folder for the PNG files")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--form-height", type=int, default=2600, help="page height for the trigger form")
    parser.add_argument("--max-steps", type=int, default=20, help="training steps of the seeded run")
    parser.add_argument("--run-id", default="", help="use this waiting run of llm_retraining instead of triggering one")
    parser.add_argument("--seed-run", action=argparse.BooleanOptionalAction, default=True,
                        help="trigger, screenshot and approve one run so the pages have content")
    return parser.parse_args(argv)


class Rest:
    def __init__(self, base: str, token: str = "") -> None:
        self.base, self.token = base.rstrip("/"), token

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            self.base + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read().decode() or "{}")
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"screenshots: {method} {path} answered {exc.code}: {exc.read().decode()[:500]}") from exc


def login(args: argparse.Namespace) -> str:
    password = args.password
    if not password:
        path = Path(args.home) / "airflow" / "simple_auth_manager_passwords.json.generated"
        if not path.is_file():
            raise SystemExit(f"screenshots: no --password and no passwords file at {path}; is `llmops up` running "
                             f"with LLMOPS_HOME={args.home}?")
        password = json.loads(path.read_text())[args.username]
    return Rest(args.airflow_url).call("POST", "/auth/token", {"username": args.username, "password": password})["access_token"]


class Browser:
    """One headless Chromium page, driven over the DevTools protocol (websocket)."""

    def __init__(self, chromium: str, width: int, height: int) -> None:
        from websockets.sync.client import connect

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.profile = tempfile.mkdtemp(prefix="llmops-chromium-")
        self.process = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--remote-debugging-port={port}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                    pages = [t for t in json.loads(response.read()) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise SystemExit(f"screenshots: {chromium} did not start a DevTools endpoint")
            time.sleep(0.3)
        self.socket = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024,
                              ping_interval=None, legacy=True)  # long waits for the pipeline; no keepalive to time out
        self.next_id = 0
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for_text(self, text: str, timeout: float = 60, frame_too: bool = False) -> None:
        probe = f"document.body && document.body.innerText.includes({json.dumps(text)})"
        if frame_too:
            probe = (f"({probe}) || Array.from(document.querySelectorAll('iframe')).some(f => "
                     f"{{ try {{ return f.contentDocument.body.innerText.includes({json.dumps(text)}); }} "
                     f"catch (e) {{ return false; }} }})")
        deadline = time.monotonic() + timeout
        while not self.evaluate(probe):
            if time.monotonic() > deadline:
                raise SystemExit(f"screenshots: {text!r} never appeared on {self.evaluate('location.href')}")
            time.sleep(0.5)

    def click_text(self, text: str, selector: str = "button") -> bool:
        return bool(self.evaluate(
            f"(() => {{ const el = Array.from(document.querySelectorAll({json.dumps(selector)}))"
            f".find(e => e.innerText.trim() === {json.dumps(text)}); if (el) {{ el.click(); return true; }} return false; }})()"))

    def screenshot(self, path: Path, full_height: bool = False) -> None:
        params: dict = {"format": "png"}
        if full_height:
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        print(f"screenshots: wrote {path}")

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        try:
            os.killpg(self.process.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


def wait_for_task(rest: Rest, run_id: str, task_id: str, states: tuple[str, ...], timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
    while time.monotonic() < deadline:
        state = rest.call("GET", path).get("state")
        if state in states:
            return state
        run_state = rest.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")["state"]
        if run_state in ("failed", "success"):
            raise SystemExit(f"screenshots: run {run_id} ended {run_state} before {task_id} reached {states}")
        time.sleep(3)
    raise SystemExit(f"screenshots: {task_id} of {run_id} not in {states} after {timeout} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the finally: Chromium is stopped too
    out = Path(args.out)
    token = login(args)
    rest = Rest(args.airflow_url, token)
    base = args.airflow_url.rstrip("/")
    browser = Browser(args.chromium, args.width, args.height)
    try:
        # The cookie the UI's own login sets; the approvals page accepts the same token.
        browser.send("Network.enable")
        browser.send("Network.setCookie", name="_token", value=token, url=base + "/", path="/")

        # A tall page for the form, so every Param is in one picture.
        browser.send("Emulation.setDeviceMetricsOverride", width=args.width, height=args.form_height,
                     deviceScaleFactor=1, mobile=False)
        browser.goto(f"{base}/dags/{DAG_ID}")
        browser.wait_for_text("Trigger")
        browser.click_text("Trigger")
        browser.wait_for_text("Preference data set")
        browser.evaluate("document.querySelectorAll('[role=dialog] button[aria-expanded=false]')"
                         ".forEach(b => b.click())")  # open the collapsed Param sections
        time.sleep(1.5)
        browser.screenshot(out / "trigger-form.png")
        browser.send("Emulation.setDeviceMetricsOverride", width=args.width, height=args.height,
                     deviceScaleFactor=1, mobile=False)

        if args.seed_run:
            run_id = args.run_id
            if not run_id:
                rest.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
                run_id = rest.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {
                    "logical_date": None, "conf": {"require_approval": True, "max_steps": args.max_steps}})["dag_run_id"]
            print(f"screenshots: run {run_id}; waiting for the approval step")
            wait_for_task(rest, run_id, "approve", ("deferred", "awaiting_input"))
            browser.goto(f"{base}/required_actions")
            browser.wait_for_text("Promote")
            time.sleep(1.5)
            browser.screenshot(out / "required-action.png")
            rest.call("PATCH", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/approve/-1/hitlDetails",
                      {"chosen_options": ["Approve"], "params_input": {"comment": "BLEU and ROUGE up on the held-out prompts"}})
            wait_for_task(rest, run_id, "promote", ("success",))

        browser.goto(f"{base}/plugin/llmops-approvals")
        browser.wait_for_text("Latest gate decisions", frame_too=True)
        time.sleep(1.5)
        browser.screenshot(out / "approvals-page.png")
    finally:
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
