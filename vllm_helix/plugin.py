"""vLLM general plugin (`vllm.general_plugins` entry point `helix`): `vllm serve MODEL --executor helix`.

vLLM calls `register()` in every process, possibly more than once, before it builds its CLI parser. It:
1. adds a "HelixConfig" argument group to `EngineArgs.add_cli_args`: `--executor helix` selects the
   Helix executor and scheduler (by qualified name, vLLM's own seams `distributed_executor_backend`
   and `scheduler_cls`); the `--helix-*` options (table in `vllm_helix.options`) go into
   `additional_config["helix"]`, which reaches the engine-core process with the rest of the config;
2. applies the patches in `vllm_helix.executor.patches` (see the ledger there).
Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
from typing import Any

from vllm_helix.options import CONFIG_KEY, EXECUTOR_CLASS, OPTIONS, SCHEDULER_CLASS

_MARK = "_vllm_helix_patched"


def _helix_config(namespace: argparse.Namespace) -> dict[str, Any]:
    config = dict(getattr(namespace, "additional_config", None) or {})
    config[CONFIG_KEY] = dict(config.get(CONFIG_KEY, {}))
    namespace.additional_config = config
    return config[CONFIG_KEY]


class _SelectExecutor(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        namespace.distributed_executor_backend = EXECUTOR_CLASS
        namespace.scheduler_cls = SCHEDULER_CLASS
        _helix_config(namespace)["enabled"] = True


class _StoreHelixOption(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        if self.metavar_key == "plan":  # a bad plan is a usage error here, not a traceback from the engine
            from vllm_helix.errors import HelixError
            from vllm_helix.planner.plan import load_plan

            try:
                load_plan(value)
            except HelixError as exc:
                parser.error(f"{option_string}: {exc}")
        _helix_config(namespace)[self.metavar_key] = value


def add_helix_args(parser: Any) -> Any:
    group = parser.add_argument_group(
        title="HelixConfig", description="Serve across a heterogeneous cluster with vllm-helix (Helix, ASPLOS'25)."
    )
    group.add_argument("--executor", choices=["helix"], action=_SelectExecutor, dest="helix_executor",
                       help="'helix': run the model on the cluster of --helix-plan (partial-layer workers)")
    for opt in OPTIONS:
        action = group.add_argument(opt.flag, type=opt.type, choices=opt.choices, action=_StoreHelixOption,
                                    dest=f"helix_{opt.key}", default=opt.default, help=opt.help)
        action.metavar_key = opt.key
    _require_plan(parser)
    return parser


def _require_plan(parser: Any) -> None:
    """`--executor helix` without `--helix-plan`, or with a feature the nodes cannot carry (`unsupported.py`), is a
    usage error at parse time, not a traceback from the engine."""
    parse_known_args = parser.parse_known_args

    def checked(args=None, namespace=None):
        namespace, rest = parse_known_args(args, namespace)
        helix = (getattr(namespace, "additional_config", None) or {}).get(CONFIG_KEY, {})
        if helix.get("enabled") and not helix.get("plan"):
            parser.error("--executor helix needs --helix-plan PLAN.yaml (write one with `vllm-helix plan`)")
        if helix.get("enabled"):
            from vllm_helix.unsupported import serve_flag_errors

            errors = serve_flag_errors(namespace)
            if errors:
                parser.error("; ".join(errors))
        return namespace, rest

    parser.parse_known_args = checked


def _patch_cli() -> None:
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.add_cli_args
    if getattr(original, _MARK, False):
        return

    def add_cli_args(parser):
        return add_helix_args(original(parser))

    setattr(add_cli_args, _MARK, True)
    EngineArgs.add_cli_args = staticmethod(add_cli_args)


def _log_like_vllm() -> None:
    """vLLM configures only its own logger; give ours (routes, cluster events) the same output."""
    import logging

    ours = logging.getLogger("vllm_helix")
    if not ours.handlers:
        handler = logging.StreamHandler()
        fmt = "(helix) %(levelname)s %(asctime)s [%(name)s] %(message)s"
        handler.setFormatter(logging.Formatter(fmt, "%m-%d %H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False


def register() -> None:
    """Entry point; idempotent."""
    _log_like_vllm()
    _patch_cli()
    from vllm_helix.executor.patches import apply_all

    apply_all()
