"""`self.notify(...)` from rules: to a webhook, by email (aiosmtpd) and over MQTT (mosquitto), all on 127.0.0.1;
rate limits, retries, failures as events."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from datetime import timedelta

import pytest
from aiohttp import web

from roost.rules import Changed, Rule, RuleError
from roost.rules.settings import NotifySettings
from roost.secret import Secret
from roost.testing import FakeThing, RuleHarness


class Leak(Rule):
    """Water in the cellar: tell someone."""

    target = None

    def register_triggers(self):
        return (Changed(self.Water_Sensor, "wet"),)

    def action(self, *args):
        if self.Water_Sensor.wet:
            self.notify("Water in the cellar", to=self.target)


def sensor():
    return FakeThing("Water Sensor", wet=False)


async def until(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what}: not within {timeout:g} s")


async def leak(house, wet: bool = True):
    await house.change("Water Sensor", wet=not wet)
    await house.change("Water Sensor", wet=wet)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def webhook():
    """A webhook receiver on 127.0.0.1 that fails its first request with 500."""
    received: list[tuple[dict, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.json(), request.headers.get("Authorization", "")))
        return web.Response(status=500 if len(received) == 1 else 204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hook", received
    await runner.cleanup()


async def test_a_webhook_gets_the_message_as_json_after_a_retry_and_at_most_once_per_15_minutes(webhook):
    url, received = webhook
    phone = NotifySettings("phone", webhook=url, token=Secret("hook-token"), retry_wait_ms=50)
    async with RuleHarness(Leak, things=[sensor()], notify=[phone], start="2024-03-06 12:00") as house:
        await leak(house)
        await until(lambda: len(received) == 2, "the first try and its retry")
        body, authorization = received[1]
        assert body == {"rule": "Leak", "message": "Water in the cellar", "at": "2024-03-06T11:00:00+00:00", "target": "phone"}
        assert authorization == "Bearer hook-token" and received[0] == received[1]
        await house.clock.advance("14m")
        await leak(house)  # within 15 minutes of the last: dropped
        await asyncio.sleep(0.3)
        assert len(received) == 2
        await house.clock.advance("1m")
        await leak(house)
        await until(lambda: len(received) == 3, "the message after the rate limit")
        assert house.engine.notifier.dropped == 1 and house.engine.notifier.sent == 2


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # a loopback test server
async def test_an_email_goes_through_smtp_with_a_password_from_a_file(tmp_path):
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    from roost.config import load_config

    mails = []

    class Inbox:
        async def handle_DATA(self, server, session, envelope):
            mails.append((envelope.mail_from, envelope.rcpt_tos, envelope.content.decode()))
            return "250 OK"

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (auth_data.login, auth_data.password) == (b"roost", b"mail-secret")
        return AuthResult(success=ok)

    port = free_port()
    smtpd = Controller(Inbox(), hostname="127.0.0.1", port=port, authenticator=authenticate, auth_require_tls=False,
                       auth_required=True)
    smtpd.start()
    try:
        (tmp_path / "smtp-password").write_text("mail-secret\n")
        (tmp_path / "roost.toml").write_text(
            f'[[rules.notify]]\nname = "me"\nemail = ["me@example.com"]\nsmtp = "smtp://127.0.0.1:{port}"\n'
            f'smtp_user = "roost"\nsmtp_password_file = "smtp-password"\nsender = "hub@example.com"\n')
        targets = load_config(tmp_path / "roost.toml").rules.notify
        assert "mail-secret" not in repr(targets)
        async with RuleHarness(Leak, things=[sensor()], notify=targets) as house:
            await leak(house)
            await until(lambda: mails, "the mail")
    finally:
        smtpd.stop()
    sender, recipients, text = mails[0]
    assert (sender, recipients) == ("hub@example.com", ["me@example.com"])
    assert "Subject: roost: Leak: Water in the cellar" in text and "Water in the cellar\r\n\r\n— rule Leak," in text


async def test_an_mqtt_target_publishes_the_message(tmp_path):
    from test_mqtt import Mosquitto

    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        panel = NotifySettings("panel", mqtt=broker.url, topic="house/alerts")
        async with broker.client() as client, RuleHarness(Leak, things=[sensor()], notify=[panel]) as house:
            await client.subscribe("house/alerts", qos=1)
            await leak(house)
            message = await asyncio.wait_for(anext(aiter(client.messages)), 10)
        assert json.loads(message.payload)["message"] == "Water in the cellar"
    finally:
        broker.stop()


async def test_a_message_that_cannot_be_sent_is_logged_and_emitted_as_the_rules_event(caplog):
    dead = NotifySettings("phone", webhook=f"http://127.0.0.1:{free_port()}/hook", retries=2, retry_wait_ms=10)
    async with RuleHarness(Leak, things=[sensor()], notify=[dead]) as house:
        await leak(house)
        await until(lambda: house.registry.event_log("rule-Leak", "notifyFailed"), "the failure event")
        event = house.registry.event_log("rule-Leak", "notifyFailed")[0]
    assert event.data["target"] == "phone" and event.data["message"] == "Water in the cellar"
    assert "ClientConnectorError" in event.data["error"] or "Connect" in event.data["error"]
    assert "rule Leak: notify phone failed after 3 tries" in caplog.text
    assert house.rule("Leak").failures == 0  # a target that is down is not the rule's failure


async def test_notify_names_a_configured_target(caplog):
    class Typo(Leak):
        target = "phnoe"

    phone = NotifySettings("phone", webhook="http://127.0.0.1:9/hook")
    async with RuleHarness(Typo, things=[sensor()], notify=[phone]) as house:
        await leak(house)
    assert "notify: no target named 'phnoe' (did you mean \"phone\"?)" in caplog.text
    async with RuleHarness(Leak, things=[sensor()]) as house:
        await leak(house)
    assert "notify: no [[rules.notify]] target in the config" in caplog.text


def test_a_target_is_exactly_one_kind(tmp_path):
    from roost.config import load_config
    from roost.errors import ConfigError

    (tmp_path / "roost.toml").write_text('[[rules.notify]]\nname = "x"\nwebhook = "http://a"\nmqtt = "mqtt://b"\n')
    with pytest.raises(ConfigError, match="give exactly one of webhook, email"):
        load_config(tmp_path / "roost.toml")


async def test_a_preview_shows_the_messages_without_sending_them():
    from datetime import datetime, timezone

    from roost.rules.clock import Place
    from roost.rules.loader import RuleSource
    from roost.rules.preview import preview

    class Daily(Rule):
        """A reminder every morning."""

        def register_triggers(self):
            from roost.rules import AbsoluteTimeTrigger

            return (AbsoluteTimeTrigger("07:00"),)

        def action(self, *args):
            self.notify("Take the bins out", to="phone")
            self.notify("and again", to="phone")  # within the rate limit: not sent

    phone = NotifySettings("phone", webhook="http://127.0.0.1:9/never")
    start = datetime(2024, 3, 6, tzinfo=timezone.utc)
    result = await preview(RuleSource(Daily, None, 1), things=[], history=lambda *a: (), start=start,
                           end=start + timedelta(days=2), place=Place(timezone="UTC"), notify=[phone])
    assert [(s.at.isoformat(), s.action, s.sentence) for s in result.steps] == [
        ("2024-03-06T07:00:00+00:00", "notify phone: Take the bins out", "At 07:00: notify phone: Take the bins out"),
        ("2024-03-07T07:00:00+00:00", "notify phone: Take the bins out", "At 07:00: notify phone: Take the bins out"),
    ]


async def test_a_running_hub_notifies_from_its_config(tmp_path, webhook):
    """`roost run` with a [[rules.notify]] webhook: a threshold rule's message arrives (after one retry)."""
    import textwrap
    import urllib.request

    from conftest import HubProcess

    url, received = webhook
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "leak.py").write_text(textwrap.dedent('''
        from roost.rules import Rule, Threshold

        class CellarLeak(Rule):
            """Water in the cellar."""

            def register_triggers(self):
                return (Threshold('water_detected{room="cellar"} > 0'),)

            def action(self, *args):
                self.notify("Water in the cellar")
    '''))
    (tmp_path / "token").write_text("hub-hook-token\n")
    config = tmp_path / "roost.toml"
    config.write_text(f'[rules]\ndirectory = "rules"\n[[rules.notify]]\nname = "phone"\nwebhook = "{url}"\n'
                      f'token_file = "token"\nretry_wait = "100ms"\n')
    hub = await asyncio.to_thread(HubProcess, tmp_path / "data", "-c", str(config))
    try:
        request = urllib.request.Request(hub.url + "/write", data=b"water_detected,room=cellar value=1\n", method="POST")
        await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=10).read())
        await until(lambda: len(received) == 2, "the message and its retry", timeout=20)
    finally:
        await asyncio.to_thread(hub.kill, 9)
    body, authorization = received[1]
    assert (body["rule"], body["message"], body["target"], authorization) == (
        "CellarLeak", "Water in the cellar", "phone", "Bearer hub-hook-token")
