"""`roost rules list` and the rules part of `roost check`.

Both load the rule files without running them. Thing names are checked against the things of a hub running
at `hub.listen` (its Web Thing API); with no hub answering they cannot be, and the commands say so.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any

from roost.rules.engine import check_rules
from roost.rules.state import read_saved
from roost.rules.loader import display, load_directory
from roost.things import PropertySpec, Thing, ThingRegistry


def add_rule_commands(add) -> None:
    """Register the subcommands with `add(name, help, description, epilog)` of roost.cli.build_parser."""
    p = add("rules", "list the rules", "List the rules of [rules] directory: each one's sentence, whether it is "
            "enabled and when it last ran (from the running hub, else from the state the hub saved in --data).",
            "example:\n  roost rules list -c roost.toml")
    p.add_argument("action", choices=["list"])
    p.set_defaults(func=cmd_rules)


def _get(url: str, tls: ssl.SSLContext | None):
    """GET with the token in $ROOST_TOKEN, when the hub has access tokens (docs/security.md)."""
    request = urllib.request.Request(url)
    if token := os.environ.get("ROOST_TOKEN"):
        request.add_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(request, timeout=1.5, context=tls)


def _hub_things(url: str, tls: ssl.SSLContext | None = None) -> tuple[ThingRegistry | None, dict[str, dict[str, Any]]]:
    """The things of a hub running at `url` as a registry (None when no hub answers), and their values."""
    try:
        with _get(f"{url}/things", tls) as response:
            descriptions = json.loads(response.read())
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            print(f"note: the hub at {url} refused {'$ROOST_TOKEN' if os.environ.get('ROOST_TOKEN') else 'to answer without a token'}"
                  " — set ROOST_TOKEN to a token of scope read (`roost token create`)", file=sys.stderr)
        return None, {}
    except (OSError, ValueError):
        return None, {}
    registry = ThingRegistry()
    values: dict[str, dict[str, Any]] = {}
    for d in descriptions if isinstance(descriptions, list) else []:
        thing_id = str(d.get("id", "")).rstrip("/").rsplit("/", 1)[-1]
        properties = {
            name: PropertySpec(name, p.get("type", "number"), read_only=bool(p.get("readOnly")),
                               minimum=p.get("minimum"), maximum=p.get("maximum"),
                               enum=tuple(p["enum"]) if "enum" in p else None)
            for name, p in (d.get("properties") or {}).items()
        }
        registry.add(Thing(id=thing_id, title=d.get("title", thing_id), properties=properties))
        if thing_id.startswith("rule-"):
            try:
                with _get(f"{url}/things/{thing_id}/properties", tls) as response:
                    values[thing_id] = json.loads(response.read())
            except (OSError, ValueError):
                pass
    return registry, values


def check(settings) -> tuple[list[str], list[str]]:
    """Problems of the configured rules (file:line: ...) and notes; nothing when no rules are configured."""
    directory = settings.rules.directory
    if directory is None:
        return [], []
    sources, problems = load_directory(directory)
    registry, _ = _hub_things(_hub_url(settings), _tls(settings))
    runtimes, trouble = check_rules(sources, registry, settings.rules.place())
    notes = [f"{display(directory)}: {len(sources)} rule(s)"]
    unresolved = sorted({name for rt in runtimes for name in rt.unresolved})
    if registry is None and unresolved:
        notes.append(f"thing names not checked (no hub answers at {_hub_url(settings)}): {', '.join(unresolved)}")
    return problems + trouble, notes


def _hub_url(settings) -> str:
    host = settings.hub.listen_host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    scheme = "https" if settings.hub.tls_cert_file else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{settings.hub.listen_port}"


def _tls(settings) -> ssl.SSLContext | None:
    """The hub's own certificate as the one to trust (a self-signed one included)."""
    if not settings.hub.tls_cert_file:
        return None
    context = ssl.create_default_context(cafile=str(settings.hub.tls_cert_file))
    context.check_hostname = False  # the certificate names the LAN address; this asks loopback
    return context


def cmd_rules(args: argparse.Namespace) -> int:
    from roost.cli import _settings
    from roost.errors import ConfigError

    settings = _settings(args)
    directory = settings.rules.directory
    if directory is None:
        raise ConfigError("no rules directory: set [rules] directory in the config (-c FILE)")
    sources, problems = load_directory(directory)
    registry, live = _hub_things(_hub_url(settings), _tls(settings))
    runtimes, trouble = check_rules(sources, registry, settings.rules.place())
    saved = read_saved(settings.hub.data)
    for rt in runtimes:
        state = live.get(rt.thing_id) or saved.get(rt.name, {})
        enabled = "enabled " if state.get("enabled", True) else "disabled"
        last = state.get("last_run") or "never"
        print(f"{rt.name:<24} {enabled}  last run {last:<25}  {rt.sentence}")
    for problem in problems + trouble:
        print(f"error: {problem}", file=sys.stderr)
    if not runtimes and not problems:
        print(f"{display(directory)}: no rules", file=sys.stderr)
    return 1 if problems or trouble else 0
