"""A Ray Data stage that forwards batches to a long-lived vLLM engine actor.

Why not `map_batches(VLLMEngine)` directly: Ray Data tears an actor pool down after each pass, and
Self-Instruct makes several passes per round (instructions, classification, instances). Engine
start-up is expensive (minutes for a large model on GPUs), so the engines live for the whole run as
a fixed pool of Ray actors, and each pass runs this thin client with the same concurrency. Ray Data
still does the streaming, batching and back-pressure; each client binds to one engine so the load
is spread one client per engine.
"""
from __future__ import annotations

import pyarrow as pa
import ray


class EngineClient:
    def __init__(self, engines: list, pass_id: str):
        me = ray.get_runtime_context().get_actor_id() or "driver"
        self.engine = None
        for e in engines:  # first engine not yet claimed in this pass; engines serialise claims
            if ray.get(e.claim.remote(pass_id, me)):
                self.engine = e
                break
        if self.engine is None:  # a restarted client: every engine is claimed, share one
            self.engine = engines[hash(me) % len(engines)]

    def __call__(self, batch: pa.Table) -> pa.Table:
        return ray.get(self.engine.generate_batch.remote(batch))
