#!/usr/bin/env bash
# Build the isolated virtual environment that the contract tests of one backend library run in.
#
#   scripts/contract-venv.sh vllm       # -> .venv-contract-vllm
#   scripts/contract-venv.sh lmdeploy   # -> .venv-contract-lmdeploy
#
# Why a venv per library: vLLM and LMDeploy pin different torch (and peft) releases than swiftops'
# own environment, and than each other. swiftops itself goes in with --no-deps: the contract tests
# only need its pure mapping modules (swiftops.engines.<backend>.args) and pydantic, which both
# libraries already depend on.
set -euo pipefail

library="${1:?usage: contract-venv.sh vllm|lmdeploy}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-contract-$library"
python="${PYTHON:-python3}"

case "$library" in
  # vLLM 0.29-0.31 pin torch==2.13.0, the CPU wheel that lies on these machines' disk; installing it
  # first keeps pip from pulling a multi-GB CUDA build. The vLLM wheel itself is CUDA-only, but
  # constructing its argument classes needs no GPU.
  vllm)
    torch_spec="${VLLM_TORCH_SPEC:-torch==2.13.0}"
    library_spec="${VLLM_SPEC:-vllm==0.31.0}"
    index_args=()
    ;;
  # LMDeploy 0.18 wants torch<=2.12.1 (and peft<=0.14), so the CPU 2.13 wheel on disk does not do. Only PyPI
  # is reachable here, whose x86_64 torch 2.9.1 is the CUDA build: ~8 GB with its nvidia-* wheels, which
  # import fine without a GPU (LMDeploy then reports TurboMind as unavailable and picks its PyTorch engine).
  lmdeploy)
    torch_spec="${LMDEPLOY_TORCH_SPEC:-torch==2.9.1}"
    library_spec="${LMDEPLOY_SPEC:-lmdeploy==0.18.0}"
    index_args=()
    ;;
  *)
    echo "contract-venv.sh: unknown library '$library' (expected vllm or lmdeploy)" >&2
    exit 2
    ;;
esac

# Rebuilt when this script changes or other releases are asked for (VLLM_SPEC=vllm==0.29.0 make contract).
stamp="$venv/.contract-installed"
if [[ -f "$stamp" && "$stamp" -nt "$0" && "$(cat "$stamp")" == "$torch_spec $library_spec" ]]; then
  exit 0
fi

start=$(date +%s)
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "${index_args[@]}" "$torch_spec"
# The library must not replace the torch installed above; a conflict fails here, loudly.
"$venv/bin/python" -m pip install -q "$library_spec" "$torch_spec" pytest pytest-timeout
"$venv/bin/python" -m pip install -q --no-deps -e "$root"
# vLLM pulls PyPI's CUDA builds of torchvision/torchaudio/torchcodec, whose kernels do not load beside
# the CPU torch ("operator torchvision::nms does not exist", "libc10_cuda.so: cannot open"), and
# transformers imports them when present. Argument classes need none of them.
if [[ "$library" == vllm ]]; then
  "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
fi
"$venv/bin/python" -c "import $library, sys; print('$library', $library.__version__, 'in', sys.prefix)"
echo "contract venv for $library built in $(( $(date +%s) - start ))s" >&2
echo "$torch_spec $library_spec" > "$stamp"
