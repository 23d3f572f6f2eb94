"""Prompt building and parsing for Self-Instruct (pure functions; no model)."""
from pipelines import self_instruct_prompts as P


def test_instruction_prompt_numbers_and_ends_with_next_index():
    p = P.instruction_prompt(["Say hi.", "Count to  three:\n now"])
    assert p.splitlines() == ["Come up with a series of tasks:", "1. Say hi.", "2. Count to three: now", "3."]


def test_parse_keeps_every_instruction_and_flags_truncated_last():
    text = " Name three rivers in Europe.\n4. Explain why the sky is blue.\n5. Give a synonym for happy"
    out = P.parse_instructions(text, 3, truncated=True)
    assert [i for i, _ in out] == ["Name three rivers in Europe.", "Explain why the sky is blue.",
                                   "Give a synonym for happy"]
    assert [p for _, p in out] == ["", "", "truncated"]
    assert [p for _, p in P.parse_instructions(text, 3, truncated=False)] == ["", "", ""]


def test_parse_splits_only_on_list_markers_not_decimals():
    text = (" Explain why inflation rose to\n10.5 percent last year in simple words.\n"
            "10. Name a river in Africa.\n11.\n12 . Give two uses of copper.")
    assert [i for i, _ in P.parse_instructions(text, 9, False)] == [
        "Explain why inflation rose to 10.5 percent last year in simple words.", "Name a river in Africa.",
        "Give two uses of copper."]
    # the completion's first item needs no space after the prompt's "9."
    assert P.parse_instructions("Name three oceans.\n10. Sort the list.", 9, False) == [
        ("Name three oceans.", ""), ("Sort the list.", "")]


def test_example_stop_is_the_first_example_past_the_cap():
    assert P.example_stop(5) == "Example 6" and P.example_stop(3) == "Example 4"


def test_parse_empty_and_garbage():
    assert P.parse_instructions("", 9, False) == []
    assert P.parse_instructions("\n\n  \n", 9, False) == []


def test_instruction_filters_each_reason():
    assert P.instruction_problem("Explain the water cycle to a child.") == ""
    assert P.instruction_problem("Say hi").startswith("too_short")
    assert P.instruction_problem(" ".join(["word"] * 151)).startswith("too_long")
    assert P.instruction_problem("Describe the image below in detail.") == "blacklisted_keyword: image"
    assert P.instruction_problem("Summarise the attached files for me.") == "blacklisted_keyword: files"
    assert P.instruction_problem("Tell me how to go to the station.") == "blacklisted_keyword: go to"
    assert P.instruction_problem("Describe a mapping between two sets.") == ""  # word boundary, not substring
    assert P.instruction_problem("Write a program that sorts numbers.") == "starts_with_write_a_program"
    assert P.instruction_problem("- List three fruits please.") == "starts_with_punctuation"
    assert P.instruction_problem("Ésto es una tarea nueva aquí.") == "starts_with_non_ascii"


def test_classification_prompt_and_parse():
    p = P.classify_prompt("Tell if the review is positive.")
    assert p.startswith("Can the following task be regarded as a classification task with finite output labels?")
    assert p.endswith("Task: Tell if the review is positive.\nIs it classification?")
    assert P.parse_classification(" Yes") is True
    assert P.parse_classification("no.") is False
    assert P.parse_classification("maybe") is None


def test_input_first_parse_several_instances_and_no_input():
    text = ("Example 1\nInput: 3 + 4\nOutput: 7\nExample 2\nInput: 10 - 2\nOutput: 8\n\nTask: something else\n"
            "Example 1\nInput: x\nOutput: y")
    assert P.parse_input_first(text) == [("3 + 4", "7"), ("10 - 2", "8")]
    assert P.parse_input_first("Output: Drink water and sleep well.") == [("", "Drink water and sleep well.")]
    assert P.parse_input_first("garbage with no markers") == []


def test_output_first_parse_label_then_input():
    text = ("Class label: Positive\nSentence: I loved the film.\nClass label: Negative\n"
            "Sentence: The plot was dull.\n\nTask: next")
    assert P.parse_output_first(text) == [("I loved the film.", "Positive"), ("The plot was dull.", "Negative")]
    assert P.parse_output_first("Class label: Yes") == [("", "Yes")]
    assert P.parse_output_first("no labels here") == []


def test_clean_instances_drops_each_problem_and_caps():
    pairs = [("a", "a"), ("", ""), ("x:", "y"), ("q", "1"), ("q", "1"), ("k", "2"), ("k", "3"),
             ("m", "4"), ("n", "5"), ("o", "6")]
    kept, dropped = P.clean_instances(pairs, max_instances=2)
    assert kept == [("q", "1"), ("m", "4")]
    reasons = {p: r for p, r in dropped}
    assert reasons[("a", "a")] == "input_equals_output"
    assert reasons[("", "")] == "empty_output"
    assert reasons[("x:", "y")] == "ends_with_colon"
    assert reasons[("k", "2")] == reasons[("k", "3")] == "conflicting_outputs_for_input"
    assert reasons[("n", "5")].startswith("over_max_instances")
    assert [r for p, r in dropped if p == ("q", "1")] == ["identical_instance"]
