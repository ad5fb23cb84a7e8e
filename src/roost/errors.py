"""The one exception hierarchy of roost: every message says what, where and what to do."""


class RoostError(Exception):
    """Base of every error roost raises on purpose; the CLI prints it as one line."""


class ConfigError(RoostError):
    """The configuration (or a command-line value) is wrong; carries every problem found."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class StoreError(RoostError):
    """The time-series store cannot do what was asked (disk full, locked, corrupt)."""


class StoreFullError(StoreError):
    """The disk under the store is full: writes fail, reads keep working."""


class InvalidReading(RoostError):
    """A reading was rejected at the boundary; `reason` is the counted label value."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class QueryError(RoostError):
    """A query (selector, range, step, aggregation) is malformed."""


class ImportFormatError(RoostError):
    """A line of an import file or push body is malformed; names the line."""

    def __init__(self, line: int, message: str):
        self.line = line
        super().__init__(f"line {line}: {message}")


class SourceError(RoostError):
    """A device source failed (unreachable, bad response)."""
