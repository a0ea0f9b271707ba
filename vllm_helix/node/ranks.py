"""A node's vLLM workers: one in this process, or N tensor-parallel rank processes that run in lockstep.

Why rank processes: vLLM's tensor parallelism needs one process per device, joined in one torch.distributed
world (its TP group: all-reduce in the row-parallel layers, all-gather of the logits). The node's own process
stays the one hop the router and the transport see: it keeps the requests, the KV block table and the stop
checks (``partial_worker``), builds each step's ``SchedulerOutput`` once and hands the same one to every rank,
as vLLM's multiprocessing executor does; rank 0's output is the node's (every rank computes the same, since the
logits are all-gathered). Keeping rank 0 in the node's process instead would tie that process's one
torch.distributed world to this node, and several nodes share a process in ``LocalChain``.

Both classes answer the same calls, so the partial worker does not know which one it drives.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Client, Connection, Listener, wait
from typing import TYPE_CHECKING, Any

import torch

from vllm_helix.errors import EngineStartError, NodeError
from vllm_helix.node import seam

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.sched.output import GrammarOutput, SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig, KVCacheSpec

    from vllm_helix.node.types import StreamBlock

RANK_START_TIMEOUT_S = 900.0  # a rank imports vLLM and loads its share of the weights


class LocalRank:
    """The node's vLLM worker in this process (rank ``rank`` of the node's TP world; 0 of 1 by default)."""

    def __init__(self, vllm_config: VllmConfig, layer_range: seam.LayerRange, *, rank: int = 0,
                 init_method: str | None = None) -> None:
        self._range = layer_range
        self._worker = seam.create_worker(vllm_config, layer_range, rank=rank, init_method=init_method)

    def kv_cache_spec(self) -> dict[str, KVCacheSpec]:
        return seam.kv_cache_spec(self._worker)

    def init_kv_cache(self, spec: dict[str, KVCacheSpec], budget: int) -> KVCacheConfig:
        with self._range.active():
            config = seam.kv_cache_config(self._worker, spec, budget)
            self._worker.initialize_from_config(config)
        return config

    def loaded_weight_bytes(self) -> dict[str, int]:
        return seam.loaded_weight_bytes(self._worker)

    def run_step(self, sched_out: SchedulerOutput, incoming: Sequence[StreamBlock] | None,
                 grammar: GrammarOutput | None) -> Any:
        with torch.inference_mode(), self._range.active():
            return seam.run_step(self._worker, sched_out, incoming, grammar)

    def batch_order(self) -> list[str]:
        return seam.batch_order(self._worker)

    def close(self) -> None:
        pass


class RankProcesses:
    """``size`` rank processes, each a ``LocalRank`` of a ``size``-way TP world; every call runs on all of them."""

    def __init__(self, vllm_config: VllmConfig, layers: tuple[int, int, int], size: int) -> None:
        from vllm.utils.network_utils import get_distributed_init_method, get_open_port

        init_method = get_distributed_init_method("127.0.0.1", get_open_port())
        authkey = secrets.token_bytes(32)
        self._conns: list[Connection] = []
        self._procs: list[subprocess.Popen] = []
        self._order: list[str] = []
        # plain processes (not multiprocessing's spawn, which re-runs the caller's __main__) that dial back
        with Listener(("127.0.0.1", 0), authkey=authkey) as listener:
            try:
                for rank in range(size):
                    self._procs.append(subprocess.Popen(
                        [sys.executable, "-m", "vllm_helix.node.ranks", f"{listener.address[0]}:{listener.address[1]}"],
                        env={**os.environ, "VLLM_HELIX_RANK_AUTHKEY": authkey.hex()}))
                    conn = _accept(listener, self._procs[rank], rank)
                    conn.send_bytes(pickle.dumps((vllm_config, layers, rank, size, init_method)))
                    self._conns.append(conn)
                self._gather(EngineStartError, RANK_START_TIMEOUT_S)  # every rank loaded (or one failed)
            except BaseException:
                self.close()
                raise

    def kv_cache_spec(self) -> dict[str, KVCacheSpec]:
        return self._call("kv_cache_spec")

    def init_kv_cache(self, spec: dict[str, KVCacheSpec], budget: int) -> KVCacheConfig:
        return self._call("init_kv_cache", spec, budget)

    def loaded_weight_bytes(self) -> dict[str, int]:
        """Rank 0's count: every rank reads the held layers' whole checkpoint tensors and keeps its shard."""
        return self._call("loaded_weight_bytes")

    def run_step(self, sched_out: SchedulerOutput, incoming: Sequence[StreamBlock] | None,
                 grammar: GrammarOutput | None) -> Any:
        out, self._order = self._call("run_step", sched_out, incoming, grammar)
        return out

    def batch_order(self) -> list[str]:
        return list(self._order)

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()  # a rank waiting for its next call sees EOF and exits
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._conns, self._procs = [], []

    # ------------------------------------------------------------ calls

    def _call(self, name: str, *args: Any) -> Any:
        self._send(name, *args)
        return self._gather(NodeError, None)

    def _send(self, name: str, *args: Any) -> None:
        message = pickle.dumps((name, args), protocol=pickle.HIGHEST_PROTOCOL)  # pickled once for all ranks
        for rank, conn in enumerate(self._conns):
            try:
                conn.send_bytes(message)
            except OSError as err:
                raise NodeError(f"tensor-parallel rank {rank} is gone ({err})") from err

    def _gather(self, error: type[Exception], timeout: float | None) -> Any:
        """Rank 0's reply, once every rank has answered; the first rank that fails or dies raises ``error``
        (the others may be waiting for it in a collective, so nobody waits for them)."""
        replies: dict[int, Any] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(replies) < len(self._conns):
            pending = [c for r, c in enumerate(self._conns) if r not in replies]
            ready = wait(pending, None if deadline is None else max(0.0, deadline - time.monotonic()))
            if not ready:
                late = [r for r in range(len(self._conns)) if r not in replies]
                raise error(f"tensor-parallel rank {late[0]} did not answer within {timeout:.0f} s")
            for conn in ready:
                rank = self._conns.index(conn)  # type: ignore[arg-type]
                try:
                    ok, value = pickle.loads(conn.recv_bytes())  # type: ignore[union-attr]
                except (EOFError, OSError) as err:
                    raise error(f"tensor-parallel rank {rank} exited (exit code {self._procs[rank].poll()})") from err
                if not ok:
                    raise error(f"tensor-parallel rank {rank}: {value}")
                replies[rank] = value
        return replies[0]


def _accept(listener: Listener, proc: subprocess.Popen, rank: int) -> Connection:
    """The rank's connection; a rank that dies before dialling back is a start error, not a hang."""
    import threading

    accepted: list[Connection] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    deadline = time.monotonic() + RANK_START_TIMEOUT_S
    while thread.is_alive() and proc.poll() is None and time.monotonic() < deadline:
        thread.join(0.2)
    if not accepted:
        raise EngineStartError(f"tensor-parallel rank {rank} did not start (exit code {proc.poll()})")
    return accepted[0]


def _rank_main(address: str) -> None:
    """One rank process: load this rank's shard of the layers, then run every call the node sends until EOF."""
    host, port = address.rsplit(":", 1)
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ.pop("VLLM_HELIX_RANK_AUTHKEY")))
    vllm_config, (start, end, total), rank, size, init_method = pickle.loads(conn.recv_bytes())
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))  # the ranks share the host's cores
    try:
        layer_range = seam.LayerRange(start, end, total, vllm_config)
        local = LocalRank(vllm_config, layer_range, rank=rank, init_method=init_method)
        _reply(conn, True, None)
    except Exception as err:
        traceback.print_exc()  # the node reports the one line; the rank's log keeps where it failed
        _reply(conn, False, _one_line(err))
        return
    while True:
        try:
            name, args = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the node closed us (or died)
        try:
            value = getattr(local, name)(*args)
            if name == "run_step":
                value = (_to_host(value), local.batch_order())
            _reply(conn, True, value)
        except Exception as err:
            traceback.print_exc()
            _reply(conn, False, _one_line(err))


def _reply(conn: Connection, ok: bool, value: Any) -> None:
    conn.send_bytes(pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL))


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0]


def _to_host(out: Any) -> Any:
    """Hidden states leave a GPU rank as host tensors: the node's process runs no CUDA kernels."""
    if seam.is_intermediate_tensors(out):
        out.tensors = {k: v.cpu() for k, v in out.tensors.items()}
    return out


if __name__ == "__main__":
    _rank_main(sys.argv[1])
