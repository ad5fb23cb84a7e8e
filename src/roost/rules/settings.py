"""`[rules]` in roost.toml: where rule files live, where the house is, and where `notify` sends messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from roost.durations import Duration
from roost.secret import Secret


def _check_timezone(name: str) -> None:
    if name == "":
        return
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'expected a time zone name like "Europe/Berlin", got "{name}"') from None


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """`[[rules.notify]]`: one place `self.notify(...)` sends to, by `name`: a webhook (JSON POST to `webhook`),
    email (to the `email` addresses through `smtp`) or MQTT (to `topic` on the broker at `mqtt`)."""

    name: str
    webhook: str = ""  # https://... or http://...: JSON {"rule", "message", "at", "target"} POSTed
    token: Secret | None = None  # webhook: sent as Authorization: Bearer (or token_file / token_env)
    email: list[str] = field(default_factory=list)  # recipients
    smtp: str = ""  # smtp://host:port (STARTTLS when the server offers it) or smtps://host:port
    smtp_user: str = ""
    smtp_password: Secret | None = None  # or smtp_password_file / smtp_password_env
    sender: str = "roost@localhost"
    mqtt: str = ""  # mqtt://host:port
    topic: str = "roost/notify"
    rate_limit_ms: Duration = field(default=15 * 60_000, metadata={"min": 0})  # per rule: at most one message per
    retries: int = field(default=3, metadata={"min": 0})  # after the first try, waiting retry_wait, doubling
    retry_wait_ms: Duration = field(default=2000, metadata={"min": 0})

    def _validate(self) -> list[str]:
        kinds = [k for k, v in (("webhook", self.webhook), ("email", self.email), ("mqtt", self.mqtt)) if v]
        if len(kinds) != 1:
            return ["give exactly one of webhook, email (with smtp) or mqtt"]
        if self.webhook and urlsplit(self.webhook).scheme not in ("http", "https"):
            return [f'webhook: expected an http:// or https:// URL, got "{self.webhook}"']
        if self.email and urlsplit(self.smtp).scheme not in ("smtp", "smtps"):
            return ['smtp: email needs the server, like "smtp://mail.example.com:587" or "smtps://mail.example.com"']
        if self.mqtt and urlsplit(self.mqtt).scheme != "mqtt":
            return [f'mqtt: expected a broker URL like "mqtt://127.0.0.1:1883", got "{self.mqtt}"']
        return []

    @property
    def kind(self) -> str:
        return "webhook" if self.webhook else "email" if self.email else "mqtt"


@dataclass(frozen=True, slots=True)
class RulesSettings:
    """`[rules]`: the rules directory (none: no rules), the place for sun events and local times, and how many
    failures in a row disable a rule. An empty timezone means the machine's."""

    directory: Path | None = None
    latitude: float = field(default=51.4769, metadata={"min": -90, "max": 90})
    longitude: float = field(default=0.0, metadata={"min": -180, "max": 180})
    timezone: str = field(default="", metadata={"check": _check_timezone})
    max_failures: int = field(default=3, metadata={"min": 1})
    notify: list[NotifySettings] = field(default_factory=list)

    def place(self):
        from roost.rules.clock import Place, system_timezone

        return Place(self.latitude, self.longitude, self.timezone or system_timezone())
