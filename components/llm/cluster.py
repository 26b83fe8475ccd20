"""Extraction on a Ray cluster (``executor=ray``): one extraction actor per node.

Each actor builds the configured service chain on its node and starts it there, so a loopback
URL (Ollama, LM Studio on each machine) or the embedded server is that node's own; the chain's
retries, breaker, cache and fallback work per node as they do on one machine. The driver sends
chunks to the least busy actor and keeps the record log, so outputs, resume and per-chunk
errors are the local ones. Requests in flight are bounded: per node-local server by
``extraction.concurrency``, and for one shared server (a remote URL) by the same number over
the whole cluster.

Audit rows stay where the request was made: the run directory for an actor on the driver's
node (or every node, with ``executor.shared_fs``, one file per node), else that node's temp
folder, named in the log.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from components.llm.privacy import is_loopback
from components.llm.resilience import chain


def node_local(service: dict) -> bool:
    """Each node has its own server: the embedded one, or a loopback URL (the default ones;
    ``127.0.0.1:11434`` without a scheme, as Ollama's OLLAMA_HOST is written, too)."""
    url = service.get("base_url")
    return not url or is_loopback(str(url))


def merge_metrics(per_node: list[dict[str, float]]) -> dict[str, float]:
    """One set of service metrics for the run: counts add up; rates, latencies and
    throughputs are the mean over the nodes that have them."""
    if len(per_node) == 1:
        return dict(per_node[0])
    sums: dict[str, float] = {}
    seen: dict[str, int] = {}
    for m in per_node:
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v
            seen[k] = seen.get(k, 0) + 1
    means = ("_rate", "_s", "_per_s")
    return {k: round(v / seen[k], 4) if k.endswith(means) else v for k, v in sums.items()}


def merge_tags(per_node: list[dict[str, str]]) -> dict[str, str]:
    """The service tags of all nodes: what answered anywhere, a fallback anywhere."""
    out: dict[str, str] = {}
    for tags in per_node:
        for k, v in tags.items():
            if k in ("service.used", "service.targets") and out.get(k) not in (None, "none"):
                v = ",".join(sorted(set(out[k].split(",")) | ({*v.split(",")} - {"none"})))
            elif k == "service.fallback":
                v = str(out.get(k) == "true" or v == "true").lower()
            out[k] = v
    return out


class NodeExtractor:
    """The Ray actor: this node's service chain and chunk extractor."""

    def __init__(self, service: dict, extraction: Any, glossary_rows: dict[str, list[dict]],
                 metas: dict[str, dict], request_key: str, run_dir: str, driver_node: str | None,
                 shared_fs: bool) -> None:
        import ray
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from components.llm.extractor import ChunkExtractor
        from components.llm.rules import Glossary

        self.node = ray.get_runtime_context().get_node_id()
        if self.node == driver_node:
            self.audit_dir = run_dir
        elif shared_fs:
            self.audit_dir = str(Path(run_dir) / "nodes" / self.node[:12])
        else:
            self.audit_dir = str(Path(tempfile.gettempdir()) / "telecom-finetune" / Path(run_dir).name)
        self.svc = chain(instantiate(OmegaConf.create(service), _convert_="all")).bind(self.audit_dir)
        try:
            self.svc.start()
        except BaseException:
            self.svc.close()
            raise
        self.request_key = request_key
        self.extractor = ChunkExtractor(extraction, {d: Glossary(r) for d, r in glossary_rows.items()},
                                        metas, service=self.svc)

    def ready(self) -> dict[str, Any]:
        return {"node": self.node, "service": self.svc.name, "audit_dir": self.audit_dir}

    def extract(self, chunk: dict) -> dict:
        return self.extractor(chunk, self.request_key)

    def abort(self) -> int:
        """Stop asking: the requests still running are cut (the server cancels them)."""
        self.extractor.cancel.set()
        return self.svc.abort_requests()

    def finish(self) -> dict[str, Any]:
        """The chain's metrics and tags; the server is stopped."""
        try:
            return {"metrics": self.svc.metrics(), "tags": self.svc.tags(),
                    "retried": self.svc.requests_retried}
        finally:
            self.svc.close()
