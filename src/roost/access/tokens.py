"""The hub's access tokens: made by `roost token create`, kept hashed in `<data>/tokens.json` (docs/security.md).

A token is `roost_` and 43 URL-safe characters (256 random bits). The file keeps only its SHA-256: the token
is shown once, when it is made. A slow password hash (scrypt, argon2) protects guessable passwords; a 256-bit
random secret is not guessable, so one SHA-256 is enough and keeps every request cheap. A presented token is
hashed and compared with every stored hash by `hmac.compare_digest`, without stopping at a match, so the time
taken says nothing about which token, or which prefix of one, is valid.

The file is replaced atomically (written beside, fsynced, renamed) with mode 0600, and the hub re-reads it
whenever it changes, so `roost token revoke` takes effect at the next request.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, get_args

from roost.errors import RoostError

__all__ = ["SCOPES", "Scope", "Token", "TokenError", "TokenStore", "TOKENS_FILE"]

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)  # each includes the ones before it
TOKENS_FILE = "tokens.json"
_PREFIX = "roost_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_THING_ID = re.compile(r"[^\s,/]{1,200}")


class TokenError(RoostError):
    """A token cannot be made or revoked as asked, or the tokens file is unreadable."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True)
class Token:
    """A stored token: its name, what it may do, and the SHA-256 of its secret (the secret itself is not kept)."""

    name: str
    scope: Scope
    things: tuple[str, ...]  # empty: every thing and every other surface; else only these things
    sha256: str
    created: str  # RFC 3339, UTC

    def allows(self, scope: Scope) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def sees(self, thing_id: str) -> bool:
        return not self.things or thing_id in self.things


class TokenStore:
    """The tokens of one data directory; `tokens()` re-reads the file when it changed on disk."""

    def __init__(self, data: Path):
        self.path = Path(data) / TOKENS_FILE
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) of the file last read
        self._tokens: tuple[Token, ...] = ()

    def tokens(self) -> tuple[Token, ...]:
        """Every token; raises TokenError when the file exists but cannot be read (callers fail closed)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._tokens = None, ()
            return ()
        except OSError as e:
            raise TokenError(f"{self.path}: cannot read the tokens file ({e.strerror})") from None
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            self._tokens = self._read()
            self._seen = seen
        return self._tokens

    def _read(self) -> tuple[Token, ...]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            return tuple(
                Token(t["name"], t["scope"], tuple(t["things"]), t["sha256"], t["created"])
                for t in doc["tokens"]
                if t["scope"] in SCOPES
            )
        except FileNotFoundError:
            return ()
        except OSError as e:
            raise TokenError(f"{self.path}: cannot read the tokens file ({e.strerror})") from None
        except (ValueError, KeyError, TypeError) as e:
            raise TokenError(f"{self.path}: not a roost tokens file ({e!r:.80}) — move it away and create tokens again") from None

    def find(self, secret: str) -> Token | None:
        """The token whose secret this is, or None; in constant time over the stored tokens."""
        given = _digest(secret).encode()
        found = None
        for token in self.tokens():
            if hmac.compare_digest(given, token.sha256.encode()):
                found = token
        return found

    def create(self, name: str, scope: str, things: tuple[str, ...] = ()) -> tuple[Token, str]:
        """Store a new token; returns it and its secret (which is not kept anywhere)."""
        if not _NAME.fullmatch(name or ""):
            raise TokenError(f"--name: expected letters, digits, '.', '_' or '-' (at most 64, starting with a letter "
                             f"or digit), got {name!r}")
        if scope not in SCOPES:
            raise TokenError(f"--scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
        for thing in things:
            if not _THING_ID.fullmatch(thing):
                raise TokenError(f"--things: expected thing ids separated by commas, got {thing!r}")
        secret = _PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            current = self._read()
            if any(t.name == name for t in current):
                raise TokenError(f"a token named {name!r} exists — revoke it first (`roost token revoke {name}`) "
                                 "or choose another name")
            created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            token = Token(name, scope, tuple(dict.fromkeys(things)), _digest(secret), created)  # type: ignore[arg-type]
            self._write(current + (token,))
        return token, secret

    def revoke(self, name: str) -> Token:
        """Remove the token named `name`; raises TokenError naming the existing ones when there is none."""
        with self._locked():
            current = self._read()
            gone = [t for t in current if t.name == name]
            if not gone:
                names = ", ".join(t.name for t in current) or "none"
                raise TokenError(f"no token named {name!r} in {self.path} (tokens: {names})")
            self._write(tuple(t for t in current if t.name != name))
        return gone[0]

    @contextlib.contextmanager
    def _locked(self):
        """Serialize `roost token` commands on one data directory (the hub only reads)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent / f".{TOKENS_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, tokens: tuple[Token, ...]) -> None:
        doc = {"version": 1, "tokens": [dict(asdict(t), things=list(t.things)) for t in tokens]}
        fd, tmp = tempfile.mkstemp(prefix=f".{TOKENS_FILE}.", dir=self.path.parent)  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
