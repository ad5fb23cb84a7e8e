"""Access control against a real hub over HTTP: tokens, scopes, per-thing tokens, the login cookie, WebSockets,
the limit on failed attempts, revocation, the listen guard and TLS (docs/security.md)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import replace
from http.cookies import SimpleCookie

import aiohttp
import pytest
from conftest import ROOT, HubProcess, free_port, hub_settings, roost_cmd, run_roost, wait_port
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from peers import Prometheus
from test_dashboard import Page, browser, browser_only  # noqa: F401  (browser is a fixture)
from yarl import URL

from roost.access import TokenStore, check_listen, is_loopback
from roost.api.auth import COOKIE, CSRF_HEADER, FailureLimiter
from roost.durability.settings import ReplicationSettings
from roost.errors import RoostError
from roost.hub import Hub
from roost.secret import Secret
from roost.selector import Selector
from roost.store import Store
from roost.things import PropertySpec, Thing


def _light(thing_id: str, written: list) -> Thing:
    async def actuate(name, value):
        written.append((thing_id, name, value))

    return Thing(thing_id, thing_id.replace("-", " ").title(), ("Light", "OnOffSwitch"), "",
                 {"on": PropertySpec("on", "boolean", at_type="OnOffProperty")}, actuator=actuate)


@pytest.fixture
async def guarded(tmp_path):
    """A hub on loopback with tokens of every scope and two lights; yields (hub, tokens by name, writes)."""
    data = tmp_path / "data"
    store = TokenStore(data)
    tokens = {name: store.create(name, scope, things)[1] for name, scope, things in (
        ("viewer", "read", ()), ("pusher", "write", ()), ("owner", "admin", ()),
        ("desk-panel", "write", ("desk-lamp",)), ("desk-viewer", "read", ("desk-lamp",)),
    )}
    settings = hub_settings(data)
    settings = replace(settings, replication=ReplicationSettings(token=Secret("replication-secret")))
    written: list = []
    async with Hub(settings) as hub:
        for thing_id in ("desk-lamp", "hall-light"):
            hub.things.add(_light(thing_id, written))
            hub.things.report(thing_id, "on", False)
        yield hub, tokens, written


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def http(guarded):
    hub, _, _ = guarded
    async with aiohttp.ClientSession(base_url=hub.url) as session:
        yield session


# ---------------------------------------------------------------- tokens and scopes


async def test_every_surface_refuses_a_request_without_a_token(http):
    for method, path in (("GET", "/"), ("GET", "/api/series"), ("GET", "/api/query?match=x"), ("GET", "/api/live"),
                         ("GET", "/metrics"), ("GET", "/api/v1/query?query=up"), ("GET", "/things"),
                         ("PUT", "/things/desk-lamp/properties/on"), ("POST", "/write"), ("POST", "/api/v1/write"),
                         ("GET", "/api/replication/base"), ("GET", "/assets/dashboard.js"), ("GET", "/no/such/page")):
        async with http.request(method, path) as r:
            assert r.status == 401, (method, path, r.status)
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="roost"'
            assert "roost token create" in (await r.json())["error"]


async def test_a_hub_on_loopback_without_tokens_asks_for_none(tmp_path):
    async with Hub(hub_settings(tmp_path / "data")) as hub, aiohttp.ClientSession(base_url=hub.url) as http:
        async with http.post("/write?precision=ms", data=b"room_temp value=20.5 1700000000000") as r:
            assert r.status == 204
        async with http.get("/api/series") as r:
            assert r.status == 200 and [s["series"] for s in (await r.json())["series"]] == ["room_temp"]


async def test_an_open_hub_keeps_other_sites_pages_out(tmp_path):
    lamp: list = []
    async with Hub(hub_settings(tmp_path / "data")) as hub, aiohttp.ClientSession(base_url=hub.url) as http:
        hub.things.add(_light("desk-lamp", lamp))
        # A page on another site may POST to 127.0.0.1 without a CORS preflight: its Origin gives it away.
        async with http.post("/write", data=b"fake value=1", headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403 and "cross-origin request from http://evil.example refused" in (await r.json())["error"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect("/things/desk-lamp", origin="http://evil.example")
        assert refused.value.status == 403
        # DNS rebinding: another site's name pointed at 127.0.0.1 makes the browser call it same-origin.
        async with http.get("/api/series", headers={"Host": "evil.example:8080"}) as r:
            assert r.status == 403 and "answers only to loopback names" in (await r.json())["error"]
        async with http.get("/", headers={"Host": "localhost"}) as r:
            assert r.status == 200
            assert r.headers["X-Frame-Options"] == "DENY" and r.headers["X-Content-Type-Options"] == "nosniff"
        async with http.post("/write", data=b"real value=1", headers={"Origin": hub.url}) as r:
            assert r.status == 204  # the hub's own page
        assert [str(s) for _, s in hub.store.series()] == ["real"]


async def test_health_and_the_login_page_need_no_token(http):
    async with http.get("/healthz") as r:
        assert r.status == 200
    async with http.get("/login") as r:
        assert r.status == 200 and 'name="token"' in await r.text()
    async with http.get("/api/replication/status") as r:  # another hub's split-brain guard asks it without a token
        assert r.status == 200 and (await r.json())["role"] == "primary"


async def test_a_browser_without_a_token_is_sent_to_the_login_page(http):
    async with http.get("/?tab=history", headers={"Accept": "text/html"}, allow_redirects=False) as r:
        assert r.status == 303
        location = URL(r.headers["Location"])
        assert location.path == "/login" and location.query["next"] == "/?tab=history"


async def test_a_read_token_reads_everything_and_changes_nothing(guarded, http):
    _, tokens, written = guarded
    for path in ("/", "/api/series", "/metrics", "/api/v1/query?query=up", "/things", "/things/hall-light"):
        async with http.get(path, headers=bearer(tokens["viewer"])) as r:
            assert r.status == 200, path
    async with http.post("/api/v1/query", data={"query": "up"}, headers=bearer(tokens["viewer"])) as r:
        assert r.status == 200  # Prometheus clients may query by POST: still a read
    async with http.put("/things/desk-lamp/properties/on", json={"on": True}, headers=bearer(tokens["viewer"])) as r:
        assert r.status == 403
        assert (await r.json())["error"] == "token 'viewer' has scope read; PUT /things/desk-lamp/properties/on needs write"
    async with http.post("/write", data=b"t value=1", headers=bearer(tokens["viewer"])) as r:
        assert r.status == 403
    assert written == []


async def test_a_write_token_sets_properties_and_pushes_but_is_no_admin(guarded, http):
    hub, tokens, written = guarded
    async with http.put("/things/desk-lamp/properties/on", json={"on": True}, headers=bearer(tokens["pusher"])) as r:
        assert r.status == 200
    assert written == [("desk-lamp", "on", True)]
    async with http.post("/write?precision=ms", data=b"room_temp,room=hall value=20.5 1700000000000",
                         headers={"Authorization": f"Token {tokens['pusher']}"}) as r:
        assert r.status == 204
    async with http.post("/api/v1/write", data=b"not snappy", headers=bearer(tokens["pusher"])) as r:
        assert r.status == 400  # past access control: the body itself is refused
    async with http.get("/api/replication/base", headers=bearer(tokens["pusher"])) as r:
        assert r.status == 403 and "needs admin" in (await r.json())["error"]


async def test_the_influxdb_client_pushes_with_its_token(guarded):
    hub, tokens, _ = guarded

    def push(token: str) -> None:
        with InfluxDBClient(url=hub.url, token=token, org="home") as client:
            client.write_api(write_options=SYNCHRONOUS).write(bucket="b", record="boiler_temp value=61.5")

    await asyncio.to_thread(push, tokens["pusher"])
    with pytest.raises(ApiException) as refused:
        await asyncio.to_thread(push, "roost_not-a-token")
    assert refused.value.status == 401
    assert [str(s) for _, s in hub.store.series()] == ["boiler_temp"]


async def test_http_basic_with_the_token_as_password_is_accepted(guarded, http):
    _, tokens, _ = guarded
    basic = base64.b64encode(f"telegraf:{tokens['pusher']}".encode()).decode()
    async with http.post("/write", data=b"t value=1", headers={"Authorization": f"Basic {basic}"}) as r:
        assert r.status == 204


async def test_replication_takes_its_own_token_or_an_admin_token(guarded, http):
    _, tokens, _ = guarded
    for token in ("replication-secret", tokens["owner"]):
        async with http.get("/api/replication/base", headers=bearer(token)) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"] == "application/x-tar"
            await r.read()
    async with http.get("/api/replication/base", headers=bearer("wrong")) as r:
        assert r.status == 401


async def test_a_revoked_token_is_refused_from_the_next_request(guarded, http, tmp_path):
    _, tokens, _ = guarded
    async with http.get("/api/series", headers=bearer(tokens["viewer"])) as r:
        assert r.status == 200
    run_roost("token", "revoke", "viewer", "--data", str(tmp_path / "data"))
    async with http.get("/api/series", headers=bearer(tokens["viewer"])) as r:
        assert r.status == 401 and (await r.json())["error"] == "unknown or revoked token"


async def test_an_unreadable_tokens_file_closes_the_hub_rather_than_opening_it(guarded, http, tmp_path):
    _, tokens, _ = guarded
    (tmp_path / "data" / "tokens.json").write_text("{ not json")
    async with http.get("/api/series", headers=bearer(tokens["owner"])) as r:
        assert r.status == 503 and "tokens file" in (await r.json())["error"]
    listed = run_roost("token", "list", "--data", str(tmp_path / "data"), check=False)
    assert listed.returncode == 1 and "not a roost tokens file" in listed.stderr


async def test_revoking_a_token_closes_its_open_websockets_and_live_streams(guarded, http, tmp_path):
    _, tokens, _ = guarded
    async with http.ws_connect("/things/desk-lamp", headers=bearer(tokens["viewer"])) as ws, \
            http.ws_connect("/things/desk-lamp", headers=bearer(tokens["pusher"])) as other, \
            http.get("/api/live", headers=bearer(tokens["viewer"])) as live:
        assert (await live.content.readuntil(b"\n\n")).startswith(b"retry: 3000\nevent: snapshot")
        TokenStore(tmp_path / "data").revoke("viewer")
        message = await ws.receive(timeout=10)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        with pytest.raises(aiohttp.ClientPayloadError):  # the stream is cut; EventSource reconnects, gets 401
            await asyncio.wait_for(live.content.read(), 10)
        assert not other.closed  # another token's WebSocket stays open
        await other.send_json({"messageType": "setProperty", "data": {"on": True}})
        assert await next_message(other, "propertyStatus") == {"on": True}


async def test_revoking_every_token_leaves_a_hub_that_refuses_beyond_loopback(tmp_path):
    data = tmp_path / "data"
    TokenStore(data).create("only", "read")
    check_listen("0.0.0.0", 8080, data)  # a token exists: allowed
    TokenStore(data).revoke("only")
    with pytest.raises(RoostError, match="no access token exists"):
        check_listen("0.0.0.0", 8080, data)


# ---------------------------------------------------------------- per-thing tokens


async def test_a_thing_token_sees_and_sets_only_its_things(guarded, http):
    _, tokens, written = guarded
    panel = bearer(tokens["desk-panel"])
    async with http.get("/things", headers=panel) as r:
        assert [t["title"] for t in await r.json()] == ["Desk Lamp"]
    async with http.put("/things/desk-lamp/properties/on", json={"on": True}, headers=panel) as r:
        assert r.status == 200
    for method, path in (("GET", "/things/hall-light"), ("GET", "/things/hall-light/properties"),
                         ("PUT", "/things/hall-light/properties/on"), ("GET", "/api/series"), ("GET", "/metrics"),
                         ("GET", "/api/live"), ("GET", "/")):
        async with http.request(method, path, json={"on": True}, headers=panel) as r:
            assert r.status == 403, (method, path)
            assert "limited to the things desk-lamp" in (await r.json())["error"]
    assert written == [("desk-lamp", "on", True)]


async def next_message(ws, kind: str) -> dict:
    while True:
        message = await ws.receive_json(timeout=5)
        if message["messageType"] == kind:
            return message["data"]


async def test_websockets_need_a_token_and_a_read_token_cannot_write_over_one(guarded, http):
    hub, tokens, written = guarded
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect("/things/desk-lamp")
    assert refused.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect("/things/hall-light", headers=bearer(tokens["desk-viewer"]))
    assert refused.value.status == 403
    async with http.ws_connect("/things/desk-lamp", headers=bearer(tokens["desk-viewer"])) as ws:
        await ws.send_json({"messageType": "setProperty", "data": {"on": True}})
        error = await next_message(ws, "error")
        assert error["status"] == "403 Forbidden" and "writes need scope write" in error["message"]
        hub.things.report("desk-lamp", "on", True)  # reads still flow
        assert await next_message(ws, "propertyStatus") == {"on": True}
    async with http.ws_connect("/things/desk-lamp", headers=bearer(tokens["desk-panel"])) as ws:
        await ws.send_json({"messageType": "setProperty", "data": {"on": False}})
        assert await next_message(ws, "propertyStatus") == {"on": False}
    assert written == [("desk-lamp", "on", False)]


# ---------------------------------------------------------------- the dashboard's login cookie


async def _login(http, token: str) -> tuple[aiohttp.ClientResponse, SimpleCookie]:
    async with http.post("/login", data={"token": token, "next": "/?tab=things"}, allow_redirects=False) as r:
        cookie = SimpleCookie()
        for header in r.headers.getall("Set-Cookie", []):
            cookie.load(header)
        return r, cookie


async def test_login_sets_an_httponly_strict_cookie_that_opens_the_dashboard(guarded, http):
    hub, tokens, _ = guarded
    r, cookie = await _login(http, tokens["viewer"])
    assert r.status == 303 and r.headers["Location"] == "/?tab=things"
    morsel = cookie[COOKIE]
    assert morsel["httponly"] is True and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert not morsel["secure"]  # plain HTTP here; over TLS it is Secure (test_tls_...)
    jar = {"Cookie": f"{COOKIE}={morsel.value}"}
    for path in ("/", "/api/series", "/things"):
        async with http.get(path, headers=jar) as resp:
            assert resp.status == 200, path


async def test_login_with_a_wrong_token_shows_the_form_again(http):
    r, cookie = await _login(http, "roost_wrong")
    assert r.status == 401 and COOKIE not in cookie


async def test_a_change_made_with_the_cookie_needs_the_dashboard_header_and_its_own_origin(guarded, http):
    hub, tokens, written = guarded
    _, cookie = await _login(http, tokens["pusher"])
    jar = {"Cookie": f"{COOKIE}={cookie[COOKIE].value}"}
    url = "/things/desk-lamp/properties/on"
    async with http.put(url, json={"on": True}, headers=jar) as r:
        assert r.status == 403 and CSRF_HEADER in (await r.json())["error"]
    origin = hub.url
    async with http.put(url, json={"on": True}, headers={**jar, CSRF_HEADER: "1", "Origin": "http://evil.example"}) as r:
        assert r.status == 403 and "cross-origin" in (await r.json())["error"]
    assert written == []
    async with http.put(url, json={"on": True}, headers={**jar, CSRF_HEADER: "1", "Origin": origin}) as r:
        assert r.status == 200
    assert written == [("desk-lamp", "on", True)]


async def test_the_dashboards_rule_preview_is_a_read_a_viewers_cookie_may_make(guarded, http):
    hub, tokens, _ = guarded
    url = "/api/rules/Porch/preview?since=24h"
    async with http.get(url) as r:
        assert r.status == 401
    _, cookie = await _login(http, tokens["viewer"])
    async with http.get(url, headers={"Cookie": f"{COOKIE}={cookie[COOKIE].value}"}) as r:  # no CSRF header: a GET
        assert r.status == 404 and "no rule named 'Porch'" in (await r.json())["error"]  # past access control
    async with http.get(url, headers=bearer(tokens["desk-viewer"])) as r:
        assert r.status == 403 and "limited to the things" in (await r.json())["error"]


async def test_a_websocket_opened_with_the_cookie_must_come_from_the_hubs_own_page(guarded, http):
    hub, tokens, _ = guarded
    _, cookie = await _login(http, tokens["viewer"])
    jar = {"Cookie": f"{COOKIE}={cookie[COOKIE].value}"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect("/things/desk-lamp", headers=jar, origin="http://evil.example")
    assert refused.value.status == 403
    async with http.ws_connect("/things/desk-lamp", headers=jar, origin=hub.url) as ws:
        hub.things.report("desk-lamp", "on", True)
        assert await next_message(ws, "propertyStatus") == {"on": True}


# ---------------------------------------------------------------- failed attempts


async def test_failed_attempts_are_limited_per_client_and_logged_without_the_token(guarded, http, caplog):
    _, tokens, _ = guarded
    caplog.set_level(logging.WARNING, "roost.api.auth")
    guesses = [f"roost_guess{i:02d}" for i in range(10)]
    for guess in guesses:
        async with http.get("/api/series", headers=bearer(guess)) as r:
            assert r.status == 401
    async with http.get("/api/series", headers=bearer(tokens["viewer"])) as r:
        assert r.status == 429  # even a right token: the address is refused until its bucket refills
        assert 1 <= int(r.headers["Retry-After"]) <= 6
        assert "too many failed attempts from 127.0.0.1" in (await r.json())["error"]
    r, _ = await _login(http, tokens["viewer"])
    assert r.status == 429
    assert "refused GET /api/series from 127.0.0.1: unknown or revoked token" in caplog.text
    assert "too many failed attempts from 127.0.0.1" in caplog.text
    assert not any(guess in caplog.text for guess in guesses)


def test_the_failure_bucket_refills_and_is_per_client():
    now = [0.0]
    limiter = FailureLimiter(burst=3, refill_s=5.0, clock=lambda: now[0], max_clients=2)
    assert [limiter.failed("a") for _ in range(3)] == [False, False, True]
    assert limiter.retry_after("a") == pytest.approx(5.0)
    assert limiter.retry_after("b") == 0
    now[0] = 5.0
    assert limiter.retry_after("a") == 0  # one attempt back
    limiter.failed("b")
    limiter.failed("c")  # a third client: the least recently failed one ("a") is forgotten
    assert limiter.retry_after("a") == 0 and "a" not in limiter._buckets


# ---------------------------------------------------------------- where the hub listens


def test_the_hub_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    refused = run_roost("run", "--data", str(tmp_path / "data"), "--listen", "0.0.0.0:0", check=False)
    assert refused.returncode == 1
    assert "0.0.0.0:0 is reachable from other machines and no access token exists" in refused.stderr
    assert f"roost token create --name NAME --scope admin --data {tmp_path / 'data'}" in refused.stderr


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.10", False), ("roost.lan", False)])
def test_which_hosts_count_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_token_commands_store_hashes_only_and_show_the_secret_once(tmp_path):
    data = tmp_path / "data"
    made = run_roost("token", "create", "--name", "phone", "--scope", "read", "--things", "a,b", "--data", str(data))
    secret = made.stdout.strip()
    assert secret.startswith("roost_") and len(secret) == 49
    tokens_file = data / "tokens.json"
    assert secret not in tokens_file.read_text()
    assert tokens_file.stat().st_mode & 0o777 == 0o600
    listed = run_roost("token", "list", "--data", str(data)).stdout
    assert "phone" in listed and "a,b" in listed and secret not in listed
    again = run_roost("token", "create", "--name", "phone", "--scope", "read", "--data", str(data), check=False)
    assert again.returncode == 1 and "a token named 'phone' exists" in again.stderr
    bad = run_roost("token", "create", "--name", "x", "--scope", "root", "--data", str(data), check=False)
    assert bad.returncode == 2 and "invalid choice: 'root'" in bad.stderr
    assert TokenStore(data).find(secret).name == "phone"


# ---------------------------------------------------------------- TLS


@pytest.fixture
def certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


async def test_tls_round_trip_with_a_secure_login_cookie(tmp_path, certificate):
    cert, key = certificate
    data = tmp_path / "data"
    secret = TokenStore(data).create("phone", "read")[1]
    settings = hub_settings(data)
    settings = replace(settings, hub=replace(settings.hub, tls_cert_file=cert, tls_key_file=key))
    trust = ssl.create_default_context(cafile=str(cert))
    async with Hub(settings) as hub:
        assert hub.url.startswith("https://127.0.0.1:")
        async with aiohttp.ClientSession(base_url=hub.url, connector=aiohttp.TCPConnector(ssl=trust)) as https:
            async with https.get("/api/series", headers=bearer(secret)) as r:
                assert r.status == 200
            r, cookie = await _login(https, secret)
            assert r.status == 303 and cookie[COOKIE]["secure"] is True
        async with aiohttp.ClientSession(base_url=hub.url.replace("https", "http")) as plain:
            with pytest.raises(aiohttp.ClientError):
                await plain.get("/healthz")


def test_a_config_with_only_half_of_the_tls_pair_is_refused(tmp_path):
    config = tmp_path / "roost.toml"
    config.write_text('[hub]\ntls_cert_file = "cert.pem"\n')
    checked = run_roost("check", "-c", str(config), check=False)
    assert checked.returncode == 2
    assert "roost.toml:1: hub: give both tls_cert_file and tls_key_file, or neither" in checked.stderr


def test_rules_list_asks_a_hub_with_tokens_with_the_token_in_roost_token(tmp_path, monkeypatch):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "porch.py").write_text(
        "from roost.rules import Rule, SunTrigger\n\n\nclass PorchLight(Rule):\n    \"\"\"Porch light at dusk.\"\"\"\n\n"
        "    def register_triggers(self):\n        return (SunTrigger(\"dusk\", offset=\"-15m\"),)\n"
    )
    place = '[rules]\ndirectory = "rules"\nlatitude = 52.52\nlongitude = 13.4\ntimezone = "Europe/Berlin"\n'
    (tmp_path / "hub.toml").write_text(place)
    data = tmp_path / "data"
    secret = TokenStore(data).create("cli", "read")[1]
    hub = HubProcess(data, "-c", str(tmp_path / "hub.toml"))
    try:
        (tmp_path / "cli.toml").write_text(place + f'[hub]\nlisten = "127.0.0.1:{hub.port}"\n')
        args = ("rules", "list", "-c", str(tmp_path / "cli.toml"), "--data", str(data))
        monkeypatch.delenv("ROOST_TOKEN", raising=False)
        without = run_roost(*args, cwd=tmp_path)
        assert f"the hub at http://127.0.0.1:{hub.port} refused to answer without a token" in without.stderr
        monkeypatch.setenv("ROOST_TOKEN", secret)
        with_token = run_roost(*args, cwd=tmp_path)
        assert with_token.stderr == ""
        assert with_token.stdout.split() == "PorchLight enabled last run never Porch light at dusk.".split()
    finally:
        hub.kill(15)


# ---------------------------------------------------------------- a real standby


@pytest.mark.parametrize("credential", ["replication", "admin"])
def test_a_standby_follows_a_primary_with_tokens(tmp_path, credential):
    """`roost standby` with the [replication] token, or with a hub token of scope admin, while writes need a token."""
    primary_data, standby_data = tmp_path / "primary", tmp_path / "standby"
    (tmp_path / "replication-token").write_text("s3cret-replication\n")
    (tmp_path / "primary.toml").write_text('[replication]\ntoken_file = "replication-token"\nmode = "sync"\n')
    store = TokenStore(primary_data)
    writer = store.create("meter", "write")[1]
    token_file = tmp_path / "replication-token"
    if credential == "admin":
        token_file = tmp_path / "admin-token"
        token_file.write_text(store.create("standby", "admin")[1] + "\n")
    primary = HubProcess(primary_data, "-c", str(tmp_path / "primary.toml"))
    port = free_port()
    log = open(tmp_path / "standby.log", "w")
    standby = subprocess.Popen(
        roost_cmd("standby", "--primary", primary.url, "--token-file", str(token_file), "--data", str(standby_data),
                  "--listen", f"127.0.0.1:{port}"),
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, standby, tmp_path / "standby.log", timeout=60)
        status_url = f"http://127.0.0.1:{port}/api/replication/status"
        deadline = time.monotonic() + 60
        while not json.loads(urllib.request.urlopen(status_url, timeout=10).read()).get("caught_up"):
            assert standby.poll() is None and time.monotonic() < deadline, (tmp_path / "standby.log").read_text()
            time.sleep(0.05)
        body = b"".join(b"boiler_temp value=%d %d\n" % (i, 1_700_000_000_000 + i * 1000) for i in range(5))
        push = urllib.request.Request(primary.url + "/write?precision=ms", body, headers=bearer(writer), method="POST")
        assert urllib.request.urlopen(push, timeout=30).status == 204  # sync mode: the standby has it durably now
        refused = urllib.request.Request(primary.url + "/write?precision=ms", body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as no_token:
            urllib.request.urlopen(refused, timeout=30)
        assert no_token.value.code == 401
    finally:
        standby.send_signal(signal.SIGTERM)
        standby.wait(timeout=30)
        log.close()
        primary.kill(15)
    assert "refused" not in (tmp_path / "standby.log").read_text()
    with Store.open(standby_data, writer=False) as replica:
        (series,) = replica.read(Selector.parse("boiler_temp"), 0, 2**62)
        assert series.values.tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- a real Prometheus


async def test_prometheus_scrapes_and_remote_writes_with_a_token(guarded, http, tmp_path):
    hub, tokens, _ = guarded
    (tmp_path / "roost.token").write_text(tokens["pusher"] + "\n")
    target = hub.url.removeprefix("http://")
    config = f"""
global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: roost
    authorization: {{credentials_file: {tmp_path / 'roost.token'}}}
    static_configs: [{{targets: ["{target}"]}}]
  - job_name: anonymous
    static_configs: [{{targets: ["{target}"]}}]
remote_write:
  - url: {hub.url}/api/v1/write
    authorization: {{credentials_file: {tmp_path / 'roost.token'}}}
    queue_config: {{batch_send_deadline: 1s, min_backoff: 100ms}}
"""
    prometheus = Prometheus(tmp_path / "prom", config)
    try:
        deadline = time.monotonic() + 60
        up: dict = {}
        while time.monotonic() < deadline and len(up) < 2:
            async with http.get(prometheus.url + "/api/v1/query", params={"query": "up"}) as r:
                up = {s["metric"]["job"]: s["value"][1] for s in (await r.json())["data"]["result"]}
            await asyncio.sleep(0.2)
        assert up == {"roost": "1", "anonymous": "0"}  # the scrape without a token is refused
        stored: list = []
        while time.monotonic() < deadline and not stored:  # what Prometheus scraped comes back by remote write
            async with http.get("/api/v1/query", params={"query": 'up{job="roost"}'}, headers=bearer(tokens["viewer"])) as r:
                stored = (await r.json())["data"]["result"]
            await asyncio.sleep(0.2)
        assert stored and stored[0]["value"][1] == "1"
    finally:
        prometheus.stop()


# ---------------------------------------------------------------- the dashboard in a browser (last: Playwright's
# synchronous API keeps an event loop running in this thread while the browser is open)


@pytest.fixture(scope="module")
def guarded_demo(tmp_path_factory):
    """`roost demo` as a process whose data directory has a write token; yields (hub, token, data directory)."""
    data = tmp_path_factory.mktemp("guarded-demo") / "data"
    secret = TokenStore(data).create("kitchen-tablet", "write")[1]
    TokenStore(data).create("spare", "read")  # with no token left, a hub on loopback is open again
    hub = HubProcess(data, "--backfill", "1h", "--no-mqtt", command="demo")
    yield hub, secret, data
    hub.kill(15)


@browser_only
def test_the_dashboard_logs_in_once_switches_a_light_and_leaves_when_its_token_is_revoked(browser, guarded_demo):
    hub, secret, data = guarded_demo
    page = Page(browser, hub.url)
    p = page.open()
    p.wait_for_url(f"{hub.url}/login?next=/")
    p.get_by_label("Access token").fill("roost_wrong")
    p.get_by_role("button", name="Log in").click()
    assert p.get_by_role("alert").text_content() == "Unknown or revoked token."
    assert page.errors == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]
    page.errors.clear()  # that 401 was the point
    p.get_by_label("Access token").fill(secret)
    p.get_by_role("button", name="Log in").click()
    p.wait_for_url(f"{hub.url}/")
    cookie, = [c for c in p.context.cookies() if c["name"] == COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert p.evaluate("document.cookie") == ""  # out of reach of the page's scripts

    p.goto(f"{hub.url}/#things")  # the switch writes with the cookie and X-Roost-Request; reads come over the WebSocket
    p.wait_for_selector("#things-list[data-state=ready] [data-thing=kettle-plug]", timeout=30_000)
    switch = p.get_by_role("switch", name="Kettle Plug On")
    before = switch.get_attribute("aria-checked")
    switch.click()
    p.wait_for_function("() => !document.querySelector('[data-thing=kettle-plug] [data-property=on]').hasAttribute('aria-busy')")
    want = before != "true"
    assert switch.get_attribute("aria-checked") == str(want).lower()
    request = urllib.request.Request(f"{hub.url}/things/kettle-plug/properties/on", headers=bearer(secret))
    assert json.loads(urllib.request.urlopen(request, timeout=5).read()) == {"on": want}
    assert page.errors == [] and page.foreign == []  # nothing fetched beyond the hub

    run_roost("token", "revoke", "kitchen-tablet", "--data", str(data))
    # Its open live stream and WebSockets are closed; the stream's reconnect is refused; back to the login page.
    p.wait_for_url(f"{hub.url}/login?next=%2F", timeout=20_000)
    assert p.get_by_label("Access token").is_visible()
    page.errors.clear()  # the refused reconnects
    page.close()
