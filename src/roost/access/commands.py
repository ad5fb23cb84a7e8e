"""`roost token create|list|revoke`: the hub's access tokens, kept in the data directory (docs/security.md)."""

from __future__ import annotations

import argparse
import sys

from roost.access.tokens import SCOPES, TokenStore

_ABOUT = ("Access tokens for the hub's HTTP API, WebSockets and dashboard. While any token exists, every request "
          "must present one (Authorization: Bearer TOKEN, or the dashboard's login cookie); with none, the hub "
          "serves only on loopback. Tokens are stored hashed in DATA/tokens.json; the hub picks up changes at once.")

_SCOPES = """\
scopes (each includes the ones before it):
  read    GET the API, /metrics, the Prometheus query API, the live stream, thing WebSockets (no writes)
  write   also set thing properties and request actions, push readings (/write, /api/v2/write), remote write in
  admin   also the replication and backup endpoints
--things limits a token to the Web Thing API of those things: other things are hidden from /things and
refused, and so is every other surface (series, queries, /metrics)."""


def add_token_commands(add, common) -> None:
    """Register `roost token` with `add(name, help, description, epilog)` of roost.cli.build_parser."""
    p = add("token", "manage access tokens", _ABOUT,
            "examples:\n"
            "  roost token create --name phone --scope read --data /var/lib/roost\n"
            "  roost token create --name telegraf --scope write          # for HTTP push, remote write\n"
            "  roost token create --name hall-panel --scope write --things hall-light,hall-blind\n"
            "  roost token list\n"
            "  roost token revoke phone\n\n" + _SCOPES)
    sub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=f"{help_text[0].upper()}{help_text[1:]}. {_ABOUT}",
                              epilog=epilog, parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)

    c = action("create", "make a token and print it once",
               "The token is printed on standard output, alone, and never again; what to do with it goes to "
               "standard error:\n  TOKEN=$(roost token create --name grafana --scope read --data /var/lib/roost)\n"
               "  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8080/api/series\n\n" + _SCOPES)
    c.add_argument("--name", required=True, help="a name to list and revoke it by (letters, digits, . _ -)")
    c.add_argument("--scope", required=True, choices=SCOPES, help="what the token may do (see below)")
    c.add_argument("--things", default="", metavar="ID,...", help="only these things (their Web Thing API)")
    c.set_defaults(func=cmd_create)

    ls = action("list", "list the tokens (names, scopes, things; never the secrets)", "example:\n  roost token list --data /var/lib/roost")
    ls.set_defaults(func=cmd_list)

    r = action("revoke", "delete a token; a running hub refuses it from its next request", "example:\n  roost token revoke phone")
    r.add_argument("name", help="the token's name (see `roost token list`)")
    r.set_defaults(func=cmd_revoke)


def _store(args: argparse.Namespace) -> TokenStore:
    from roost.cli import _settings

    return TokenStore(_settings(args).hub.data)


def cmd_create(args: argparse.Namespace) -> int:
    store = _store(args)
    things = tuple(t.strip() for t in args.things.split(",") if t.strip())
    token, secret = store.create(args.name, args.scope, things)
    print(secret, flush=True)
    limited = f", things {', '.join(token.things)}" if token.things else ""
    print(f"token {token.name!r} ({token.scope}{limited}) stored hashed in {store.path}. It is shown only this once: "
          "send it as `Authorization: Bearer TOKEN`, or paste it into the dashboard's login page.", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    tokens = store.tokens()
    if not tokens:
        print(f"no tokens in {store.path} — the hub serves only on loopback, to anyone there", file=sys.stderr)
        return 0
    width = max(len(t.name) for t in tokens)
    print(f"{'NAME':<{width}}  SCOPE  CREATED               THINGS")
    for t in tokens:
        print(f"{t.name:<{width}}  {t.scope:<5}  {t.created:<20}  {','.join(t.things) or 'all'}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    token = store.revoke(args.name)
    left = len(store.tokens())
    print(f"revoked {token.name!r} ({token.scope}); {left} token(s) left"
          + ("" if left else " — with none, the hub refuses to start beyond loopback"), file=sys.stderr)
    return 0
