"""vLLM general plugin (`vllm.general_plugins` entry point `helix`): `vllm serve MODEL --executor helix`.

vLLM calls `register()` in every process, possibly more than once, before it builds its CLI parser. It:
1. adds a "HelixConfig" argument group to `EngineArgs.add_cli_args`: `--executor helix` selects the
   Helix executor and scheduler (by qualified name, vLLM's own seams `distributed_executor_backend`
   and `scheduler_cls`); the `--helix-*` options (table in `vllm_helix.options`) go into
   `additional_config["helix"]`, which reaches the engine-core process with the rest of the config;
   on a host without a CUDA GPU, `--executor helix` makes `--dtype auto` float32 (`vllm_helix.host`);
2. applies the patches in `vllm_helix.coordinator.patches` (see the ledger there).
Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
from typing import Any

from vllm_helix.options import CONFIG_KEY, EXECUTOR_CLASS, OPTIONS, SCHEDULER_CLASS, Option

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
        from vllm_helix.coordinator.metrics import expose

        expose()  # helix_* metrics on this API server's /metrics (before the engine core starts)
        if getattr(namespace, "dtype", None) == "auto":  # a --dtype given later still wins
            from vllm_helix.host import resolve_dtype

            namespace.dtype = resolve_dtype("auto")


class _StoreHelixOption(argparse.Action):
    metavar_key: str  # set by add_helix_args
    helix_option: Option
    def __call__(self, parser, namespace, value, option_string=None):
        if self.nargs == 0:  # a flag
            value = True
        problem = self.helix_option.problem(value)
        if problem:  # a bad value is a usage error here, not a traceback from the engine
            parser.error(f"{option_string}: {problem}, got {value}")
        if self.metavar_key in ("plan", "cluster"):  # so is a bad file
            from vllm_helix.errors import HelixError
            from vllm_helix.planner.files import load_cluster, load_plan

            try:
                (load_plan if self.metavar_key == "plan" else load_cluster)(value)
            except HelixError as exc:
                parser.error(f"{option_string}: {exc}")
        _helix_config(namespace)[self.metavar_key] = value


def add_helix_args(parser: Any) -> Any:
    if "--executor" in parser._option_string_actions:  # added already (vLLM calls plugins for every parser it builds)
        return parser
    group = parser.add_argument_group(
        title="HelixConfig", description="Serve across a heterogeneous cluster with vllm-helix (Helix, ASPLOS'25)."
    )
    group.add_argument("--executor", choices=["helix"], action=_SelectExecutor, dest="helix_executor",
                       help="'helix': run the model on the cluster of --helix-plan (partial-layer workers)")
    for opt in OPTIONS:
        kind = {"nargs": 0} if opt.type is bool else {"type": opt.type, "choices": opt.choices}
        action = group.add_argument(opt.flag, **kind, action=_StoreHelixOption, dest=f"helix_{opt.key}",
                                    default=opt.default, help=opt.help)
        action.metavar_key, action.helix_option = opt.key, opt
    _require_plan(parser)
    return parser


def _require_plan(parser: Any) -> None:
    """`--executor helix` needs exactly one of `--helix-plan` and `--helix-cluster`, and no feature the nodes cannot
    carry (`unsupported.py`): usage errors at parse time, not a traceback from the engine. With `--helix-cluster`
    the plan is made here, once, before any engine."""
    parse_known_args = parser.parse_known_args

    def checked(args=None, namespace=None):
        namespace, rest = parse_known_args(args, namespace)
        helix = (getattr(namespace, "additional_config", None) or {}).get(CONFIG_KEY, {})
        if not helix.get("enabled") or helix.get("planned_from"):
            return namespace, rest
        if helix.get("plan") and helix.get("cluster"):
            parser.error("give --helix-plan or --helix-cluster, not both")
        if not helix.get("plan") and not helix.get("cluster"):
            parser.error("--executor helix needs --helix-plan PLAN.yaml (write one with `vllm-helix plan`) "
                         "or --helix-cluster CLUSTER.yaml (planned at start-up)")
        from vllm_helix.unsupported import serve_flag_errors

        errors = serve_flag_errors(namespace)
        if errors:
            parser.error("; ".join(errors))
        if helix.get("cluster"):
            _plan_at_start(parser, namespace, helix)
        if not helix.get("insecure"):
            _check_keys(parser, helix)
        return namespace, rest

    parser.parse_known_args = checked


def _check_keys(parser: Any, helix: dict[str, Any]) -> None:
    """A plan that leaves this host needs the coordinator's key or --helix-insecure: an error before any engine."""
    from vllm_helix.errors import HelixError
    from vllm_helix.planner.cluster import COORDINATOR
    from vllm_helix.planner.files import load_plan
    from vllm_helix.planner.keys import identity

    try:
        identity(load_plan(helix["plan"]), helix["plan"], COORDINATOR, helix.get("key"))
    except HelixError as exc:
        parser.error(str(exc))


def _plan_at_start(parser: Any, namespace: argparse.Namespace, helix: dict[str, Any]) -> None:
    from vllm_helix.errors import HelixError
    from vllm_helix.planner.serve_plan import plan_at_start

    model = getattr(namespace, "model_tag", None) or getattr(namespace, "model", None)
    if not model:
        parser.error("--helix-cluster needs the model (`vllm serve MODEL`) to plan for")
    cluster = str(helix["cluster"])
    try:
        path, table = plan_at_start(cluster, str(model), throughput=helix.get("throughput", "auto"),
                                    time_limit_s=helix.get("plan_time_limit_s", 20.0))
    except HelixError as exc:
        parser.error(f"--helix-cluster {cluster}: {exc}")
    print(table, flush=True)
    helix["plan"], helix["planned_from"] = str(path), helix.pop("cluster")


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
    from vllm_helix.coordinator.patches import apply_all

    apply_all()
