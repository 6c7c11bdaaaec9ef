"""Published OpenFeature clients that nobody here wrote, against real gunicorn (issue 10): the Node server SDK
with @openfeature/ofrep-provider, and the web SDK with @openfeature/ofrep-web-provider in Chromium, served
from a second origin with a client key. The packages are pinned in tests/interop/package.json and its
lock file; .ci/run installs them with `npm ci`. Outside CI the tests skip when they are not installed."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from api.keys import api_key_create
from flags import services
from flags.actors import Actor
from flags.models import Source

HERE = Path(__file__).resolve().parent
FLAG = "patch_mode_enabled"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.django_db(transaction=True)


def _need(ok: bool, why: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI installs it (.ci/run) and requires these tests")
        pytest.skip(why)


@pytest.fixture
def node() -> str:
    path = shutil.which("node")
    _need(path is not None, "Node.js is not installed")
    _need((HERE / "node_modules" / "@openfeature" / "server-sdk").is_dir(),
          "the interop packages are not installed (cd tests/interop && npm ci)")
    return path  # type: ignore[return-value]


@pytest.fixture
def actor() -> Actor:
    return Actor.system("interop")


def test_the_node_server_provider_agrees_with_the_json_endpoint_for_a_thousand_users(servers, flag, actor, node):
    services.flag_set_rollout(flag=FLAG, percentage=37, enabled=True, actor=actor, source=Source.CLI)
    services.override_add(flag=FLAG, user_id="vip", kind="allow", actor=actor, source=Source.CLI)
    secret = api_key_create(name="node-service", scopes="evaluate")[1]
    server = servers()
    users = ["vip", *(f"user-{i}" for i in range(999))]
    run = subprocess.run([node, "node_server.mjs", server.url, secret, FLAG, ",".join(users)], cwd=HERE,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    answers = {answer["user"]: answer for answer in json.loads(run.stdout)}
    status, expected, _ = server.request("POST", "/api/v1/evaluate", {"user_ids": users, "flags": [FLAG]}, secret)
    assert status == 200
    for decision in expected["results"]:
        answer = answers[decision["user_id"]]
        assert answer["errorCode"] is None, answer
        assert answer["value"] is decision["enabled"], (answer, decision)
        assert answer["reason"] == ("TARGETING_MATCH" if decision["reason"] == "ALLOW_LIST" else "SPLIT")
        assert answer["variant"] == ("on" if decision["enabled"] else "off")
    assert 0.30 < sum(a["value"] for a in answers.values()) / len(users) < 0.44  # about 37%


@pytest.mark.parametrize("key", ["no_such_flag", "no/such", "a b"])
def test_the_node_server_provider_reads_an_unknown_flag_as_flag_not_found(servers, flag, node, key):
    secret = api_key_create(name="node-service", scopes="evaluate")[1]
    server = servers()
    run = subprocess.run([node, "node_server.mjs", server.url, secret, key, "user-1"], cwd=HERE,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    [answer] = json.loads(run.stdout)
    assert (answer["value"], answer["errorCode"]) == (False, "FLAG_NOT_FOUND"), answer


# --- the web provider in Chromium, from a second origin -----------------------------------------------------


class _Static(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".html": "text/html"}

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


@pytest.fixture
def second_origin(node):
    """tests/interop served over http on its own port: another origin than rolloutadmin's."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Static, directory=str(HERE)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def page():
    _need(shutil.which(CHROMIUM) is not None, "Chromium is not installed")
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        tab = browser.new_page()
        console: list[str] = []
        tab.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        tab.console_log = console  # type: ignore[attr-defined]
        yield tab
        browser.close()


def _state(page) -> dict:  # type: ignore[no-untyped-def]
    return page.evaluate("() => window.__state")


def _wait(page, predicate, timeout: float = 15.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(page)
        if state and predicate(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"timed out; state {_state(page)}; console {page.console_log[-10:]}")


def test_the_web_provider_on_another_origin_polls_with_304s_and_reports_exactly_the_changed_flag(
        servers, flag, make_flag, actor, page, second_origin):
    make_flag("public_banner", client_side=True)
    make_flag("internal_only")  # server-side: a client key never sees it
    services.flag_update(flag=FLAG, client_side=True, enabled=True, rollout_percentage=100, actor=actor,
                         source=Source.CLI)
    services.flag_set_rollout(flag="public_banner", percentage=0, enabled=True, actor=actor, source=Source.CLI)
    services.flag_set_rollout(flag="internal_only", percentage=100, enabled=True, actor=actor, source=Source.CLI)
    client_key = api_key_create(name="web-app", scopes="client")[1]
    server = servers(CORS_ALLOWED_ORIGINS=second_origin, SNAPSHOT_CHECK_INTERVAL="0.1")
    flags = f"{FLAG},public_banner,internal_only"
    page.goto(f"{second_origin}/web.html?base={server.url}&key={client_key}&user=user-7&flags={flags}&poll=300")
    state = _wait(page, lambda s: s["ready"] or s["errors"])
    assert state["ready"] and not state["errors"], (state, page.console_log)
    assert state["values"] == {FLAG: True, "public_banner": False, "internal_only": False}  # the default: hidden

    # Something the response does not hold changes (an API key, so the server-wide stamp moves): 304s.
    api_key_create(name="another-service", scopes="evaluate")
    time.sleep(1.5)  # several polls
    assert _state(page)["changes"] == []
    # One flag changes: the provider reports exactly that one.
    services.flag_set_rollout(flag="public_banner", percentage=100, enabled=True, actor=actor, source=Source.CLI)
    state = _wait(page, lambda s: s["changes"])
    assert state["changes"] == [["public_banner"]] and state["values"]["public_banner"] is True
    log = server.log.read_text()
    assert " 304 " in log and "POST /ofrep/v1/evaluate/flags 200" in log
    assert not [line for line in page.console_log if line.startswith("error")], page.console_log


def test_a_browser_on_an_origin_not_allowed_gets_nothing(servers, flag, actor, page, second_origin):
    services.flag_update(flag=FLAG, client_side=True, enabled=True, rollout_percentage=100, actor=actor,
                         source=Source.CLI)
    client_key = api_key_create(name="web-app", scopes="client")[1]
    server = servers(CORS_ALLOWED_ORIGINS="https://somewhere-else.example.com")
    page.goto(f"{second_origin}/web.html?base={server.url}&key={client_key}&user=u1&flags={FLAG}&poll=0")
    state = _wait(page, lambda s: s["ready"] or s["errors"])
    assert state["errors"] and not state["ready"]  # the browser refused the cross-origin answer
