"""`self.notify("...")` in a rule: a message to a webhook, by email, or over MQTT, as `[[rules.notify]]` names them.

- At most one message per rule and target within the target's `rate_limit` (15 minutes unless set; measured on
  the rules' clock): a message inside it is dropped, logged at INFO.
- Sending runs as a task of its own (the rule does not wait), tried `retries` more times after a failure,
  waiting `retry_wait` (doubling) between tries. A message that still failed is logged as an ERROR and emitted
  as the rule thing's `notifyFailed` event.
- Webhook: a JSON POST of {"rule", "message", "at", "target"}, any 2xx is success; email: over SMTP (STARTTLS
  when the server offers it on smtp://, TLS from the start on smtps://), in a worker thread (smtplib);
  MQTT: the same JSON published with QoS 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import ssl
from collections.abc import Callable
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from roost.rules.settings import NotifySettings

log = logging.getLogger("roost.rules")

__all__ = ["Notifier"]


class Notifier:
    """The configured targets; `send` is what `Rule.notify` calls. `failed(rule, target, message, error)` is
    called when a message could not be delivered (the engine emits the rule thing's event)."""

    def __init__(self, targets: list[NotifySettings], *, spawn: Callable, now: Callable[[], datetime],
                 failed: Callable[[str, str, str, str], None] | None = None):
        self.targets = {t.name: t for t in targets}
        self._spawn = spawn
        self._now = now
        self._failed = failed
        self._last: dict[tuple[str, str], datetime] = {}  # (rule, target) → when a message last went out
        self.sent = 0
        self.dropped = 0

    def send(self, rule: str, message: str, to: str | None = None) -> list[str]:
        """Queue `message` from `rule` for target `to` (every target when None); returns the targets it goes to."""
        names = [to] if to is not None else list(self.targets)
        going = []
        now = self._now()
        for name in names:
            target = self.targets[name]
            last = self._last.get((rule, name))
            if last is not None and now - last < timedelta(milliseconds=target.rate_limit_ms):
                self.dropped += 1
                log.info("rule %s: notify %s dropped: one message per %s (the last at %s): %s", rule, name,
                         _spoken(target.rate_limit_ms), last.isoformat(timespec="seconds"), message)
                continue
            self._last[(rule, name)] = now
            self._dispatch(target, rule, message, now)
            going.append(name)
        return going

    def _dispatch(self, target: NotifySettings, rule: str, message: str, at: datetime) -> None:
        self._spawn(self._deliver(target, rule, message, at), f"notify-{target.name}")

    async def _deliver(self, target: NotifySettings, rule: str, message: str, at: datetime) -> None:
        payload = {"rule": rule, "message": message, "at": at.isoformat(timespec="seconds"), "target": target.name}
        wait = target.retry_wait_ms / 1000
        for attempt in range(target.retries + 1):
            try:
                await _SENDERS[target.kind](target, payload)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                error = f"{type(err).__name__}: {err}"
                if attempt < target.retries:
                    log.warning("rule %s: notify %s failed (%s); trying again in %.1f s", rule, target.name, error, wait)
                    await asyncio.sleep(wait)
                    wait *= 2
                    continue
                log.error("rule %s: notify %s failed after %d tries (%s): %s", rule, target.name, attempt + 1, error, message)
                if self._failed is not None:
                    self._failed(rule, target.name, message, error)
                return
            self.sent += 1
            return


async def _webhook(target: NotifySettings, payload: dict[str, Any]) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {target.token.reveal()}"} if target.token is not None else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.post(target.webhook, json=payload, headers=headers) as response:
            if not 200 <= response.status < 300:
                raise OSError(f"{target.webhook} answered {response.status} {response.reason}")


async def _email(target: NotifySettings, payload: dict[str, Any]) -> None:
    mail = EmailMessage()
    mail["From"] = target.sender
    mail["To"] = ", ".join(target.email)
    first = payload["message"].splitlines()[0] if payload["message"] else ""
    mail["Subject"] = f"roost: {payload['rule']}: {first}"[:200]
    mail.set_content(f"{payload['message']}\n\n— rule {payload['rule']}, {payload['at']}\n")
    await asyncio.to_thread(_smtp_send, target, mail)


def _smtp_send(target: NotifySettings, mail: EmailMessage) -> None:
    url = urlsplit(target.smtp)
    host = url.hostname or "localhost"
    if url.scheme == "smtps":
        client: smtplib.SMTP = smtplib.SMTP_SSL(host, url.port or 465, timeout=20, context=ssl.create_default_context())
    else:
        client = smtplib.SMTP(host, url.port or 25, timeout=20)
    with client:
        client.ehlo()
        if url.scheme == "smtp" and client.has_extn("starttls"):
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if target.smtp_user:
            client.login(target.smtp_user, target.smtp_password.reveal() if target.smtp_password else "")
        client.send_message(mail)


async def _mqtt(target: NotifySettings, payload: dict[str, Any]) -> None:
    import aiomqtt

    url = urlsplit(target.mqtt)
    async with aiomqtt.Client(url.hostname or "localhost", url.port or 1883, timeout=10) as client:
        await client.publish(target.topic, json.dumps(payload), qos=1)


_SENDERS = {"webhook": _webhook, "email": _email, "mqtt": _mqtt}


def _spoken(ms: int) -> str:
    from roost.durations import format_duration_ms

    return format_duration_ms(ms)
