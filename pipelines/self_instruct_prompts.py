"""Self-Instruct prompt builders and parsers (Wang et al., 2022): pure functions, unit-tested.

Prompts are raw completions, as in the reference implementation: the model continues a numbered
task list, answers "Is it classification?", or continues an example list. The few-shot
demonstrations are our own.
"""
from __future__ import annotations

import re
import string

INSTRUCTION_TEMPLATE = "self_instruct/instructions"
CLASSIFY_TEMPLATE = "self_instruct/is_classification"
OUTPUT_FIRST_TEMPLATE = "self_instruct/output_first"
INPUT_FIRST_TEMPLATE = "self_instruct/input_first"

BLACKLIST = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
             "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# -- instruction generation -----------------------------------------------------------------
def instruction_prompt(instructions: list[str]) -> str:
    """The numbered list prompt; the model continues with instruction len+1, len+2, ..."""
    lines = ["Come up with a series of tasks:"]
    lines += [f"{i + 1}. {_one_line(t).rstrip(':')}" for i, t in enumerate(instructions)]
    return "\n".join(lines) + f"\n{len(instructions) + 1}."


def parse_instructions(completion: str, first_index: int, truncated: bool) -> list[tuple[str, str]]:
    """All instructions of a completion, as (text, problem): problem is "" for a well-formed one.

    The completion starts right after "{first_index}." (the prompt's last line), so its text up to
    the first marker is instruction first_index; later items are split on "\\nN." markers followed
    by whitespace or the end, so "\\n10.5 percent ..." continues an item instead of starting one.
    When generation hit the token limit, the last item is cut off and reported as such.
    """
    parts = re.split(r"\n\s*\d+\s?\.(?=\s|$)", completion)
    items = [_one_line(p) for p in parts]
    items = [i for i in items if i]
    out = []
    for k, inst in enumerate(items):
        inst = inst[0].upper() + inst[1:] if inst else inst
        problem = "truncated" if truncated and k == len(items) - 1 else ""
        out.append((inst, problem))
    return out


def _has_word(word: str, text: str) -> bool:
    return re.search(r"\b" + re.escape(word) + r"\b", text, flags=re.IGNORECASE) is not None


def instruction_problem(inst: str, min_words: int = 3, max_words: int = 150) -> str:
    """Self-Instruct's instruction filters: "" keeps, else the reason it is dropped."""
    n = len(inst.split())
    if n < min_words:
        return f"too_short: {n} words < {min_words}"
    if n > max_words:
        return f"too_long: {n} words > {max_words}"
    hits = [w for w in BLACKLIST if _has_word(w, inst)]
    if hits:
        return f"blacklisted_keyword: {hits[0]}"
    if inst.lower().startswith("write a program"):
        return "starts_with_write_a_program"
    if inst[0] in string.punctuation:
        return "starts_with_punctuation"
    if not inst[0].isascii():
        return "starts_with_non_ascii"
    return ""


# -- classification identification ------------------------------------------------------------
_CLF_SHOTS = [
    ("Decide whether the review below is positive or negative.", "Yes"),
    ("Suggest three names for a neighbourhood bakery.", "No"),
    ("Is the following number prime? Answer yes or no.", "Yes"),
    ("Explain how a refrigerator keeps food cold.", "No"),
    ("Label the sentence as a question, a command or a statement.", "Yes"),
    ("Rewrite the paragraph in a more formal tone.", "No"),
    ("Which of the two animals is heavier?", "No"),
    ("Tell whether the email is spam.", "Yes"),
]


def classify_prompt(instruction: str) -> str:
    lines = ["Can the following task be regarded as a classification task with finite output labels?", ""]
    for task, answer in _CLF_SHOTS:
        lines += [f"Task: {task}", f"Is it classification? {answer}", ""]
    lines += [f"Task: {_one_line(instruction)}", "Is it classification?"]
    return "\n".join(lines)


def parse_classification(text: str) -> bool | None:
    """Yes -> True, No -> False, anything else -> None (counted as a parse failure)."""
    t = text.strip().lower()
    if t.startswith("yes"):
        return True
    if t.startswith("no"):
        return False
    return None


# -- instance generation ----------------------------------------------------------------------
def input_first_prompt(instruction: str) -> str:
    return (
        "Come up with examples for the following tasks. Try to generate multiple examples when possible. "
        "If the task doesn't require additional input, you can generate the output directly.\n\n"
        "Task: Give the capital city of the country.\n"
        "Example 1\nInput: France\nOutput: Paris\n"
        "Example 2\nInput: Japan\nOutput: Tokyo\n\n"
        "Task: Share a tip for falling asleep faster.\n"
        "Output: Keep a fixed bedtime and put your phone away half an hour before it.\n\n"
        "Task: Convert the temperature from Celsius to Fahrenheit.\n"
        "Example 1\nInput: 100 C\nOutput: 212 F\n"
        "Example 2\nInput: 0 C\nOutput: 32 F\n\n"
        f"Task: {_one_line(instruction)}\n")


def output_first_prompt(instruction: str) -> str:
    return (
        "Given the classification task definition and the class labels, generate an input that "
        "corresponds to each of the class labels. If the task doesn't require input, just generate "
        "the correct class label.\n\n"
        "Task: Classify the sentiment of the sentence as positive or negative.\n"
        "Class label: Positive\nSentence: The staff were friendly and the soup was excellent.\n"
        "Class label: Negative\nSentence: We waited an hour and the order was still wrong.\n\n"
        "Task: Is the statement true or false?\n"
        "Class label: True\nStatement: Water boils at 100 degrees Celsius at sea level.\n"
        "Class label: False\nStatement: The Moon is larger than the Earth.\n\n"
        f"Task: {_one_line(instruction)}\n")


def example_stop(max_instances: int) -> str:
    """The stop string of instance generation: the header of the first example past the cap, as
    Self-Instruct stops at f"Example {max_instances_to_generate + 1}" (later ones would be dropped)."""
    return f"Example {max_instances + 1}"


def parse_input_first(text: str) -> list[tuple[str, str]]:
    """(input, output) pairs of an input-first completion; input is "" when the task needs none.

    Markers ("Example N", "Input:", "Output:") are read in order: an output runs up to the next
    marker, so "Input: a Output: b Input: c Output: d" without example headers is two instances."""
    text = re.split(r"\n\s*Task\s*:", text)[0]
    out, inp = [], None
    marks = list(re.finditer(r"(?:^|(?<=\s))(Example\s*\d+\s*:?|Input\s*:|Output\s*:)", text))
    for k, m in enumerate(marks):
        body = text[m.end():marks[k + 1].start() if k + 1 < len(marks) else len(text)].strip()
        kind = m.group(1)[0].lower()
        if kind == "e":
            inp = None
        elif kind == "i":
            inp = body
        else:
            out.append(((inp or "").strip(), body))
            inp = None
    return out


def parse_output_first(text: str) -> list[tuple[str, str]]:
    """(input, label) pairs of an output-first completion: "Class label: L" then the input."""
    text = re.split(r"\n\s*Task\s*:", text)[0]
    out = []
    for chunk in re.split(r"Class label\s*:", text)[1:]:
        label, _, rest = chunk.strip().partition("\n")
        rest = re.sub(r"^\s*[A-Za-z ]{1,30}:\s*", "", rest.strip(), count=1)  # "Sentence:", "Input:", ...
        if label.strip():
            out.append((rest.strip(), label.strip()))
    return out


def instance_problem(inp: str, out: str) -> str:
    """Self-Instruct's per-instance filters: "" keeps, else the reason."""
    if not out.strip():
        return "empty_output"
    if inp.strip() == out.strip():
        return "input_equals_output"
    if inp.strip().endswith(":") or out.strip().endswith(":"):
        return "ends_with_colon"
    return ""


def clean_instances(pairs: list[tuple[str, str]], max_instances: int) -> tuple[list[tuple[str, str]], list[tuple[tuple[str, str], str]]]:
    """Filter a task's instances: bad ones, identical repeats, same input with different outputs
    (all of them: the task is inconsistent there), then keep at most `max_instances`."""
    kept, dropped, seen = [], [], set()
    for p in pairs:
        problem = instance_problem(*p)
        if problem:
            dropped.append((p, problem))
        elif p in seen:
            dropped.append((p, "identical_instance"))
        else:
            seen.add(p)
            kept.append(p)
    outputs_by_input: dict[str, set] = {}
    for inp, out in kept:
        outputs_by_input.setdefault(inp, set()).add(out)
    conflicting = {i for i, outs in outputs_by_input.items() if len(outs) > 1 and i.strip()}
    final = []
    for p in kept:
        if p[0] in conflicting:
            dropped.append((p, "conflicting_outputs_for_input"))
        elif len(final) >= max_instances:
            dropped.append((p, f"over_max_instances: {max_instances}"))
        else:
            final.append(p)
    return final, dropped
