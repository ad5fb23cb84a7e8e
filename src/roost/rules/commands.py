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

from roost.rules.engine import check_rules, name_clash
from roost.rules.state import read_saved
from roost.rules.loader import display, load_directory
from roost.things import PropertySpec, Thing, ThingRegistry


def add_rule_commands(add) -> None:
    """Register the subcommands with `add(name, help, description, epilog)` of roost.cli.build_parser."""
    p = add("rules", "list the rules, or preview one against history",
            "list: the rules of [rules] directory: each one's sentence, whether it is enabled and when it last ran "
            "(from the running hub, else from the state the hub saved in --data).\n"
            "preview RULE: what the rule would have done over the stored readings of --since (on the test clock, "
            "its things stand-ins: nothing is actuated), as a timeline.\n"
            "reload: make the running hub reload the rule files that changed, now (it also does within 2 s).",
            "examples:\n  roost rules list -c roost.toml\n  roost rules preview WakeUp --since 7d -c roost.toml\n"
            "  roost rules preview Hot --since 2d --format json")
    p.add_argument("action", choices=["list", "preview", "reload"])
    p.add_argument("rule", nargs="?", help="preview: the rule's class name")
    p.add_argument("--since", default="7d", metavar="DURATION", help="preview: how far back (default 7d)")
    p.add_argument("--format", default="table", choices=["table", "json"], help="preview: the timeline's format")
    p.set_defaults(func=cmd_rules)


def _get(url: str, tls: ssl.SSLContext | None, *, post: bool = False):
    """GET (or an empty POST) with the token in $ROOST_TOKEN, when the hub has access tokens (docs/security.md)."""
    request = urllib.request.Request(url, data=b"" if post else None, method="POST" if post else "GET")
    if token := os.environ.get("ROOST_TOKEN"):
        request.add_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(request, timeout=1.5, context=tls)


def _hub_things(
    url: str, tls: ssl.SSLContext | None = None, *, values: bool = False,
) -> tuple[ThingRegistry | None, dict[str, dict[str, Any]]]:
    """The things of a hub running at `url` as a registry (None when no hub answers), and the values of its rules'
    things (with `values`, of every thing, also set on the registry's things)."""
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
    found: dict[str, dict[str, Any]] = {}
    for d in descriptions if isinstance(descriptions, list) else []:
        thing_id = str(d.get("id", "")).rstrip("/").rsplit("/", 1)[-1]
        properties = {
            name: PropertySpec(name, p.get("type", "number"), read_only=bool(p.get("readOnly")),
                               minimum=p.get("minimum"), maximum=p.get("maximum"),
                               enum=tuple(p["enum"]) if "enum" in p else None)
            for name, p in (d.get("properties") or {}).items()
        }
        types = d.get("@type")
        types = tuple(types) if isinstance(types, list) else (types,) if isinstance(types, str) else ()
        thing = registry.add(Thing(id=thing_id, title=d.get("title", thing_id), types=types, properties=properties))
        if thing_id.startswith("rule-") or values:
            try:
                with _get(f"{url}/things/{thing_id}/properties", tls) as response:
                    found[thing_id] = json.loads(response.read())
            except (OSError, ValueError):
                continue
            if values and isinstance(found[thing_id], dict):
                thing.values.update({k: v for k, v in found[thing_id].items() if k in properties})
    return registry, found


def check(settings) -> tuple[list[str], list[str]]:
    """Problems of the configured rules (file:line: ...) and notes; nothing when no rules are configured."""
    directory = settings.rules.directory
    if directory is None:
        return [], []
    sources, problems = load_directory(directory)
    registry, _ = _hub_things(_hub_url(settings), _tls(settings))
    runtimes, trouble = check_rules(sources, registry, settings.rules.place())
    notes = [f"{display(directory)}: {len(sources)} rule(s)"]
    if registry is not None:
        notes += [clash for rt in runtimes if (clash := name_clash(rt, registry)) is not None]
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
    if args.action == "preview":
        return _preview(args, settings, sources, problems)
    if args.action == "reload":
        return _reload(settings)
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


def _preview(args: argparse.Namespace, settings, sources, problems: list[str]) -> int:
    import asyncio
    from datetime import datetime, timedelta, timezone

    from roost.cli import _open_reader
    from roost.durations import parse_duration_ms
    from roost.errors import ConfigError
    from roost.rules.preview import preview
    from roost.rules.proxy import did_you_mean
    from roost.rules.thinglog import ThingLog

    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    by_name = {s.cls.__name__: s for s in sources}
    if not args.rule:
        raise ConfigError("roost rules preview RULE: name the rule (its class name; `roost rules list` shows them)")
    source = by_name.get(args.rule)
    if source is None:
        raise ConfigError(f"no rule named {args.rule!r}{did_you_mean(args.rule, sorted(by_name))}")
    try:
        since = timedelta(milliseconds=parse_duration_ms(args.since))
    except ValueError as err:
        raise ConfigError(f"--since: {err}") from None
    registry, live = _hub_things(_hub_url(settings), _tls(settings), values=True)
    store = _open_reader(settings)
    end = datetime.now(timezone.utc)
    place = settings.rules.place()
    try:
        result = asyncio.run(preview(source, things=list(registry) if registry is not None else None, history=store.read,
                                     start=end - since, end=end, place=place,
                                     properties=live.get(f"rule-{args.rule}"), notify=settings.rules.notify,
                                     changes=ThingLog(settings.hub.data / "thing-changes").read))
    finally:
        store.close()
    if registry is None:
        result.notes.append(f"no hub answers at {_hub_url(settings)}: the rule's things start with no values")
    if args.format == "json":
        print(json.dumps(result.as_json(), indent=2))
    else:
        for step in result.steps:
            local = place.local(step.at).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{local}  {step.trigger:<32}  {step.action:<32}  {step.sentence}")
        if not result.steps:
            print(f"{args.rule}: did nothing between {place.local(result.start):%Y-%m-%d %H:%M} and "
                  f"{place.local(end):%Y-%m-%d %H:%M}")
        for failure in result.failures:
            local = place.local(failure.at).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{local}  {failure.trigger:<32}  error: {failure.error}"
                  + ("  (disabled after this failure)" if failure.disabled else ""), file=sys.stderr)
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
    return 1 if problems else 0


def _reload(settings) -> int:
    from roost.errors import RoostError

    url = _hub_url(settings)
    try:
        with _get(f"{url}/api/rules/reload", _tls(settings), post=True) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:300]
        raise RoostError(f"{url}: the hub refused the reload ({err.code}): {detail}"
                         + (" — set ROOST_TOKEN to a token of scope write" if err.code in (401, 403) else "")) from None
    except OSError as err:
        raise RoostError(f"{url}: no hub answers ({getattr(err, 'reason', err)}) — is `roost run` running?") from None
    print(f"reloaded {', '.join(answer['reloaded'])}" if answer["reloaded"] else "no rule file changed")
    for problem in answer["problems"]:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if answer["problems"] else 0
