"""`vllm-helix status --url URL`: the `helix_*` metrics of a running `vllm serve --executor helix`, as a table."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections import defaultdict

from vllm_helix.errors import ConfigError


def scrape(url: str, timeout_s: float = 10.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """helix_* samples at URL/metrics: name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    target = url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(target, timeout=timeout_s) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError, ValueError,
            http.client.HTTPException) as exc:  # a URL http.client refuses ('http://a b'), a peer that is not HTTP
        raise ConfigError(f"cannot read {target}: {getattr(exc, 'reason', exc)}") from None
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise ConfigError(f"{target}: not Prometheus metrics: {exc}") from None
    out = {f.name: [(dict(s.labels), s.value) for s in f.samples] for f in families if f.name.startswith("helix_")}
    if not out:
        raise ConfigError(f"{target} has no helix_ metrics: is it `vllm serve ... --executor helix`?")
    return out


def status_table(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> str:
    nodes: dict[str, dict[str, float]] = defaultdict(dict)
    for name, samples in metrics.items():
        for labels, value in samples:
            if "node" in labels:
                nodes[labels["node"]][name.removeprefix("helix_node_")] = value

    def one(name: str) -> float:
        samples = metrics.get(name) or [({}, 0.0)]
        return samples[0][1]

    lines = [f"{'node':<14}{'layers':>9}{'up':>4}{'busy':>7}{'tokens/s':>10}{'batches':>9}{'KV blocks':>13}"
             f"{'planned/s':>11}{'measured':>10}{'probe':>7}{'route speed':>13}"]
    for name, n in sorted(nodes.items(), key=lambda item: (item[1].get("layer_start", 0), item[0])):
        layers = f"[{n.get('layer_start', 0):.0f}, {n.get('layer_end', 0):.0f})"
        kv = f"{n.get('kv_blocks_used', 0):.0f}/{n.get('kv_blocks_total', 0):.0f}"
        ratio = f"{100 * n['throughput_ratio']:.0f}%" if "throughput_ratio" in n else "-"
        if n.get("drifting"):
            ratio += " !"
        probe = f"{100 * n['probe_ratio']:.0f}%" if "probe_ratio" in n else "-"
        lines.append(f"{name:<14}{layers:>9}{'yes' if n.get('up') else 'no':>4}{100 * n.get('busy_ratio', 0):6.0f}%"
                     f"{n.get('tokens_per_second', 0):10.1f}{n.get('batches_total', 0):9.0f}{kv:>13}"
                     f"{n.get('planned_tokens_per_second', 0):11.1f}{ratio:>10}{probe:>7}"
                     f"{n.get('routing_speed', 1.0):13.2f}")
    live = [(n, v) for n, v in nodes.items() if v.get("up")]
    bottleneck = max(live, key=lambda item: item[1].get("busy_ratio", 0.0), default=None)
    admitted = metrics.get("helix_requests_admitted_total", [])
    lines += [
        "",
        f"max flow: planned {one('helix_planned_max_flow_tokens_per_second'):.1f} tokens/s, "
        f"live {one('helix_live_max_flow_tokens_per_second'):.1f} tokens/s",
        "bottleneck (busiest live node): " + (f"{bottleneck[0]} ({100 * bottleneck[1].get('busy_ratio', 0):.0f}% "
                                              "busy)" if bottleneck else "-"),
        f"requests: {sum(v for _, v in admitted):.0f} admitted, {one('helix_requests_rerouted_total'):.0f} rerouted, "
        f"{one('helix_requests_failed_total'):.0f} failed, {one('helix_admission_waits_total'):.0f} waited for KV room",
    ]
    lines += [f"  route {labels.get('route', '?').replace('>', ' -> ')}: {v:.0f}" for labels, v in admitted]
    if any(n.get("drifting") for n in nodes.values()):
        lines.append("! a node is more than 25 % off its planned throughput: see the server log for the "
                     "re-profile and re-plan commands")
    return "\n".join(lines)
