"""The browser tests' harness: the real service (the `flashsale` API and the
`flashsale-workers` binaries, debug builds) on a free loopback port, with a
database of its own on the PostgreSQL that `scripts/test` found or started
and a redis-server of its own (the workers visit every sale in their Redis:
sharing one with another service and database would have each sink take the
other's confirmations), and headless Chromium driven by Playwright.

Every page a test opens is watched: a request to any other host, a console
error or an uncaught exception, and a page whose transfer passes 200 KB all
fail the test (`page` fixture). So does a page or an asset answered with
an error, and any 5xx from the API; the API's 4xx are answers a page reads
and shows (401 before signing in, 404 not_in_queue, 409 sold_out), which
Chromium also logs to the console: those lines are not counted as errors.
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "debug"
SHOTS = ROOT / "target" / "screenshots"
PAGE_BYTES_LIMIT = 200 * 1024
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 860}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """The API and the workers, started for the test session."""

    def __init__(self):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        db_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/flashsale")
        self.db_name = f"fs_test_browser_{uuid.uuid4().hex[:12]}"
        self.admin_url = db_url.rsplit("/", 1)[0] + "/postgres"
        self.db_url = db_url.rsplit("/", 1)[0] + "/" + self.db_name
        self.redis_port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": self.db_url,
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}",
            "LISTEN_ADDR": f"127.0.0.1:{self.port}",
            # Not the default port: other services may run on this machine.
            "WORKERS_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
            # One machine is every buyer here; the limits are tested elsewhere.
            "RATE_LIMITS": "off",
            # The built-in development secrets stand in.
            "FLASHSALE_ENV": "development",
        }
        self.procs = []

    def start(self):
        self.redis_dir = tempfile.TemporaryDirectory(prefix="fs-browser-redis-")
        self.procs.append(subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.redis_dir.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.redis_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.procs[0].poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not start (scripts/services.sh installs it)")
                time.sleep(0.05)
        subprocess.run(["psql", self.admin_url, "-qc", f'create database "{self.db_name}"'],
                       check=True, capture_output=True)
        subprocess.run([BIN / "flashsale", "migrate"], env=self.env, check=True, capture_output=True)
        log_dir = ROOT / "target" / "browser-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        for name, args in (("workers", [BIN / "flashsale-workers"]),
                           ("api", [BIN / "flashsale", "serve"])):
            log = open(log_dir / f"{name}.log", "w")
            self.procs.append(subprocess.Popen(args, env=self.env, stdout=log, stderr=log))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the service did not start; see {log_dir}")

    def stop(self):
        # The service first, its Redis last.
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
        self.redis_dir.cleanup()
        subprocess.run(["psql", self.admin_url, "-qc",
                        f'drop database if exists "{self.db_name}" with (force)'],
                       capture_output=True)

    def cli(self, *args, stdin=None):
        """Runs `flashsale <args>` against this service's stores."""
        out = subprocess.run([BIN / "flashsale", *args], env=self.env, input=stdin,
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def account(self, role="buyer"):
        """A new account with a password: (email, password)."""
        email = f"{role}-{uuid.uuid4().hex[:10]}@example.com"
        password = "correct horse battery " + uuid.uuid4().hex[:6]
        self.cli("add-user", "--email", email, "--role", role, stdin=password + "\n")
        return email, password

    def token(self, sub, role="buyer"):
        return self.cli("token", "--sub", sub, "--role", role)

    def call(self, method, path, body=None, token=None, headers=None):
        """A plain HTTP call to the API (outside the browser): (status, JSON or text)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if token:
            req.add_header("authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode()

    def psql(self, sql):
        out = subprocess.run(["psql", self.db_url, "-tAc", sql], check=True,
                             capture_output=True, text=True)
        return out.stdout.strip()


@pytest.fixture(scope="session")
def service():
    svc = Service()
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise RuntimeError("Chromium is missing: apt-get install chromium (scripts/test does)")
    with sync_playwright() as p:
        # Chromium's own background traffic (updates, sync, lookups of its
        # vendor's hosts) is off: a test sees only what the pages ask for.
        b = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
        ])
        yield b
        b.close()


class Watched:
    """A page with its problems recorded: requests to other hosts, console
    errors, uncaught exceptions, and bytes transferred per document."""

    def __init__(self, page, base):
        self.page = page
        self.host = urllib.parse.urlsplit(base).netloc
        self.foreign = []
        self.errors = []
        self.failed = []
        self.transfer = {}
        self._doc = None
        page.on("request", self._request)
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("requestfinished", self._finished)
        page.on("response", self._response)

    def _console(self, msg):
        if msg.type != "error":
            return
        # Chromium logs every 4xx/5xx answer as "Failed to load resource";
        # the responses themselves are judged in `_response`. A test that
        # takes the browser offline (`set_offline`) gets the requests made
        # meanwhile logged as failed too: what the page does then is the
        # test's to judge.
        url = urllib.parse.urlsplit(msg.location.get("url", ""))
        if url.netloc == self.host and (
                msg.text.startswith("Failed to load resource: the server responded")
                or msg.text == "Failed to load resource: net::ERR_INTERNET_DISCONNECTED"):
            return
        self.errors.append(msg.text)

    def _response(self, res):
        url = urllib.parse.urlsplit(res.url)
        if url.netloc != self.host:
            return
        api = url.path.startswith("/v1/")
        if res.status >= 500 or (res.status >= 400 and not api):
            self.failed.append(f"{res.status} {url.path}")

    def _request(self, req):
        url = urllib.parse.urlsplit(req.url)
        if url.scheme in ("data", "blob", "about"):
            return
        if url.netloc != self.host:
            self.foreign.append(req.url)
        if req.is_navigation_request() and req.frame == self.page.main_frame:
            self._doc = url.path
            self.transfer.setdefault(self._doc, 0)

    def _finished(self, req):
        if self._doc is None:
            return
        try:
            sizes = req.sizes()
        except Exception:  # the page navigated away meanwhile
            return
        self.transfer[self._doc] += sizes["responseBodySize"] + sizes["responseHeadersSize"]

    def check(self):
        assert not self.foreign, f"requests to other hosts: {self.foreign}"
        assert not self.errors, f"console errors: {self.errors}"
        assert not self.failed, f"failed responses: {self.failed}"
        heavy = {doc: n for doc, n in self.transfer.items() if n > PAGE_BYTES_LIMIT}
        assert not heavy, f"pages over {PAGE_BYTES_LIMIT} bytes: {heavy}"


def new_page(browser, service, viewport):
    context = browser.new_context(viewport=viewport, base_url=service.base)
    page = context.new_page()
    return context, page, Watched(page, service.base)


@pytest.fixture
def page(browser, service):
    """A phone-sized page, checked after the test for other hosts, console
    errors and size."""
    context, pg, watched = new_page(browser, service, PHONE)
    pg.watched = watched
    yield pg
    context.close()
    watched.check()


@pytest.fixture
def desktop(browser, service):
    """The same, desktop-sized."""
    context, pg, watched = new_page(browser, service, DESKTOP)
    pg.watched = watched
    yield pg
    context.close()
    watched.check()


@pytest.fixture
def new_context(browser, service):
    """Makes more watched pages (another buyer, another device); each is
    checked after the test."""
    made = []

    def make(viewport=PHONE):
        context, pg, watched = new_page(browser, service, viewport)
        pg.watched = watched
        made.append((context, watched))
        return pg

    yield make
    for context, watched in made:
        context.close()
        watched.check()


def shot(page, name):
    """Saves a screenshot to target/screenshots/<name>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
