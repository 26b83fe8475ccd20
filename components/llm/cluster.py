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

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from components.llm.errors import ServiceUnavailable
from components.llm.privacy import is_loopback
from components.llm.resilience import chain

log = logging.getLogger(__name__)


class NoNodeServes(ServiceUnavailable):
    """No node of the cluster could start the service."""


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


def extract_on_cluster(executor, extractor, service: dict, rows: dict[str, list[dict]],
                       metas: dict[str, dict], request_key: str, run_dir: Path, asks: list[dict],
                       finished: Callable[[dict, dict], None],
                       cancel: threading.Event) -> tuple[bool, dict[str, Any]]:
    """The chunks that need the model (``asks``), on one ``NodeExtractor`` per node of
    ``executor``'s cluster, each record handed to ``finished(chunk, record)`` as it is back.
    Returns whether every chunk was asked (False: ``cancel`` ended it early) and the nodes'
    merged service metrics and tags. Raises ``NoNodeServes`` when no node can start the service."""
    from components.executor import Failed
    from components.llm.extractor import merge

    ex = extractor.cfg
    placed = executor.node_actors(NodeExtractor, service, ex, rows, metas, request_key, str(run_dir),
                                  executor.driver_node(), executor.opts.shared_fs,
                                  max_concurrency=ex.concurrency + 1)  # one call more: abort, finish
    actors, errors = [], []
    for (node, actor), info in zip(placed, executor.call_all([a for _, a in placed], "ready")):
        if isinstance(info, Failed):
            errors.append(info.error)
            log.warning("extract: node %s cannot serve: %s", node[:12], info.error)
        else:
            actors.append(actor)
            log.info("extract: node %s: service %s, audit in %s", node[:12], info["service"], info["audit_dir"])
    if not actors:
        executor.kill([a for _, a in placed])
        raise NoNodeServes(f"no node of the Ray cluster could start the service: "
                           f"{errors[0] if errors else 'the cluster has no node with CPUs'}")
    shared = not node_local(service)
    log.info("extract: %d chunk(s) on %d node(s), at most %d request(s) at once %s", len(asks),
             len(actors), ex.concurrency if shared else ex.concurrency * len(actors),
             "(one shared server)" if shared else f"({ex.concurrency} per node's own server)")
    complete = False
    served: dict[str, Any] = {}
    try:
        with executor.map_on_actors(actors, "extract", asks, per_actor=ex.concurrency,
                                    total=ex.concurrency if shared else None, cancel=cancel) as batch:
            for i, res in batch:
                chunk = asks[i]
                if isinstance(res, Failed):  # the node went away or the call broke: retried next run
                    rec = extractor.base(chunk, request_key)
                    rec.update(status="error", failure="transient", error=res.error[:500])
                    rec["result"] = merge(rec, ex.extractor)
                    res = rec
                finished(chunk, res)
        complete = not cancel.is_set()
    finally:
        if not complete:
            n = sum(x for x in executor.call_all(actors, "abort", timeout_s=5) if isinstance(x, int))
            log.info("extract: stopping: %d request(s) in flight abandoned", n)
        ends = [e for e in executor.call_all(actors, "finish", timeout_s=60) if not isinstance(e, Failed)]
        executor.kill([a for _, a in placed])
        served.update(metrics=merge_metrics([e["metrics"] for e in ends]) if ends else {},
                      tags=merge_tags([e["tags"] for e in ends]),
                      retried=sum(e["retried"] for e in ends), nodes=len(actors))
    return complete, served
