"""Where the hub may listen: loopback freely, anywhere else only with tokens; and its TLS context."""

from __future__ import annotations

import functools
import ipaddress
import ssl
from pathlib import Path

from roost.access.tokens import TokenStore
from roost.errors import RoostError

__all__ = ["check_listen", "is_loopback", "tls_context"]


@functools.lru_cache(maxsize=64)  # asked on every request of an open hub, with the few names it is reached by
def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; a name that must be resolved counts as reachable from outside."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, port: int, data: Path) -> None:
    """Refuse to serve beyond loopback while no token exists: every request would be refused anyway."""
    if is_loopback(host):
        return
    if not TokenStore(data).tokens():
        raise RoostError(
            f"hub.listen: {host}:{port} is reachable from other machines and no access token exists in {data} — "
            f"create one first: `roost token create --name NAME --scope admin --data {data}` "
            "(docs/security.md), or listen on 127.0.0.1"
        )


def tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context for `[hub] tls_cert_file` / `tls_key_file` (PEM); TLS 1.2 at least."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as e:
        raise RoostError(f"hub.tls_cert_file / tls_key_file: {e.filename}: no such file") from None
    except (ssl.SSLError, OSError) as e:
        raise RoostError(
            f"hub.tls_cert_file / tls_key_file: cannot load {cert_file} with {key_file} ({e}) — "
            "expected a PEM certificate (chain) and its PEM private key"
        ) from None
    return context
