"""Generation throughput: plain `vllm.LLM.generate` in one process vs seedforge's Ray Data engine pool.

Same model, same Self-Instruct instruction prompts, same sampling, fixed output length
(ignore_eos), in one run. Prints output tokens/s of both and the ratio (target: pool >= 0.95).

    python bench/generate.py --prompts 256 --max-tokens 64
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def prompts(n: int, seed: int = 0) -> list[str]:
    from pipelines.seeds import load_seed_tasks
    from pipelines.self_instruct_prompts import instruction_prompt

    tasks = [t["instruction"] for t in load_seed_tasks("configs/data/seed_tasks.jsonl")]
    rng = random.Random(seed)
    return [instruction_prompt(rng.sample(tasks, 8)) for _ in range(n)]


def plain(model: str, texts: list[str], sampling: dict, engine_kw: dict) -> tuple[int, float]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, max_model_len=2048, **engine_kw)
    llm.generate(texts[:4], SamplingParams(max_tokens=4))  # warm-up, as the pool's start-up does
    t = time.time()
    outs = llm.generate(texts, [SamplingParams(**sampling, seed=i) for i in range(len(texts))], use_tqdm=False)
    dt = time.time() - t
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    del llm
    gc.collect()
    return tokens, dt


def pool(model: str, texts: list[str], sampling: dict, ecfg) -> tuple[int, float]:
    import ray

    from pipelines.llm import EnginePool, request

    ray.init(num_cpus=2, include_dashboard=False)
    p = EnginePool(model, ecfg, seed=0)
    p.generate([request(prompt=t, sampling=json.dumps({"max_tokens": 4})) for t in texts[:4]])  # warm-up
    rows = [request(prompt=t, sampling=json.dumps({**sampling, "seed": i})) for i, t in enumerate(texts)]
    t = time.time()
    outs = p.generate(rows)
    dt = time.time() - t
    p.shutdown()
    ray.shutdown()
    return sum(o["output_tokens"] for o in outs), dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="rows per Ray Data batch")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()

    from pipelines.models import resolve_model

    model = resolve_model(args.model)
    texts = prompts(args.prompts)
    sampling = {"temperature": 0.7, "top_p": 0.5, "max_tokens": args.max_tokens, "ignore_eos": True}
    from pipelines.config import EngineConfig
    from pipelines.llm import engine_args

    ecfg = EngineConfig(batch_size=args.batch_size, max_num_seqs=args.max_num_seqs)
    engine_kw = engine_args(ecfg, seed=0)  # the exact engine arguments the pool uses
    t_plain, s_plain = plain(model, texts, sampling, engine_kw)
    t_pool, s_pool = pool(model, texts, sampling, ecfg)
    r_plain, r_pool = t_plain / s_plain, t_pool / s_pool
    print(f"\n{'':14}{'tokens':>8}{'seconds':>10}{'tok/s':>10}")
    print(f"{'plain vLLM':14}{t_plain:>8}{s_plain:>10.1f}{r_plain:>10.1f}")
    print(f"{'seedforge pool':14}{t_pool:>8}{s_pool:>10.1f}{r_pool:>10.1f}")
    print(f"ratio pool/plain: {r_pool / r_plain:.3f} (target >= 0.95); {args.prompts} prompts, "
          f"{args.max_tokens} output tokens each, max_num_seqs {args.max_num_seqs}, batch {args.batch_size}")


if __name__ == "__main__":
    main()
