"""Access control: the hub's tokens, where it may listen, and its TLS context (docs/security.md)."""

from roost.access.listen import check_listen, is_loopback, tls_context
from roost.access.tokens import SCOPES, TOKENS_FILE, Scope, Token, TokenError, TokenStore

__all__ = ["SCOPES", "TOKENS_FILE", "Scope", "Token", "TokenError", "TokenStore", "check_listen", "is_loopback", "tls_context"]
