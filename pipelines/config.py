"""Typed run configuration: YAML in configs/, validated here, with dotted key=value overrides.

Every field has a description (a test checks it), so `seedforge run --help` style docs and error
messages can say what a key means. Unknown keys and wrong types are errors that name the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import ValidationError, field_validator


from pipelines.config_base import F, ConfigError, SamplingConfig, Section  # noqa: F401 (re-exported)
from pipelines.method_config import BacktranslateConfig, EvolConfig, FlanConfig, OrcaConfig


class RayConfig(Section):
    address: Optional[str] = F(None, "Ray cluster address; null joins a local `ray start` cluster or starts one; "
                                     "'local' always starts a fresh one.")
    num_cpus: Optional[int] = F(None, "CPUs for a local cluster started by seedforge; null = all.")
    data_logs: bool = F(False, "Show Ray Data's progress bars and INFO lines (each execution's plan; off a terminal, "
                               "a progress table every few seconds) on the console; seedforge prints its own "
                               "progress. Ray Data's log file (logs/ray-data/ray-data.log) always has them.")


class EngineConfig(Section):
    pool_size: int = F(1, "Number of vLLM engine actors; fixed for the run (engine start-up is expensive).", ge=1)
    tensor_parallel_size: int = F(1, "GPUs per engine (tensor parallel); 1 on the CPU.", ge=1)
    num_gpus: float = F(0, "GPUs per engine actor when tensor_parallel_size is 1; 0 runs on the CPU.", ge=0)
    num_cpus: float = F(1, "CPUs reserved per engine actor.", ge=0)
    dtype: str = F("float32", "Model dtype for vLLM; float32 on CPUs without bf16 instructions.")
    max_model_len: int = F(2048, "Context length; longer prompts are rejected with a reason.", ge=64)
    max_num_seqs: int = F(64, "Sequences the engine batches at once.", ge=1)
    batch_size: int = F(64, "Rows per Ray Data batch sent to an engine.", ge=1)
    gpu_memory_utilization: float = F(0.9, "Share of GPU memory vLLM may use.", gt=0, le=1)
    enforce_eager: bool = F(True, "Skip CUDA graph / compile warm-up (fast start; the CPU needs it).")
    cpu_threads: Optional[int] = F(
        None, "Compute threads of a CPU engine; null = every core the engine process may run on. Ray caps "
              "an actor's threads at its num_cpus (OMP_NUM_THREADS), which on the CPU would leave cores idle.", ge=1)
    cpu_kvcache_gb: int = F(1, "KV cache size in GiB on the CPU (VLLM_CPU_KVCACHE_SPACE).", ge=1)
    max_retries: int = F(3, "Times a failed engine call is retried (actor restart included).", ge=0)


class SelfInstructSampling(Section):
    instructions: SamplingConfig = F(
        SamplingConfig(temperature=0.7, top_p=0.5, max_tokens=256, stop=["\n\n", "\n16", "16.", "16 ."]),
        "Sampling for instruction generation (Self-Instruct used temperature 0.7, top_p 0.5).")
    classify: SamplingConfig = F(
        SamplingConfig(temperature=0.0, max_tokens=3), "Sampling for the is-classification question.")
    instances: SamplingConfig = F(
        SamplingConfig(temperature=0.0, max_tokens=300, stop=["Task:"]),
        "Sampling for instance generation; \"Example {generate.max_instances_per_task + 1}\" is always added "
        "to its stop strings (as in Self-Instruct: examples past the cap would be dropped).")


class GenerateConfig(Section):
    methods: list[Literal["self_instruct", "evol_instruct", "orca", "backtranslate", "flan"]] = F(
        ["self_instruct"], "Generation methods, applied in order (each later one works on the rows so far).")
    rounds: int = F(1, "Self-Instruct rounds; the task pool grows each round.", ge=1)
    target_instructions: int = F(1000, "Stop when the pool holds this many machine instructions.", ge=1)
    prompts_per_round: int = F(64, "Instruction-generation prompts per round.", ge=1)
    num_human: int = F(6, "Human seed instructions shown per prompt.", ge=0)
    num_machine: int = F(2, "Machine instructions shown per prompt (fewer while the pool has fewer).", ge=0)
    rouge_threshold: float = F(0.7, "Drop an instruction whose ROUGE-L F with the pool exceeds this.", ge=0, le=1)
    exact_novelty_scores: bool = F(True, "Store the exact best ROUGE-L and most similar instruction on kept rows "
                                         "too: computed in Ray tasks beside the classification pass, not by the filter, "
                                         "whose decisions are always exact and never wait for it (its CPU cost per row "
                                         "grows with the pool; false: kept rows carry the filter's lower bound).")
    max_instances_per_task: int = F(5, "Most instances kept per instruction; instance generation stops at "
                                       "\"Example {this + 1}\".", ge=1)
    use_structured_output: bool = F(True, "Answer the classification question with a Yes/No choice via vLLM structured "
                                          "output where the engine supports it (else the free-text answer is parsed).")
    sampling: SelfInstructSampling = F(SelfInstructSampling(), "Sampling parameters per Self-Instruct step.")

    @field_validator("methods")
    @classmethod
    def _self_instruct_once(cls, v):
        if v.count("self_instruct") > 1:  # its rounds already grow one pool; a second pass would share its commits
            raise ValueError("self_instruct may appear once; use generate.rounds for more rounds")
        return v


class MinHashConfig(Section):
    enabled: bool = F(True, "Remove near duplicates with MinHash LSH.")
    threshold: float = F(0.7, "Jaccard threshold for near duplicates.", gt=0, le=1)
    num_perm: int = F(128, "MinHash permutations.", ge=8)
    shingle: Literal["word", "char"] = F("word", "Shingle unit (of the casefolded text without punctuation).")
    ngram: int = F(3, "Shingle size (words or characters); a shorter text is one shingle.", ge=1)
    bands: Optional[int] = F(None, "LSH bands; null lets datasketch's optimiser choose for the threshold.", ge=1)
    rows: Optional[int] = F(None, "LSH rows per band; null lets datasketch's optimiser choose.", ge=1)
    fn_weight: float = F(0.7, "Weight of false negatives in datasketch's choice of bands/rows (its weights="
                              "(1 - w, w)). Above 0.5 favours recall: more candidate pairs, which verification "
                              "then checks, so precision hardly moves. datasketch's default is 0.5.", gt=0, lt=1)
    verify: bool = F(True, "Keep only candidate links whose estimated Jaccard reaches the threshold.")
    seed: int = F(1, "MinHash seed (datasketch's default is 1).")
    batch_size: int = F(1024, "Rows per signature batch (Ray Data map_batches).", ge=1)
    max_exact_bucket: int = F(2000, "Largest LSH bucket (distinct signatures) verified all-pairs; larger "
                                    "ones are verified against at most 64 anchors (star peeling).", ge=2)


class FilterConfig(Section):
    enabled: bool = F(True, "Apply the heuristic quality filters.")
    length: bool = F(True, "Drop rows outside the length bounds below.")
    min_instruction_words: int = F(3, "Fewest words in an instruction.", ge=0)
    max_instruction_words: int = F(150, "Most words in an instruction.", ge=1)
    max_input_chars: int = F(20000, "Most characters in an input.", ge=0)
    min_output_chars: int = F(1, "Fewest characters in an output (stripped).", ge=0)
    max_output_chars: int = F(20000, "Most characters in an output.", ge=1)
    blacklist: bool = F(True, "Drop instructions with Self-Instruct's blacklisted keywords (image, graph, ...).")
    blacklist_words: list[str] = F(
        ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
         "plot", "go to", "video", "audio", "music", "flowchart", "diagram"],
        "Blacklisted words/phrases (Self-Instruct's list), matched on word boundaries in any case.")
    refusals: bool = F(True, "Drop outputs that refuse or carry AI boilerplate.")
    refusal_phrases: list[str] = F(
        ["as an ai language model", "as a language model", "as an ai assistant", "i'm sorry, but",
         "i am sorry, but", "i apologize, but", "i cannot", "i can't assist", "i can't help", "i'm unable to",
         "i am unable to", "i'm not able to", "i am not able to"],
        "Refusal/boilerplate phrases searched in outputs on word boundaries, in any case.")
    repetition: bool = F(True, "Drop outputs with Gopher-style repeated lines / n-grams.")
    max_dup_line_frac: float = F(0.3, "Most share of duplicated lines in an output.", ge=0, le=1)
    max_top_ngram_frac: float = F(0.3, "Most share of characters in the most common repeated 3-gram of an output.", ge=0, le=1)
    non_alpha: bool = F(True, "Drop rows whose text is mostly non-alphabetic.")
    max_non_alpha_frac: float = F(0.8, "Most share of non-alphabetic characters in instruction+output.", ge=0, le=1)
    truncated: bool = F(True, "Drop rows whose generation stopped at the token limit.")
    echo: bool = F(True, "Drop outputs equal to the input or the instruction.")
    template_markers: bool = F(True, "Drop rows with leaked prompt template markers.")
    marker_patterns: list[str] = F(
        [r"#\s*(Rewritten|Created|Given|Original)\s+Prompt\s*#", r"###\s*(Instruction|Input|Response|Output)\s*:",
         r"<\|(im_start|im_end|endoftext|eot_id|start_header_id|end_header_id|system|user|assistant)\|>",
         r"\[/?INST\]", r"<</?SYS>>", r"(^|\n)\s*Task\s*\d+\s*[:.]", r"^\s*(Instruction|Input|Output)\s*:"],
        "Regexes of leaked prompt-template markers, searched in every text field (^ = start of the field).")


class CurateConfig(Section):
    columns: list[str] = F(["instruction", "input", "output"], "Columns whose text is compared for duplicates.")
    filters: FilterConfig = F(FilterConfig(), "Heuristic quality filters (applied first).")
    exact_dedup: bool = F(True, "Remove exact duplicates of the normalised text (casefold, no punctuation).")
    minhash: MinHashConfig = F(MinHashConfig(), "Near-duplicate removal (after exact dedup).")
    rows_per_shard: int = F(100_000, "Rows per output Parquet shard (on average: shards are hash buckets of the id).", ge=1)
    num_partitions: Optional[int] = F(None, "Shuffle partitions of the dedup steps; null sizes them from the data.", ge=1)


class TrainConfig(Section):
    enabled: bool = F(True, "Run training in `seedforge run`.")
    num_workers: int = F(1, "Ray Train workers.", ge=1)
    use_gpu: bool = F(False, "Train on GPUs.")
    cpus_per_worker: float = F(0.5, "CPUs per Ray Train worker (leave room for Ray Data).", gt=0)
    strategy: Literal["ddp", "fsdp2"] = F("ddp", "Data parallel (DDP) or fully sharded (FSDP2 fully_shard).")
    dtype: Literal["float32", "bfloat16"] = F("float32", "Training dtype (bfloat16 on GPUs).")
    max_seq_len: int = F(512, "Longest token sequence; longer examples are truncated.", ge=16)
    packing: bool = F(True, "Pack several examples per sequence.")
    lambda_prompt: float = F(0.0, "Loss weight of prompt tokens (WIT); 0 = response-only.", ge=0)
    lambda_response: float = F(1.0, "Loss weight of response tokens (WIT).", ge=0)
    template: Literal["auto", "chat", "plain"] = F("auto", "auto = the model's chat template if it has one, else plain.")
    micro_batch_size: int = F(4, "Sequences per worker per micro-batch.", ge=1)
    grad_accum: int = F(1, "Micro-batches per optimiser step.", ge=1)
    lr: float = F(2e-5, "Peak learning rate.", gt=0)
    weight_decay: float = F(0.0, "AdamW weight decay.", ge=0)
    warmup_steps: int = F(0, "Linear warm-up steps.", ge=0)
    max_steps: int = F(10, "Optimiser steps.", ge=1)
    checkpoint_every: int = F(5, "Save a checkpoint every N steps.", ge=1)
    max_failures: int = F(0, "Worker failures Ray Train tolerates (FailureConfig).", ge=-1)
    eval_fraction: float = F(0.05, "Share of rows held out for evaluation loss.", ge=0, lt=1)
    eval_file: Optional[str] = F(None, "JSONL of held-out instructions with reference outputs for ROUGE-L eval.")
    eval_samples: int = F(8, "Instructions of eval_file to generate for.", ge=0)
    gradient_checkpointing: bool = F(False, "Recompute activations to save memory.")
    lora_r: int = F(0, "LoRA rank via peft (all linear layers; strategy ddp only); 0 trains all weights.", ge=0)
    lora_alpha: float = F(16.0, "LoRA alpha; the update is scaled by lora_alpha / lora_r.", gt=0)
    seed: int = F(0, "Training seed.")
    lr_schedule: Literal["cosine", "linear", "constant"] = F("cosine", "Decay after warm-up, to 0 at max_steps.")
    max_grad_norm: float = F(1.0, "Gradient clipping norm; 0 disables clipping.", ge=0)
    eval_every: int = F(0, "Held-out loss every N steps; 0 = only after the last step.", ge=0)
    eval_max_new_tokens: int = F(64, "Greedy tokens generated per eval_file instruction (ROUGE-L).", ge=1)
    torch_threads: Optional[int] = F(None, "Torch CPU threads per worker; null = Ray's default (the worker's CPUs, at least 1).", ge=1)
    peak_tflops: Optional[float] = F(None, "Peak TFLOPS of one GPU for MFU; null = look the GPU up in a small table.", gt=0)
    keep_checkpoints: int = F(2, "Most recent checkpoints kept in output_dir/ray_train/train.", ge=1)
    resume: bool = F(True, "Resume from the latest checkpoint in output_dir/ray_train/train; false deletes it and starts afresh.")


class Config(Section):
    model: str = F("smollm2-135m", "Model: smollm2-135m (embedded), a Hugging Face id or a local folder.")
    seed_file: str = F("configs/data/seed_tasks.jsonl", "Seed tasks (Self-Instruct JSONL format).")
    output_dir: str = F("runs/demo", "Run directory: data/, rejected/, manifest.json, model/. A path (local or a "
                                     "shared file system) or a pyarrow.fs URI such as s3://bucket/runs/x.")
    data_dir: Optional[str] = F(None, "Parquet to train on; default output_dir/data.")
    seed: int = F(0, "Random seed for sampling prompts.")
    ray: RayConfig = F(RayConfig(), "Ray cluster.")
    engine: EngineConfig = F(EngineConfig(), "vLLM engine pool.")
    generate: GenerateConfig = F(GenerateConfig(), "Generation.")
    evol: EvolConfig = F(EvolConfig(), "Evol-Instruct (method evol_instruct).")
    orca: OrcaConfig = F(OrcaConfig(), "Orca-style system-message responses (method orca).")
    backtranslate: BacktranslateConfig = F(BacktranslateConfig(), "Instruction back-translation (method backtranslate).")
    flan: FlanConfig = F(FlanConfig(), "FLAN-style templates over labelled data (method flan).")
    curate: CurateConfig = F(CurateConfig(), "Curation.")
    train: TrainConfig = F(TrainConfig(), "Instruction tuning.")


def _set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override {key}: {p} is not a section")
    d[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, object]]:
    out = []
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not key=value")
        k, v = o.split("=", 1)
        out.append((k.strip(), yaml.safe_load(v) if v else ""))
    return out


def _error(source: str, e: ValidationError) -> ConfigError:
    lines = []
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{source}: {key}: {msg}")
    return ConfigError("\n".join(lines))


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls=Config) -> Config:
    """Load YAML (or defaults when path is None), apply key=value overrides, validate."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of keys")
    for k, v in parse_overrides(list(overrides)):
        _set_dotted(data, k, v)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise _error(source if not overrides else f"{source} (with overrides)", e) from None
