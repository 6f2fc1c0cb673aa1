"""Smoke test of the GPU kit (scripts/gpu_kit.sh): imports what the benchmark and swiftops need and says, for
each, the version and whether it came from the machine or the kit. Exit 1 if any import fails.

    PYTHONPATH=$PWD/.gpukit/boot python3 scripts/gpu_kit_check.py          # the modules the benchmark runs
    PYTHONPATH=$PWD/.gpukit/boot python3 scripts/gpu_kit_check.py --walk   # every module of LMDeploy's PyTorch
                                                                          # engine: which third-party imports miss
"""
from __future__ import annotations

import argparse
import collections
import importlib
import pkgutil
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # swiftops and benchmarks from this checkout

# What `benchmarks/lmdeploy_peer.py` and LMDeploy's PyTorch engine load on the Qwen2 path, and what
# `benchmarks/engine_run.py`, swiftops' server and `make test-gpu` load.
REQUIRED = [
    "lmdeploy", "lmdeploy.messages", "lmdeploy.archs", "lmdeploy.serve.core.async_engine", "lmdeploy.pytorch.engine",
    "lmdeploy.pytorch.engine.engine_instance", "lmdeploy.pytorch.engine.executor.uni_executor",
    "lmdeploy.pytorch.engine.model_agent", "lmdeploy.pytorch.models.qwen2", "lmdeploy.pytorch.backends.cuda",
    "lmdeploy.pytorch.kernels.cuda", "lmdeploy.pytorch.engine.engine_loop",
    "swiftops", "swiftops.engines.pt.engine", "swiftops.server.app", "swiftops.cli.main", "benchmarks.throughput",
    "benchmarks.engine_run", "benchmarks.lmdeploy_peer",
    "pydantic", "pydantic_settings", "fastapi", "uvicorn", "httpx", "click", "yaml", "prometheus_client", "PIL",
    "zmq", "xgrammar", "mmengine", "pytest",
]
# Modules of LMDeploy that need what the Qwen2 PyTorch path never loads (other devices, ray, TurboMind,
# tilelang kernels for other architectures, flash-attn 3, deep_gemm): not walked.
WALK_SKIP = ("lmdeploy.turbomind", "lmdeploy.lite", "lmdeploy.vl", "lmdeploy.cli", "lmdeploy.serve.proxy",
             "lmdeploy.pytorch.backends.dlinfer", "lmdeploy.pytorch.kernels.dlinfer", "lmdeploy.pytorch.third_party",
             "lmdeploy.pytorch.engine.mp_engine.ray_engine", "lmdeploy.pytorch.engine.executor.ray_executor",
             "lmdeploy.pytorch.ray", "lmdeploy.pytorch.disagg")
WALK_ROOTS = ("lmdeploy.pytorch", "lmdeploy.serve.core", "lmdeploy.serve.managers", "lmdeploy.serve.processors",
              "lmdeploy.serve.parsers", "lmdeploy.serve.openai")
OPTIONAL_MISSING = {"tilelang", "ray", "dlinfer", "torch_npu", "deep_gemm", "flash_attn_interface", "flash_mla",
                    "dlslime", "mooncake", "fla", "timm", "decord", "qwen_vl_utils"}


def origin(name: str) -> str:
    """kit (the GPU kit's site dir), repo (this checkout) or machine (the python's own packages)."""
    module = sys.modules.get(name.split(".")[0])
    path = getattr(module, "__file__", "") or ""
    kit = getattr(sys.modules.get("sitecustomize"), "GPUKIT_SITE", None)
    if kit and path.startswith(kit):
        return "kit"
    return "repo" if path.startswith(str(Path(__file__).resolve().parent.parent)) else "machine"


def version(name: str) -> str:
    from importlib import metadata
    top = name.split(".")[0]
    dist = {"yaml": "pyyaml", "PIL": "pillow", "zmq": "pyzmq", "mmengine": "mmengine-lite"}.get(top, top)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def check_required() -> int:
    failed = 0
    for name in REQUIRED:
        try:
            importlib.import_module(name)
            print(f"ok    {name:48s} {version(name):14s} {origin(name)}")
        except Exception as exc:  # noqa: BLE001 - reported, the rest still checked
            failed += 1
            print(f"FAIL  {name:48s} {type(exc).__name__}: {exc}")
    return failed


def walk() -> int:
    missing: dict[str, list[str]] = collections.defaultdict(list)
    other: list[str] = []
    count = 0
    for root in WALK_ROOTS:
        package = importlib.import_module(root)
        for info in pkgutil.walk_packages(package.__path__, root + "."):
            if info.name.startswith(WALK_SKIP):
                continue
            count += 1
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as exc:
                missing[(exc.name or "?").split(".")[0]].append(info.name)
            except Exception as exc:  # noqa: BLE001 - e.g. no CUDA on a CPU machine
                other.append(f"{info.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
    print(f"walked {count} modules")
    hard = 0
    for name, where in sorted(missing.items()):
        tag = "optional" if name in OPTIONAL_MISSING else "MISSING"
        hard += tag == "MISSING"
        print(f"{tag:8s} {name}: needed by {len(where)} modules, e.g. {', '.join(where[:3])}")
    for line in other:
        print(f"error    {line}")
    return hard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--walk", action="store_true")
    args = parser.parse_args()
    kit = getattr(sys.modules.get("sitecustomize"), "GPUKIT_SITE", None)
    print(f"python {sys.version.split()[0]} at {sys.executable}; kit site dir: {kit or 'none (PYTHONPATH lacks .gpukit/boot)'}")
    try:
        failed = walk() if args.walk else check_required()
    except Exception:  # noqa: BLE001 - the smoke test itself must say what broke
        traceback.print_exc()
        failed = 1
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
