"""Evol-Instruct prompts (our wording, following Xu et al. 2023's rules), the parser and the eliminator rules.

Everything here is pure: strings in, strings / reasons out. `pipelines.evol` runs them on the engine.
"""
from __future__ import annotations

import re

from pipelines.config import FilterConfig
from pipelines.filters import find_phrase  # curation's phrase matcher, so both match refusals alike

DEPTH_OPERATIONS = ("add_constraints", "deepen", "concretize", "increase_reasoning")

# How each in-depth operation makes the task harder (one sentence spliced into DEPTH_TEMPLATE).
DEPTH_METHODS = {
    "add_constraints": "Add exactly one further constraint or requirement that a good answer has to meet.",
    "deepen": "Where the task asks about a particular issue or topic, make it probe that issue more deeply "
              "and more broadly.",
    "concretize": "Swap general or abstract notions in the task for more specific, concrete ones.",
    "increase_reasoning": "If the task can be solved with one or two obvious thinking steps, rework it so that "
                          "answering it clearly needs reasoning over several steps.",
}

DEPTH_TEMPLATE = """Your job is to rework a task so that it becomes a little harder for a strong AI assistant to handle.
Follow these rules:
1. The reworked task must still make sense, and a person must be able to understand and answer it.
2. Keep every non-text part of the original, such as code, tables or data, and keep any input it includes.
3. Add only 10 to 20 words to the original; do not make it wordy.
4. Write only the reworked task itself. The phrases "#Given Prompt#", "#Rewritten Prompt#", "given prompt" and "rewritten prompt" must not appear in it.
How to make it harder: {method}

#Given Prompt#:
{instruction}

#Rewritten Prompt#:
"""

BREADTH_TEMPLATE = """Your job is to invent a brand-new task, taking the task below as inspiration.
Follow these rules:
1. The new task must belong to the same domain as the original but be a rarer, less common kind of request.
2. Keep its length and difficulty close to the original's.
3. The new task must make sense, and a person must be able to understand and answer it.
4. Write only the new task itself. The phrases "#Given Prompt#", "#Created Prompt#", "given prompt" and "created prompt" must not appear in it.

#Given Prompt#:
{instruction}

#Created Prompt#:
"""

EQUALITY_TEMPLATE = """Here are two instructions written for an AI assistant.

First instruction:
{first}

Second instruction:
{second}

Do both instructions ask for the same thing, with the same constraints and requirements and the same depth and breadth, so that the second adds no information to the first? Answer Yes or No."""

EQUALITY_CHOICES = ["Yes", "No"]

# Template words that must never leak into an evolved instruction (checked case-insensitively). Models
# echo them in many spellings ("given prompts", "Created-Prompt", "given_prompt", "RewrittenPrompt"), so
# any run of spaces, "_" or "-" may join the words; the letter/digit guards keep "prompted", "promptly"
# and "forgiven prompt" clean ("_" is deliberately not a guard: "the_given_prompt" is a leak).
_LEAK_WORDS = r"(?:given|rewritten|created)[\s_-]*prompts?"
LEAK_PATTERN = re.compile(rf"#\s*{_LEAK_WORDS}\s*#|(?<![a-z0-9]){_LEAK_WORDS}(?![a-z0-9])", re.IGNORECASE)
# A leading echo of the answer slot's header ("#Rewritten Prompt#:", "**Created Prompt:**"): a label,
# not content, so the parser removes it. Anywhere else the same words are a leak and are rejected.
_SLOT_HEADER = re.compile(r"^\s*[*_]*#?\s*(?:rewritten|created)[\s_-]*prompt\s*#?[*_]*\s*(?::|\n)[*_]*\s*",
                          re.IGNORECASE)

# Refusals: the curation filter's phrases (curate.filters.refusal_phrases defaults), so the eliminator and
# curation agree on what a refusal is, plus the paper's bare "sorry" (Xu et al. 2023 drop short responses
# containing it).
REFUSAL_PHRASES = tuple(FilterConfig.model_fields["refusal_phrases"].default) + ("sorry",)

STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just let me more most my myself no nor not of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves yes ok okay oh um uh well also s t ll re ve d
m don doesn didn isn aren wasn weren won wouldn shouldn couldn can't won't don't it's i'm
""".split())


def build_evol_prompt(operation: str, instruction: str) -> str:
    """The evolution prompt for one operation: in-depth (four kinds) or in-breadth ("breadth")."""
    if operation == "breadth":
        return BREADTH_TEMPLATE.format(instruction=instruction.strip())
    if operation not in DEPTH_METHODS:
        raise ValueError(f"unknown evolution operation {operation!r}")
    return DEPTH_TEMPLATE.format(method=DEPTH_METHODS[operation], instruction=instruction.strip())


def build_equality_prompt(parent: str, evolved: str) -> str:
    """The eliminator's Yes/No question: does the evolved instruction add nothing to its parent?"""
    return EQUALITY_TEMPLATE.format(first=parent.strip(), second=evolved.strip())


def parse_evolved(text: str) -> str:
    """The evolved instruction from the model's reply: trimmed, slot header and wrapping quotes removed."""
    t = (text or "").strip()
    t = _SLOT_HEADER.sub("", t, count=1).strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`":
        t = t[1:-1].strip()
    return t


def parse_yes_no(text: str) -> bool | None:
    """True for Yes, False for No, None when the judge's reply is neither."""
    m = re.match(r"\W*(yes|no)\b", (text or "").strip(), re.IGNORECASE)
    return None if m is None else m.group(1).lower() == "yes"


def leaked_words(text: str) -> list[str]:
    """Template words found in `text` (lower-cased, whitespace runs as one space, in order of appearance)."""
    return [" ".join(m.group(0).lower().split()) for m in LEAK_PATTERN.finditer(text or "")]


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", (text or "").lower()))


def evolution_failure(evolved: str, parent: str, finish_reason: str = "stop", error: str = "") -> str | None:
    """Why an evolved instruction fails before any response is generated, or None if it passes."""
    if error:
        return f"engine_error: {error}"
    if not evolved.strip():
        return "empty_evolution"
    leaks = leaked_words(evolved)
    if leaks:
        return f"leaked_template_words: {', '.join(dict.fromkeys(leaks))}"
    if finish_reason == "length":
        return "evolution_truncated"
    if _norm(evolved) == _norm(parent):
        # its own key: a copy is a cheap text check, unlike the model's "no_information_gain" judgement
        return "identical_to_parent"
    return None


def only_stop_words(text: str) -> bool:
    """True when the text has no word outside the stop-word list (punctuation and whitespace ignored)."""
    return all(w in STOP_WORDS for w in re.findall(r"[\w']+", (text or "").lower()))


def refusal_phrase(text: str) -> str | None:
    """The first refusal phrase in `text` (lower-cased; word boundaries, any case, curly quotes folded), or None."""
    found = find_phrase(text, REFUSAL_PHRASES)
    return None if found is None else " ".join(found.lower().split())


def response_failure(text: str, min_words: int = 3, refusal_max_words: int | None = 80,
                     error: str = "", finish_reason: str = "stop") -> str | None:
    """Why a response to an evolved instruction fails the eliminator, or None if it passes.

    refusal_max_words: a refusal phrase counts only in responses shorter than this (the paper's 80, as
    in EvolConfig); None = at any length."""
    if error:
        return f"engine_error: {error}"
    words = (text or "").split()
    if not words:
        return "empty_response"
    if finish_reason == "length":  # cut off mid-answer: not a usable response, however good it starts
        return "response_truncated"
    phrase = refusal_phrase(text)
    if phrase and (refusal_max_words is None or len(words) < refusal_max_words):
        return f"refusal: response contains {phrase!r}"
    if only_stop_words(text):
        return "only_stop_words_and_punctuation"
    if len(words) < min_words:
        return f"too_short: {len(words)} words < {min_words}"
    return None
