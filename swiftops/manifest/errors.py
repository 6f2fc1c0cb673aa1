"""Problems found in a manifest, each naming the field path and the YAML line, reported together."""

from __future__ import annotations

from dataclasses import dataclass

from swiftops.protocol.errors import ConfigError


@dataclass(frozen=True)
class ManifestIssue:
    """One problem: `path` is the dotted field path (spec.server.port), `line` the 1-based YAML line
    (None when the value came from an environment variable or a default)."""

    file: str
    path: str
    line: int | None
    message: str
    origin: str | None = None  # e.g. "environment variable SWIFTOPS_SPEC__SERVER__PORT"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        origin = f" (from {self.origin})" if self.origin else ""
        return f"{where}: {self.path or '<document>'}{origin}: {self.message}"


class ManifestError(ConfigError):
    """One or more problems in a manifest; the CLI prints them all and exits 2."""

    def __init__(self, issues: list[ManifestIssue]):
        self.issues = list(issues)
        files = sorted({issue.file for issue in self.issues})
        count = len(self.issues)
        header = f"{', '.join(files)}: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([header, *(f"  {issue}" for issue in self.issues)]))
