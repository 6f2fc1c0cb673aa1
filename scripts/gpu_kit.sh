#!/usr/bin/env bash
# Builds the carry kit for the lent GPU machine (Python 3.12, torch 2.11+cu130, triton 3.6, transformers 5.17,
# no network): the pure-python parts of LMDeploy 0.18.0 (its PyTorch engine; no TurboMind binary) and the
# wheels that LMDeploy's PyTorch engine and swiftops import there, unpacked into one site directory.
#
#   scripts/gpu_kit.sh          # -> /work/main/.gpukit (~15 MiB to carry); KIT=dir PYVER=3.11 KEEP_SITE=1 to change
#   # on the GPU machine, from the repository root (the run tool's carry: [".gpukit"]):
#   export PYTHONPATH=$PWD/.gpukit/boot    # the first python started unpacks site.tar.xz into .gpukit/site
#   python3 -m benchmarks.throughput --workload small --out $OUT/small.json
#
# The kit:
#   site.tar.xz  site/ compressed (~75 MiB unpacked, ~15 MiB packed: the carry limit counts bytes carried).
#   site/        the unpacked wheels, plus lmdeploy without lmdeploy/turbomind/_turbomind*.so and
#                turbomind/lib64/ (built in $BUILD; copied into the kit only with KEEP_SITE=1).
#   boot/        sitecustomize.py, which APPENDS ../site to sys.path (site.addsitedir): whatever the machine
#                has installed wins, the kit only fills what is missing. So the machine's peft 0.21 stays
#                (LMDeploy imports peft only for LoRA adapters) and torch, numpy, transformers are never
#                shadowed. Child processes inherit PYTHONPATH, so they get the kit too.
# Wheels are fetched with `pip download --no-deps --only-binary=:all:` for cp$PYVER manylinux x86_64 (each
# group's dependencies resolved by pip first, then what the machine already has is dropped), and unzipped
# as `pip install --target` would. Cached in $WHEELS, so a rebuild is offline.
set -euo pipefail

KIT=${KIT:-/work/main/.gpukit}
PYVER=${PYVER:-3.12}
BUILD=${BUILD:-/tmp/gpukit-build-$PYVER}
WHEELS=$BUILD/wheels  # fresh each build (pip's own cache makes it quick), so no stale version slips in
PY=${PY:-python3}
LMDEPLOY_SPEC=${LMDEPLOY_SPEC:-lmdeploy==0.18.0}

# Imported by LMDeploy's PyTorch engine and AsyncEngine on the Qwen2 path (found by importing every module of
# lmdeploy.pytorch, lmdeploy.serve.core/managers/processors; see scripts/gpu_kit_check.py), with their deps.
# openai-harmony (8 MB, GPT-OSS only) and openai (LMDeploy's own API server) are left out.
LMDEPLOY_DEPS=(mmengine-lite fire shortuuid partial-json-parser pybase64 einops pyzmq cloudpickle platformdirs
               pillow protobuf)
# Installed without dependencies: they declare torch/transformers, which the machine has. xgrammar (LMDeploy's
# guided decoding, and the pt engine's structured outputs: swiftops.engines.pt.guided_decoding) loads its kernels
# through apache-tvm-ffi (LMDeploy pins 0.1.11; xgrammar 0.2.9 takes >=0.1.11).
NO_DEPS=(xgrammar==0.2.9 apache-tvm-ffi==0.1.11)
# swiftops' runtime dependencies (pyproject.toml) and the test runner for `make test-gpu` (jsonschema: the
# structured-output tests validate outputs with it). av (video/audio decoding, 40 MB) is left out: swiftops
# imports it only when a request carries a video or audio.
SWIFTOPS_DEPS=(pydantic pydantic-settings pyyaml click fastapi uvicorn uvloop httptools httpx prometheus-client pyzmq msgspec pytest
               pytest-timeout jsonschema)
# On the machine already (torch's, transformers' and tiktoken's dependency trees): never carried.
MACHINE_HAS='^(torch|triton|numpy|transformers|tokenizers|safetensors|huggingface_hub|hf_xet|accelerate|sentencepiece|tiktoken|nvidia_.*|cuda_.*|sympy|mpmath|networkx|jinja2|markupsafe|fsspec|filelock|regex|packaging|tqdm|typing_extensions|psutil|setuptools|requests|urllib3|charset_normalizer|peft)-'

platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_5_x86_64
           --platform manylinux1_x86_64 --platform linux_x86_64)
download() {  # download [--no-deps] packages...: binary wheels for cp$PYVER into $WHEELS
    "$PY" -m pip download --quiet --only-binary=:all: --python-version "$PYVER" --implementation cp \
        "${platforms[@]}" -d "$WHEELS" "$@" 2>&1 | grep -v "^WARNING: Location" || true
}

case "$KIT" in */.gpukit|/tmp/*) ;; *) echo "KIT must end in /.gpukit or lie under /tmp: $KIT" >&2; exit 2;; esac
rm -rf "$BUILD"
mkdir -p "$WHEELS"
echo "== downloading wheels for cp$PYVER into $WHEELS"
download --no-deps "$LMDEPLOY_SPEC"
download --no-deps "${NO_DEPS[@]}"
download "${LMDEPLOY_DEPS[@]}" "${SWIFTOPS_DEPS[@]}"

echo "== unpacking into $BUILD/site"
mkdir -p "$BUILD/site" "$BUILD/boot"
"$PY" - "$WHEELS" "$BUILD/site" "$MACHINE_HAS" <<'EOF'
import pathlib, re, sys, zipfile
wheels, site, machine_has = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), re.compile(sys.argv[3], re.I)
# The TurboMind binary (355 MB) and its static libs are for LMDeploy's other engine; the PyTorch engine
# never imports them (lmdeploy.turbomind.is_available() reports False and TurboMind is not chosen).
skip = re.compile(r"^lmdeploy/turbomind/(_turbomind[^/]*\.so|lib64/)|/__pycache__/|\.pyc$|^yapftests/")
newest = {}
for whl in sorted(wheels.glob("*.whl")):
    name = whl.name.split("-")[0].lower().replace(".", "_")
    if name in newest:
        raise SystemExit(f"two versions of {name} downloaded: {newest[name].name}, {whl.name}")
    newest[name] = whl
kept, dropped = [], []
for name, whl in sorted(newest.items()):
    if machine_has.match(name + "-"):
        dropped.append(whl.name)
        continue
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if not skip.search(info.filename):
                z.extract(info, site)
    kept.append(whl.name)
(site / "KIT_WHEELS.txt").write_text("".join(f"{w}\n" for w in kept))
print(f"unpacked {len(kept)} wheels; left out (on the machine already): {', '.join(dropped) or 'none'}")
EOF

cat > "$BUILD/boot/sitecustomize.py" <<'EOF'
"""GPU kit: append ../site to sys.path after the machine's own packages (they win), then run any
sitecustomize this one shadows. The first python started unpacks ../site.tar.xz into ../site if needed
(Python's own tarfile: no xz binary needed; unpacked beside, then renamed, so a second python never sees
half a site dir)."""
import os
import site
import sys

_here = os.path.dirname(os.path.abspath(__file__))
GPUKIT_SITE = os.path.join(os.path.dirname(_here), "site")
_archive = GPUKIT_SITE + ".tar.xz"
if not os.path.isdir(GPUKIT_SITE) and os.path.isfile(_archive):
    import shutil
    import tarfile
    _tmp = f"{GPUKIT_SITE}.unpacking-{os.getpid()}"
    with tarfile.open(_archive) as _tar:
        try:
            _tar.extractall(_tmp, filter="data")
        except TypeError:  # Python < 3.12 without the filter argument
            _tar.extractall(_tmp)
    try:
        os.rename(os.path.join(_tmp, "site"), GPUKIT_SITE)
    except OSError:  # another python unpacked it first
        pass
    shutil.rmtree(_tmp, ignore_errors=True)
if not os.path.isdir(GPUKIT_SITE):
    sys.stderr.write(f"gpu kit: {GPUKIT_SITE} is missing and there is no {_archive} to unpack\n")
site.addsitedir(GPUKIT_SITE)
for _entry in sys.path:
    _other = os.path.join(_entry or ".", "sitecustomize.py")
    if os.path.abspath(_entry or ".") != _here and os.path.isfile(_other):
        with open(_other) as _f:
            exec(compile(_f.read(), _other, "exec"), {"__name__": "sitecustomize", "__file__": _other})
        break
EOF
echo "== packing $BUILD/site into $KIT/site.tar.xz"
NEXT="$KIT.next-$$"  # built beside and swapped in at the end: a kit being carried is never half-written
rm -rf "$NEXT"
mkdir -p "$NEXT"
cp -r "$BUILD/boot" "$NEXT/boot"
tar -C "$BUILD" -cf - site | xz -T0 -6 > "$NEXT/site.tar.xz"
if [ "${KEEP_SITE:-0}" = 1 ]; then cp -r "$BUILD/site" "$NEXT/site"; fi
cp "$BUILD/site/KIT_WHEELS.txt" "$NEXT/KIT_WHEELS.txt"
rm -rf "$KIT"
mv "$NEXT" "$KIT"
echo "== kit ready: $KIT ($(wc -l < "$KIT/KIT_WHEELS.txt") wheels)"
echo "unpacked site/ (not carried): $(du -sh "$BUILD/site" | cut -f1)"
echo "to carry, $KIT in all: $(du -sh "$KIT" | cut -f1)"
