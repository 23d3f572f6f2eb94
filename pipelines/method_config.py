"""Typed config sections for the extra generation methods: evol, orca, backtranslate, flan.

The lead mounts them as top-level sections of `pipelines.config.Config`; every field has a
description (like the rest of the config) so errors and docs can say what a key means.
"""
from __future__ import annotations

from typing import Literal, Optional, Union, get_args

from pydantic import field_validator

from pipelines.config_base import F, SamplingConfig, Section
from pipelines.flan_templates import REQUIRED as FLAN_FAMILIES

EVOL_OPERATIONS = ("add_constraints", "deepen", "concretize", "increase_reasoning", "breadth")
EvolOperation = Literal["add_constraints", "deepen", "concretize", "increase_reasoning", "breadth"]
# The keys of pipelines.orca.SYSTEM_MESSAGES, repeated so a typo fails at config load without importing
# that module (it pulls in ray); a test keeps the two equal.
OrcaSystemName = Literal["step_by_step", "explain_like_five", "think_first", "justify_steps", "detailed", "brief",
                         "teacher_hints", "options_reasoning", "faithful_follow", "expert_plain", "structured",
                         "check_work", "examples", "socratic"]
ORCA_SYSTEM_NAMES = get_args(OrcaSystemName)


class EvolSampling(Section):
    evolve: SamplingConfig = F(SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=256),
                               "Sampling for rewriting an instruction (in-depth or in-breadth evolution).")
    judge: SamplingConfig = F(SamplingConfig(temperature=0.0, max_tokens=2),
                              "Sampling for the eliminator's Yes/No equality question (a structured choice).")
    respond: SamplingConfig = F(SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=384),
                                "Sampling for the response to each evolved instruction.")


class EvolConfig(Section):
    rounds: int = F(2, "Evolution rounds (depth); each round evolves the survivors of the previous one, "
                       "a failed evolution leaves its parent to be evolved again.", ge=1)
    operations: list[EvolOperation] = F(list(EVOL_OPERATIONS),
                                        "Operations to draw from, one per row per round (uniform, seeded by row id).",
                                        min_length=1)
    max_rows: Optional[int] = F(None, "Evolve at most this many input rows (the first by id); null = all.", ge=1)
    equality_check: bool = F(True, "Ask the model whether the evolved instruction adds no information over "
                                   "its parent (Yes/No structured choice); Yes drops the evolution.")
    min_response_words: int = F(3, "Responses with fewer words are dropped as too short.", ge=0)
    refusal_max_words: Optional[int] = F(80, "A response containing 'sorry' or one of curation's refusal phrases "
                                             "(curate.filters.refusal_phrases defaults) is a refusal only when it "
                                             "has fewer words than this (the paper's rule: 80); null = at any length.",
                                         ge=1)
    sampling: EvolSampling = F(EvolSampling(), "Sampling per Evol-Instruct step.")


class OrcaConfig(Section):
    system_messages: list[OrcaSystemName] = F([], "Names of system messages to sample from (see "
                                                  "pipelines.orca.SYSTEM_MESSAGES); empty = all of them.")
    max_rows: Optional[int] = F(None, "Explain at most this many input rows (the first by id); null = all.", ge=1)
    min_response_words: int = F(1, "Responses with fewer words are rejected.", ge=0)
    sampling: SamplingConfig = F(SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=512),
                                 "Sampling for the explanation-style responses.")


class BacktranslateSampling(Section):
    augment: SamplingConfig = F(SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=128),
                                "Sampling for writing the instruction a text answers (self-augmentation).")
    curate: SamplingConfig = F(SamplingConfig(temperature=0.0, max_tokens=160),
                               "Sampling for the 1-5 quality rating (self-curation).")


class BacktranslateConfig(Section):
    input: Union[str, list[str]] = F("configs/data/backtranslate", "Unlabelled text: a folder or file(s) of "
                                     "Parquet, JSONL or .txt (paragraphs separated by blank lines are the units).")
    column: str = F("text", "Column holding the text in Parquet / JSONL input.")
    min_words: int = F(20, "Texts with fewer words are rejected (headings, fragments).", ge=1)
    max_words: int = F(600, "Texts with more words are rejected (would not fit the prompt).", ge=1)
    max_texts: Optional[int] = F(None, "Use at most this many texts (in file order); null = all.", ge=1)
    min_score: float = F(4.0, "Self-curation: keep pairs the model rates at least this (1-5; the paper kept 4 and 5).",
                         ge=1, le=5)
    structured_score: bool = F(False, "Constrain the rating to 'Score: 1'..'Score: 5' with a structured choice "
                                      "instead of parsing free text (helps small models).")
    sampling: BacktranslateSampling = F(BacktranslateSampling(), "Sampling per back-translation step.")


class FlanColumns(Section):
    family: str = F("task", "Column naming the task family: nli, sentiment, extractive_qa, summarization, "
                            "translation, topic or paraphrase (optional when flan.family is set).")
    text: str = F("text", "Main text column (premise, review, passage, document, source sentence, first sentence).")
    text2: str = F("text2", "Second text column: hypothesis (nli), question (extractive_qa), second sentence (paraphrase).")
    label: str = F("label", "Target column: class label, answer span, summary or translation.")
    rationale: str = F("rationale", "Optional explanation column; non-empty values give chain-of-thought variants.")


class FlanConfig(Section):
    input: str = F("configs/data/flan_sample.csv", "Labelled data: a Parquet, JSONL or CSV file.")
    columns: FlanColumns = F(FlanColumns(), "Mapping from roles to the input's column names.")
    family: Optional[str] = F(None, "Task family of rows without one (the data has no family column, or the cell "
                                    "is empty), e.g. sentiment for a single-task CSV; null = every row needs it.")
    label_names: dict[str, str] = F({}, "Label renames applied as the data is read, e.g. {0: negative, "
                                        "1: positive}; keys are compared with the label's text, unlisted labels "
                                        "stay as they are.")
    label_options: dict[str, list[str]] = F({}, "Options listed per family (family -> labels); families not given "
                                                "here use the sorted distinct labels found in the data.")
    few_shot_rate: float = F(0.3, "Share of rows written few-shot (k exemplars of the same family), chosen per row "
                                  "with a seeded draw; the rest are zero-shot.", ge=0, le=1)
    k: int = F(2, "Exemplars in a few-shot prompt (fewer if the family has fewer other rows, or to fit "
                  "max_instruction_words).", ge=1)
    max_instruction_words: int = F(150, "Few-shot prompts drop exemplars (last drawn first) until the prompt has "
                                        "at most this many words; with none left the row is written zero-shot. "
                                        "Keep it at curate.filters.max_instruction_words, which drops longer "
                                        "instructions.", ge=1)
    cot: bool = F(True, "Also write a chain-of-thought row for each row with a rationale "
                        "(output = rationale + 'So the answer is X.').")
    inversion: bool = F(False, "Also write input-inverted rows (ask for the input given the output).")
    inversion_rate: float = F(0.5, "Share of rows that get an inverted variant when inversion is on.", ge=0, le=1)
    source_language: str = F("English", "Language of `text` for translation rows.")
    target_language: str = F("French", "Language of `label` for translation rows.")
    max_rows: Optional[int] = F(None, "Use at most this many input rows (in file order); null = all.", ge=1)

    @field_validator("family")
    @classmethod
    def _known_family(cls, v):
        if v is not None and v not in FLAN_FAMILIES:
            raise ValueError(f"unknown family {v!r}; known: {', '.join(FLAN_FAMILIES)}")
        return v

    @field_validator("label_names", mode="before")
    @classmethod
    def _names_as_text(cls, v):
        # YAML reads {0: negative} with int keys; labels are compared as text (CSV cells are text)
        return {str(k): str(val) for k, val in v.items()} if isinstance(v, dict) else v
