"""Serving-path parts that need no engine: plugin options, wire protocol, route book."""

from pathlib import Path

import numpy as np
import pytest
from vllm.utils.argparse_utils import FlexibleArgumentParser

from vllm_helix import wire as p
from vllm_helix.comm.messages import Header, decode_header, encode_header, typed_decoder
from vllm_helix.coordinator.routing import RouteBook
from vllm_helix.errors import FrameRejected
from vllm_helix.host import has_cuda, resolve_dtype, shared_host_env
from vllm_helix.options import EXECUTOR_CLASS, SCHEDULER_CLASS, helix_options
from vllm_helix.planner.cluster import cluster_from_dict
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.plan import evaluate_plan
from vllm_helix.plugin import add_helix_args

LOCAL3 = str(Path(__file__).resolve().parents[2] / "examples" / "local3.yaml")


def test_executor_helix_maps_onto_vllms_own_settings():
    parser = add_helix_args(FlexibleArgumentParser())
    args = parser.parse_args(["--executor", "helix", "--helix-plan", LOCAL3, "--helix-depth", "6"])
    assert args.distributed_executor_backend == EXECUTOR_CLASS and args.scheduler_cls == SCHEDULER_CLASS
    options = helix_options(args.additional_config)
    assert options["plan"] == LOCAL3 and options["depth"] == 6 and options["enabled"]
    assert options["router"] == "maxflow"  # defaults filled in
    with pytest.raises(SystemExit):
        parser.parse_args(["--helix-router", "fastest"])


@pytest.mark.skipif(has_cuda(), reason="on a GPU host `auto` stays vLLM's choice")
def test_executor_helix_runs_float32_on_a_cpu_host_unless_a_dtype_is_given():
    from vllm.engine.arg_utils import EngineArgs

    parser = add_helix_args(EngineArgs.add_cli_args(FlexibleArgumentParser()))
    helix = ["--executor", "helix", "--helix-plan", LOCAL3]
    assert parser.parse_args(helix).dtype == "float32"
    assert parser.parse_args([*helix, "--dtype", "bfloat16"]).dtype == "bfloat16"
    assert parser.parse_args(["--dtype", "bfloat16", *helix]).dtype == "bfloat16"
    assert parser.parse_args([]).dtype == "auto"  # plain vLLM is left alone
    assert resolve_dtype("auto") == "float32" and resolve_dtype("bfloat16") == "bfloat16"


def test_processes_sharing_the_host_do_not_bind_threads_unless_told():
    assert shared_host_env({})["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert shared_host_env({"VLLM_CPU_OMP_THREADS_BIND": "0-1"})["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"


def test_a_missing_or_malformed_plan_is_a_usage_error(tmp_path, capsys):
    parser = add_helix_args(FlexibleArgumentParser())
    (tmp_path / "bad.yaml").write_text("nodes: [")
    for plan in (tmp_path / "missing.yaml", tmp_path / "bad.yaml"):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["--executor", "helix", "--helix-plan", str(plan)])
        assert exit_.value.code == 2 and f"--helix-plan: {plan}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--executor", "helix"])
    assert exit_.value.code == 2 and "needs --helix-plan" in capsys.readouterr().err


def test_helix_cluster_plans_at_parse_time_and_bad_uses_are_usage_errors(tmp_path, capsys, tiny_llama_path):
    import yaml
    from serve_helpers import CLUSTER

    parser = add_helix_args(FlexibleArgumentParser())
    parser.add_argument("model_tag", nargs="?")
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(CLUSTER))
    (tmp_path / "bad.yaml").write_text("nodes: [{name: a}]\n")
    usage_errors = [
        (["--helix-cluster", str(tmp_path / "none.yaml")], "--helix-cluster: " + str(tmp_path / "none.yaml")),
        (["--helix-cluster", str(tmp_path / "bad.yaml")], "nodes[0] (a).gpu: is required"),
        (["--helix-cluster", str(cluster), "--helix-plan", LOCAL3], "not both"),
        (["--helix-cluster", str(cluster)], "needs the model"),
        (["--helix-cluster", str(cluster), "gpt-9"], "not a built-in"),
    ]
    for args, message in usage_errors:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["--executor", "helix", *args])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err, err
    args = parser.parse_args(["--executor", "helix", "--helix-cluster", str(cluster), "--helix-plan-time-limit", "5",
                              str(tiny_llama_path)])
    options = helix_options(args.additional_config)
    assert options["plan"] == str(tmp_path / "cluster.plan.yaml")  # written beside the cluster file
    from vllm_helix.planner.files import load_plan

    plan = load_plan(options["plan"])
    assert plan.throughput_model == "estimate" and plan.flow.value > 0  # a Hugging Face model on CPUs
    assert "max flow:" in capsys.readouterr().out


@pytest.mark.parametrize("option, value, problem", [("--helix-kv-fraction", "1.5", "must be in (0, 1)"),
                                                    ("--helix-depth", "-1", "must be >= 0"),
                                                    ("--helix-step-timeout", "0", "must be > 0"),
                                                    ("--helix-reroute-timeout", "-1", "must be > 0"),
                                                    ("--helix-kv-cache-bytes", "0", "must be > 0")])
def test_a_bad_helix_option_value_is_a_usage_error(option, value, problem, capsys):
    parser = add_helix_args(FlexibleArgumentParser())
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--executor", "helix", "--helix-plan", LOCAL3, option, value])
    assert exit_.value.code == 2 and f"{option}: {problem}, got {float(value) if '.' in value else value}" in (
        capsys.readouterr().err)


def _serve_parser():
    """`vllm serve`'s engine options plus the Helix ones (added once, whether or not the plugin patched vLLM)."""
    from vllm.engine.arg_utils import EngineArgs

    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    return parser if getattr(EngineArgs.add_cli_args, "_vllm_helix_patched", False) else add_helix_args(parser)


@pytest.mark.parametrize("flags, feature", [
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}'], "speculative decoding"),
    (["--enable-lora"], "LoRA adapters"),
    (["--runner", "pooling"], "pooling and embedding models"),
    (["--convert", "embed"], "pooling and embedding models"),
    (["--enable-prompt-embeds"], "prompt embeddings"),
    (["--logprobs-mode", "processed_logprobs"], "logprobs mode"),
    (["--tensor-parallel-size", "2"], "tensor parallelism"),
    (["--async-scheduling"], "asynchronous scheduling"),
])
def test_features_the_nodes_cannot_carry_are_usage_errors(flags, feature, capsys):
    parser = _serve_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--executor", "helix", "--helix-plan", LOCAL3, *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"{flags[0]} " in err and feature in err
    assert "is not supported with --executor helix" in err
    parser.parse_args(flags)  # plain vLLM takes them


def test_every_refused_flag_is_an_engine_argument_with_an_allowed_default():
    """The table follows vLLM: a renamed or removed engine argument fails here, not silently in the check."""
    from vllm.engine.arg_utils import EngineArgs

    from vllm_helix.unsupported import SERVE_FLAGS, serve_flag_errors

    fields = EngineArgs.__dataclass_fields__
    assert [f.attribute for f in SERVE_FLAGS if f.attribute not in fields] == []
    assert serve_flag_errors(_serve_parser().parse_args(["--executor", "helix", "--helix-plan", LOCAL3])) == []


def test_models_and_request_fields_the_nodes_cannot_carry_are_named():
    from vllm import SamplingParams

    from vllm_helix.unsupported import model_error, request_error

    assert model_error(False, "generate") is None
    assert "a multimodal model is not supported with --executor helix" in model_error(True, "generate")
    assert "a pooling model (embeddings" in model_error(False, "pooling")
    assert request_error(SamplingParams(max_tokens=4)) is None
    field, message = request_error(SamplingParams(max_tokens=4, thinking_token_budget=8))
    assert field == "thinking_token_budget" and message.endswith("is not supported with --executor helix")


def test_a_step_payload_is_the_summed_stream_or_the_pair_and_anything_else_is_rejected():
    import torch

    from vllm_helix.node.server import NodeServer

    step = p.Step(4, [p.Item("r1", 0, 3, []), p.Item("r2", 7, 1, [5])])
    rows = torch.arange(4 * 8, dtype=torch.float32).reshape(4, 8)
    items = list(step.items)
    summed = NodeServer._payload(step, p.Received("n0", step, [rows]), items)
    assert summed is not None and summed.residual is None and summed.counts == [3, 1] and summed.hidden_states is rows
    pair = NodeServer._payload(step, p.Received("n0", step, [rows, rows + 1]), items)
    assert pair is not None and pair.residual is not None and torch.equal(pair.residual[3:], rows[3:] + 1)
    assert NodeServer._payload(step, p.Received("coordinator", step, []), items) is None  # the first hop
    for bad in ([rows, rows, rows], [rows[:3]], [rows, rows[:2]]):
        with pytest.raises(FrameRejected, match="payloads do not match its 4 tokens"):
            NodeServer._payload(step, p.Received("n0", step, bad), items)


def test_a_node_forwards_its_batch_block_as_it_is_or_the_rows_of_a_next_hop():
    import torch

    from vllm_helix.node.types import HiddenBatch

    stream = torch.arange(5 * 4, dtype=torch.float32).reshape(5, 4)
    # runner order b, a, c; the batch's order a, b, c
    out = HiddenBatch(stream, None, {"b": (0, 2), "a": (2, 3), "c": (3, 5)}, ["a", "b", "c"])
    assert [r.request_id for r in out] == ["a", "b", "c"] and len(out) == 3
    assert torch.equal(out[1].hidden_states, stream[:2]) and out[1].residual is None
    (whole,) = out.blocks(["b", "a", "c"])
    assert whole.data_ptr() == stream.data_ptr()  # the whole batch goes on without a copy
    (part,) = out.blocks(["b", "c"])
    assert torch.equal(part, torch.cat([stream[:2], stream[3:]]))
    pair = HiddenBatch(stream, -stream, {"x": (0, 3), "y": (3, 5)}, ["y", "x"])
    assert [torch.equal(t, e) for t, e in zip(pair.blocks(["y"]), (stream[3:], -stream[3:]), strict=True)] == [True] * 2
    assert torch.equal(pair[0].residual, -stream[3:])


@pytest.mark.parametrize("typed", [None, typed_decoder(p.HelixHeader)], ids=["generic", "helix-header"])
def test_messages_round_trip_and_bad_frames_are_rejected(typed):
    """A channel decodes the header straight into the message (HelixHeader); anything that is not a message of
    this version falls back to the generic header and is rejected with the same words either way."""
    def over_the_wire(frame):
        return p.decode(decode_header(frame if isinstance(frame, bytes) else encode_header(frame), typed=typed))

    new = p.NewRequest([1, 2, 3, 4, 5], ["a", "b"], b"\x01")
    mask = np.array([-1, 5, 1 << 30], dtype=np.int32)
    step = p.Step(3, [p.Item("r1", 0, 5, [], new), p.Item("r2", 9, 1, [42], grammar=mask.tobytes())])
    assert over_the_wire(p.encode(step)) == step
    one_pass = decode_header(encode_header(p.encode(step)), typed=typed).meta
    assert isinstance(one_pass, p.Step) if typed else isinstance(one_pass, dict)
    assert (np.frombuffer(over_the_wire(p.encode(step)).items[1].grammar, dtype=np.int32) == mask).all()
    tokens = p.Tokens(3, [p.TokenOut("r1", 7, ([7, 1], [-0.5, -0.25], 2), ([[4, 4, 9]], [[-1.5, -1.5, -2.0]], [1]))])
    assert over_the_wire(p.encode(tokens)) == tokens
    for message in (p.Hello("a", [0, 2], 1024, 128, 256, "float32"),
                    p.Hello("a", [0, 2], 1024, 128, 256, "float32", p.Calibration(128, 0.5, 8, 16, 0.05), True),
                    p.Calibrate(),
                    p.Progress("a", [0, 2], "compiling", 4.25),
                    p.Busy("a", 1.5, 12, 300, idle=True)):
        assert over_the_wire(p.encode(message)) == message
    assert p.Progress("a", [0, 2], "compiling", 4.25).line() == "node a [0, 2): compiling      4.2 s"
    good = encode_header(p.encode(step))
    for bad in (b"", b"\x00garbage", good[:-3]):
        with pytest.raises(FrameRejected):
            over_the_wire(bad)
    for bad_meta in ({}, {"type": "step"}, {"type": "step", "step_id": "x", "items": []}, {"type": "nope"}):
        with pytest.raises(FrameRejected, match="malformed"):
            over_the_wire(Header(kind=p.KIND, meta=bad_meta))
    with pytest.raises(FrameRejected, match="not a helix message"):
        over_the_wire(Header(kind="other", meta=p.encode(step).meta))
    with pytest.raises(FrameRejected, match="version"):
        over_the_wire(Header(kind=f"helix/{p.PROTOCOL_VERSION + 1}", meta=p.encode(step).meta))


def _route_book(kv_tokens, block=16, **options):
    cluster = cluster_from_dict({
        # a head four times as fast as x or y: the max flow needs both branches
        "nodes": [{"name": n, "gpu": "cpu", "gpus": g, "vram": "4GB"} for n, g in (("head", 4), ("x", 1), ("y", 1))],
        "default_link": {"bandwidth": "10Gbps", "latency": "1ms"}})
    model = ModelSpec("m", num_layers=4, hidden_size=64, layer_bytes=1e6, activation_bytes_per_token=128,
                      kv_bytes_per_token_layer=256)
    placement = Placement({"head": LayerRange(0, 2), "x": LayerRange(2, 4), "y": LayerRange(2, 4)})
    plan = evaluate_plan(cluster, model, placement, "fixed", throughput="estimate")
    return RouteBook(plan, kv_tokens, block, {"router": "maxflow", "route_log": None, **options})


def test_admission_reserves_whole_blocks_and_queues_when_full():
    book = _route_book({"head": 1024, "x": 256, "y": 256}, block=128)
    # each request needs one 128-token block on x or y: two fit on each, the fifth waits
    admitted = [book.admit(f"r{i}", 20, 10) for i in range(5)]
    assert admitted == [True] * 4 + [False]
    assert not book.never_fits()
    book.release("r0")
    assert book.admit("r4", 20, 10)
    assert all(book.routes[r][0] == "head" and book.routes[r][1] in ("x", "y") for r in book.routes)


def test_a_request_larger_than_any_node_never_fits():
    book = _route_book({"head": 1024, "x": 256, "y": 256})
    assert not book.admit("huge", 300, 50)
    assert book.never_fits()


def test_a_lost_node_returns_its_requests_and_is_avoided():
    book = _route_book({"head": 4096, "x": 4096, "y": 4096})
    for i in range(6):
        assert book.admit(f"r{i}", 10, 10)
    through_x = [r for r, nodes in book.routes.items() if "x" in nodes]
    assert sorted(book.node_lost("x")) == sorted(through_x) and book.node_lost("x") is None
    assert book.admit("after", 10, 10) and "x" not in book.routes["after"]


def test_free_ports_stay_out_of_the_range_outgoing_connections_draw_from():
    import socket

    from vllm_helix.coordinator.local_nodes import _ephemeral_low, free_port

    ports = {free_port() for _ in range(20)}
    assert all(10_000 <= port < _ephemeral_low() for port in ports) and len(ports) > 1
    for port in ports:  # and free: a server can bind each
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
