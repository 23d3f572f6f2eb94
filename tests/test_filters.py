"""Each quality filter keeps a good row and drops a bad one with the right reason."""
import pytest

from pipelines import filters
from pipelines.config import FilterConfig

CFG = FilterConfig()
GOOD = {"instruction": "Summarise the paragraph below in one sentence.",
        "input": "The committee met on Tuesday and agreed to fund the new library wing after a long debate.",
        "output": "After a long debate on Tuesday, the committee agreed to fund the new library wing.",
        "finish_reason": "stop"}


def bad(**changes):
    return {**GOOD, **changes}


CASES = [
    ("length", bad(instruction="Summarise it."), "instruction has 2 words"),
    ("length", bad(instruction="word " * 151), "instruction has 151 words"),
    ("length", bad(output="   "), "output is empty"),
    ("length", bad(output="x" * 20001), "output has 20001 characters"),
    ("length", bad(input="y" * 20001), "input has 20001 characters"),
    ("truncated", bad(finish_reason="length"), "token limit"),
    ("template_markers", bad(instruction="#Rewritten Prompt#: summarise the paragraph"), "#Rewritten Prompt#"),
    ("template_markers", bad(output="### Instruction: do this"), "### Instruction:"),
    ("template_markers", bad(output="Sure <|im_start|>assistant"), "<|im_start|>"),
    ("template_markers", bad(instruction="Summarise the paragraph.\nTask 9: write a poem"), "Task 9:"),
    ("template_markers", bad(output="Output: the committee agreed"), "Output:"),
    ("blacklist", bad(instruction="Describe the image in three sentences."), "'image'"),
    ("blacklist", bad(instruction="Please GO TO the website and summarise it."), "'GO TO'"),
    ("echo", bad(output=GOOD["input"].upper()), "repeats the input"),
    ("echo", bad(output=GOOD["instruction"]), "repeats the instruction"),
    ("refusals", bad(output="As an AI language model, I have no opinions."), "'As an AI language model'"),
    ("refusals", bad(output="I\u2019m sorry, but I can't help with that."), "I'm sorry, but"),
    ("refusals", bad(output="I cannot do that."), "'I cannot'"),
    ("non_alpha", bad(instruction="Compute 12*34+56/7 = ?", output="{[(1234567890)]} %%% 42 ### 99"), "not letters"),
    ("repetition", bad(output="the same line\nthe same line\nthe same line\nanother"), "lines are duplicates"),
    ("repetition", bad(output="buy it now " * 10 + "please"), "top 3-gram"),
]


@pytest.mark.parametrize("name,row,reason", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_filter_drops_bad_row_with_reason(name, row, reason):
    fn = dict(filters.FILTERS)[name]
    assert fn(GOOD, CFG) is None
    got = fn(row, CFG)
    assert got and reason in got
    assert filters.first_failure(row, CFG)[0] == name


def test_every_filter_keeps_the_good_row():
    assert filters.first_failure(GOOD, CFG) is None
    for name, fn in filters.FILTERS:
        assert fn(GOOD, CFG) is None, name


def test_word_boundaries_and_short_outputs_are_kept():
    assert filters.blacklist(bad(instruction="Write a mapping from imagery to plotting terms."), CFG) is None
    assert filters.refusals(bad(output="I cannotate nothing."), CFG) is None
    assert filters.repetition(bad(output="Yes yes yes"), CFG) is None
    assert filters.template_markers(bad(output="Example:\nInput: 3\nOutput: 9"), CFG) is None


def test_order_and_switches():
    row = bad(finish_reason="length", instruction="Draw cats")  # too short, truncated and blacklisted
    assert filters.first_failure(row, CFG)[0] == "length"
    assert filters.first_failure(row, FilterConfig(length=False))[0] == "truncated"
    assert filters.first_failure(row, FilterConfig(length=False, truncated=False))[0] == "blacklist"
    assert filters.first_failure(row, FilterConfig(enabled=False)) is None
    assert [n for n, _ in filters.active(FilterConfig(echo=False))] == [n for n, _ in filters.FILTERS if n != "echo"]


def test_configurable_lists():
    cfg = FilterConfig(blacklist_words=["spreadsheet"], refusal_phrases=["no way"])
    assert filters.blacklist(bad(instruction="Describe the image."), cfg) is None
    assert "spreadsheet" in filters.blacklist(bad(instruction="Open the spreadsheet now."), cfg)
    assert "No way" in filters.refusals(bad(output="No way, sorry."), cfg)
    assert filters.template_markers(bad(output="<|im_start|>"), FilterConfig(marker_patterns=[])) is None
