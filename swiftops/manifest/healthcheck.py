"""Container HEALTHCHECK: GET /health on the port the mounted manifest serves on.

    python -m swiftops.manifest.healthcheck [/etc/swiftops/manifest.yaml]

Exit 0 when healthy (or when the manifest is a job, which has no server), 1 otherwise. Reading the
port from the manifest keeps it in one place: the Dockerfiles never hard-code it.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from swiftops.manifest.render import MANIFEST_MOUNT_PATH
from swiftops.manifest.yaml_reader import load_manifest


def check(manifest_path: str, timeout: float = 5.0) -> bool:
    manifest = load_manifest(manifest_path).manifest
    if manifest.kind != "Deployment":
        return True
    url = f"http://127.0.0.1:{manifest.server_or_default.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str]) -> int:
    return 0 if check(argv[0] if argv else MANIFEST_MOUNT_PATH) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
