"""Errors Keel shows to people. Each says what went wrong and where."""

from __future__ import annotations

from dataclasses import dataclass


class KeelError(Exception):
    """Base of errors that are the user's to fix; the CLI prints them without a traceback."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file, with its position (1-based line and column)."""

    file: str
    line: int
    column: int
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        key = f" {self.key_path}:" if self.key_path else ""
        return f"{where}:{key} {self.message}"


class ConfigError(KeelError):
    """A configuration file failed to parse or validate; lists every problem found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class PluginError(KeelError):
    """A plugin failed to load, failed validation, or raised inside a hook."""

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r}: {message}")
