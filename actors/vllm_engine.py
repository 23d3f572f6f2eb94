"""One vLLM engine as a callable class: the model loads in __init__, __call__ takes a batch.

Request rows carry `prompt` (raw text) or `messages` (JSON list of chat messages; the model's chat
template is applied) and `sampling` (JSON of vLLM SamplingParams fields, plus `choice` for a
structured-output choice). Every other column passes through. The engine returns one row per sample
(`n` samples per prompt) with `text`, `finish_reason`, `prompt_tokens`, `output_tokens`,
`sample_index` and `error` (empty when the generation succeeded).

A prompt longer than the context is returned with an error instead of failing the batch, and if
vLLM rejects a batch we retry row by row, so one bad prompt never fails the others.

`choice` is applied where structured output is available: where vLLM has no
StructuredOutputsParams (checked once at start), or where a request fails with it and succeeds
without it (e.g. no structured-output backend for this platform), requests go without the choice
from then on and the caller's parser decides what the free text means.
"""
from __future__ import annotations

import json
import os

import pyarrow as pa

OUTPUT_COLUMNS = ["text", "finish_reason", "prompt_tokens", "output_tokens", "sample_index", "error"]


def sampling_kwargs(sampling: dict, prompt_len: int, max_model_len: int,
                    structured: bool) -> tuple[dict, list[str] | None]:
    """SamplingParams keyword arguments of a request's sampling JSON, and the structured-output
    choice to apply (None without one, or when structured output is unavailable)."""
    s = dict(sampling)
    choice = s.pop("choice", None)
    # Never ask for more tokens than the context has left: vLLM would reject the request.
    s["max_tokens"] = max(1, min(s.get("max_tokens", 256), max_model_len - prompt_len))
    return s, (list(choice) if choice and structured else None)


def _structured_outputs_class():
    """vLLM's StructuredOutputsParams, or None where this vLLM has none."""
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        return None
    return StructuredOutputsParams


def cpu_env() -> dict:
    """Environment for a fast in-process vLLM start on the CPU (no engine subprocess)."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}


class VLLMEngine:
    def __init__(self, model: str, max_model_len: int = 2048, engine_kwargs: dict | None = None,
                 cpu_kvcache_gb: int = 1, cpu_threads: int | None = None):
        """`cpu_threads`: None on GPUs; on the CPU, the compute threads (0 = every core we may use)."""
        for k, v in cpu_env().items():
            os.environ.setdefault(k, v)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_gb))
        if cpu_threads is not None:
            # Ray sets OMP_NUM_THREADS=num_cpus (often 1) in actors; a CPU engine is the node's main
            # compute, so it takes the cores. Before LLM(): vLLM's CPU worker forbids later changes.
            import torch

            n = cpu_threads or len(os.sched_getaffinity(0))
            os.environ["OMP_NUM_THREADS"] = str(n)
            torch.set_num_threads(n)
        from vllm import LLM, SamplingParams  # imported here: ~10 s, and only engine processes need it

        self.max_model_len = max_model_len
        self.llm = LLM(model=model, max_model_len=max_model_len, **(engine_kwargs or {}))
        self.tokenizer = self.llm.get_tokenizer()
        self._sampling_params = SamplingParams
        self._structured = _structured_outputs_class()  # once: not per request
        self.structured = self._structured is not None  # turned off by the first failure it causes

    # -- request preparation -------------------------------------------------------------
    def _token_ids(self, r: dict) -> list[int]:
        messages = r.get("messages") or ""
        if messages:
            text = self.tokenizer.apply_chat_template(
                json.loads(messages), tokenize=False, add_generation_prompt=True)
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(r.get("prompt") or "", add_special_tokens=False)

    def _make_params(self, kwargs: dict, choice: list[str] | None):
        if choice:
            kwargs = {**kwargs, "structured_outputs": self._structured(choice=choice)}
        return self._sampling_params(**kwargs)

    def _params(self, sampling: dict, prompt_len: int, structured: bool | None = None):
        structured = self.structured if structured is None else structured
        return self._make_params(*sampling_kwargs(sampling, prompt_len, self.max_model_len, structured))

    # -- generation ----------------------------------------------------------------------
    def _run(self, reqs: list[tuple]) -> dict[int, object]:
        """reqs: (row index, prompt token ids, sampling dict, SamplingParams)."""
        outs = self.llm.generate([{"prompt_token_ids": req[1]} for req in reqs],
                                 [req[3] for req in reqs], use_tqdm=False)
        return {req[0]: o for req, o in zip(reqs, outs)}

    def _structured_failed(self, e: Exception) -> None:
        self.structured = False
        print(f"vllm_engine: structured output failed ({type(e).__name__}: {e}); "
              "requests go without their choice from now on", flush=True)

    def _prepare(self, i: int, ids: list[int], sampling: dict) -> tuple:
        """The request tuple; SamplingParams that refuse the choice are built without it."""
        try:
            return i, ids, sampling, self._params(sampling, len(ids))
        except Exception as e:
            if not (sampling.get("choice") and self.structured):
                raise
            params = self._params(sampling, len(ids), structured=False)  # fails too: not the choice
            self._structured_failed(e)
            return i, ids, sampling, params

    def _run_one(self, req: tuple) -> dict[int, object]:
        """One request; one with a choice that fails is resent without it, and if that works the
        choice was the problem: structured output is off for the rest of the engine's life."""
        i, ids, sampling, _ = req
        has_choice = bool(sampling.get("choice"))
        if has_choice and not self.structured:  # turned off by an earlier row of this batch
            req = (i, ids, sampling, self._params(sampling, len(ids), structured=False))
        try:
            return self._run([req])
        except Exception as e:
            if not (has_choice and self.structured):
                raise
            first = e
        out = self._run([(i, ids, sampling, self._params(sampling, len(ids), structured=False))])
        self._structured_failed(first)
        return out

    def generate_rows(self, rows: list[dict]) -> list[dict]:
        reqs, errors = [], {}
        for i, r in enumerate(rows):
            try:
                ids = self._token_ids(r)
                if len(ids) >= self.max_model_len:
                    raise ValueError(f"prompt_too_long: {len(ids)} tokens >= max_model_len {self.max_model_len}")
                reqs.append(self._prepare(i, ids, json.loads(r.get("sampling") or "{}")))
            except Exception as e:  # bad row: reported on that row only
                errors[i] = (f"{type(e).__name__}: {e}" if not str(e).startswith("prompt_too_long") else str(e))
        results = {}
        if reqs:
            try:
                results = self._run(reqs)
            except Exception:
                for req in reqs:  # isolate the row vLLM refuses
                    try:
                        results.update(self._run_one(req))
                    except Exception as e:
                        errors[req[0]] = f"{type(e).__name__}: {e}"
        out = []
        for i, r in enumerate(rows):
            if i in errors or i not in results:
                out.append({**r, "text": "", "finish_reason": "error", "prompt_tokens": 0,
                            "output_tokens": 0, "sample_index": 0, "error": errors.get(i, "no result")})
                continue
            o = results[i]
            for k, c in enumerate(o.outputs):
                out.append({**r, "text": c.text, "finish_reason": str(c.finish_reason),
                            "prompt_tokens": len(o.prompt_token_ids),
                            "output_tokens": len(c.token_ids), "sample_index": k, "error": ""})
        return out

    def __call__(self, batch: pa.Table | dict) -> pa.Table:
        rows = batch.to_pylist() if isinstance(batch, pa.Table) else _dict_rows(batch)
        return pa.Table.from_pylist(self.generate_rows(rows))

    generate_batch = __call__  # the method name long-lived actors are called by (see engine_client)

    def claim(self, pass_id: str, client: str) -> bool:
        """Bind one Ray Data client per engine per pass (actor calls run one at a time)."""
        if getattr(self, "_claim", (None, None))[0] != pass_id:
            self._claim = (pass_id, client)
        return self._claim == (pass_id, client)

    def pid(self) -> int:
        """The engine actor's process id (tests kill it to check restarts)."""
        return os.getpid()

    def threads(self) -> dict:
        """Compute threads the engine runs with, and the cores it may use (tests check the CPU path)."""
        import torch

        return {"torch": torch.get_num_threads(), "cores": len(os.sched_getaffinity(0))}


def _dict_rows(batch: dict) -> list[dict]:
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: _plain(batch[k][i]) for k in keys} for i in range(n)]


def _plain(v):
    return v.tolist() if hasattr(v, "tolist") else v
