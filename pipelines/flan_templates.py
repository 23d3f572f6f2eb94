"""FLAN-style instruction templates per task family (written for seedforge, in the spirit of Wei et al.
2021 and Longpre et al. 2023). Placeholders: {text}, {text2}, {options}, {label}, {src}, {tgt}.

TEMPLATES[family] are the forward templates (output = the label); INVERTED[family] ask for an
input given the output, and INVERT_OUTPUT[family] names the field the inverted row outputs.
Every template of a family with labels contains {options}.
"""
from __future__ import annotations

# Fields each family needs (besides the family itself); text2 only where it has a meaning.
REQUIRED = {
    "nli": ("text", "text2", "label"),
    "sentiment": ("text", "label"),
    "extractive_qa": ("text", "text2", "label"),
    "summarization": ("text", "label"),
    "translation": ("text", "label"),
    "topic": ("text", "label"),
    "paraphrase": ("text", "text2", "label"),
}
LABEL_FAMILIES = ("nli", "sentiment", "topic", "paraphrase")  # outputs are one of listed options

TEMPLATES: dict[str, list[str]] = {
    "nli": [
        "Premise: {text}\nHypothesis: {text2}\n\nDoes the premise entail the hypothesis?\n\n{options}",
        "{text}\n\nBased on the sentence above, how does it relate to this statement? \"{text2}\"\n\n{options}",
        "Read the first sentence and decide whether the second one follows from it, contradicts it, or "
        "neither.\n\nFirst: {text}\nSecond: {text2}\n\n{options}",
        "If \"{text}\" is true, what can we say about \"{text2}\"?\n\n{options}",
        "Suppose this is true: {text}\nHow does it bear on the claim: {text2}\n\n{options}",
        "Here is a situation: {text}\nAnd here is a statement about it: {text2}\nChoose the label that "
        "describes how the statement relates to the situation.\n\n{options}",
        "Sentence A: {text}\nSentence B: {text2}\nWhat is the relation of sentence B to sentence A?\n\n{options}",
        "{text}\nQuestion: does this imply that \"{text2}\"? Pick the best label.\n\n{options}",
        "Decide whether the hypothesis is supported by, contradicted by, or unrelated to the premise.\n"
        "Premise: {text}\nHypothesis: {text2}\n\n{options}",
    ],
    "sentiment": [
        "{text}\n\nWhat is the sentiment of this review?\n\n{options}",
        "Review: {text}\nHow does the writer feel about what they describe?\n\n{options}",
        "Classify the sentiment of the following text.\n\n{text}\n\n{options}",
        "Read this customer comment and tell me its overall tone.\n\"{text}\"\n\n{options}",
        "{text}\nDid the author of this text have a good or a bad experience? Answer with one of the "
        "options.\n\n{options}",
        "Sentiment analysis:\n{text}\n\n{options}",
        "Would you call the following opinion favourable or unfavourable?\n{text}\n\n{options}",
        "Text: {text}\nWhich label best describes the sentiment expressed above?\n\n{options}",
    ],
    "extractive_qa": [
        "Read the passage and answer the question using words from the passage.\n\nPassage: {text}\n\n"
        "Question: {text2}",
        "{text}\n\nAnswer this question based on the text above: {text2}",
        "Context: {text}\nQuestion: {text2}\nAnswer:",
        "Here is a short article:\n{text}\n\n{text2}",
        "{text2}\n\nFind the answer in this text:\n{text}",
        "Extract the part of the passage that answers the question.\nQuestion: {text2}\nPassage: {text}",
        "I read the following: \"{text}\"\nCan you tell me: {text2}",
        "Answer with a short phrase copied from the text.\n\nText: {text}\nQuestion: {text2}",
    ],
    "summarization": [
        "Summarize this text in one sentence.\n\n{text}",
        "{text}\n\nWhat is a short summary of the text above?",
        "Article: {text}\n\nWrite a one-sentence summary of the article.",
        "Give the gist of the following passage in a single sentence:\n{text}",
        "{text}\nTL;DR in one sentence:",
        "Write a one-sentence, headline-style summary of this news story.\n\n{text}",
        "Condense the following text into one sentence that keeps its main point:\n\n{text}",
        "Here is a passage:\n{text}\n\nSum it up in a sentence.",
    ],
    "translation": [
        "Translate to {tgt}:\n\n{text}",
        "{text}\n\nHow would you say this in {tgt}?",
        "Translate the following {src} sentence into {tgt}.\n{src}: {text}\n{tgt}:",
        "Write the {tgt} version of this sentence: {text}",
        "{src}: {text}\nGive the translation in {tgt}.",
        "I need this text in {tgt}, please: \"{text}\"",
        "Render the sentence below in {tgt}, keeping its meaning and tone.\n\n{text}",
        "What is the {tgt} translation of \"{text}\"?",
    ],
    "topic": [
        "{text}\n\nWhich topic is this article about?\n\n{options}",
        "What is the main subject of the following news item?\n\n{text}\n\n{options}",
        "Classify this text into one of the categories below.\n\n{text}\n\n{options}",
        "News: {text}\nWhich section of the newspaper does this belong in?\n\n{options}",
        "Read the passage and pick its topic.\n\"{text}\"\n\n{options}",
        "{text}\nWhich of the following best describes this text?\n\n{options}",
        "Topic classification:\n{text}\n\n{options}",
        "Choose the category that fits this story best.\n{text}\n\n{options}",
    ],
    "paraphrase": [
        "Sentence 1: {text}\nSentence 2: {text2}\n\nDo these two sentences mean the same thing?\n\n{options}",
        "Is the second sentence a paraphrase of the first?\n\n{text}\n{text2}\n\n{options}",
        "\"{text}\" and \"{text2}\"\n\nDo these say the same thing in different words?\n\n{options}",
        "Here are two sentences:\n{text}\n{text2}\nAre they paraphrases of each other?\n\n{options}",
        "Would a reader learn the same facts from \"{text}\" as from \"{text2}\"?\n\n{options}",
        "Check whether the two statements are equivalent in meaning.\nA: {text}\nB: {text2}\n\n{options}",
        "{text}\nDoes the next sentence restate the one above? {text2}\n\n{options}",
        "Paraphrase detection.\nFirst: {text}\nSecond: {text2}\nSame meaning?\n\n{options}",
    ],
}

# Input inversion: ask for the input given the output.
INVERT_OUTPUT = {"nli": "text2", "sentiment": "text", "extractive_qa": "text2", "summarization": "text",
                 "translation": "text", "topic": "text", "paraphrase": "text2"}
INVERTED: dict[str, list[str]] = {
    "nli": [
        "Premise: {text}\nWrite a hypothesis whose relation to the premise is \"{label}\".",
        "{text}\n\nGive a sentence that stands in the relation {label} to the sentence above.",
        "Write a statement that gets the label \"{label}\" with respect to this premise: {text}",
    ],
    "sentiment": [
        "Write a short review with a {label} sentiment.",
        "Write a customer comment of one or two sentences whose sentiment is {label}.",
        "Give an example of a text that a reader would call {label}.",
    ],
    "extractive_qa": [
        "Read the passage and write a question whose answer is \"{label}\".\n\n{text}",
        "{text}\n\nAsk a question about this text that is answered by: {label}",
        "Passage: {text}\nAnswer: {label}\nWhat question does this answer?",
    ],
    "summarization": [
        "Write a short news paragraph that this summary could describe: {label}",
        "Expand the following one-sentence summary into a short article.\n\n{label}",
        "Summary: {label}\nWrite the passage that was summarized.",
    ],
    "translation": [
        "Translate to {src}:\n\n{label}",
        "{label}\n\nHow would you say this in {src}?",
        "Write the {src} sentence that this {tgt} text translates: {label}",
    ],
    "topic": [
        "Write a short news item about {label}.",
        "Give an example of a news passage from the {label} section.",
        "Write two sentences that would be filed under the topic {label}.",
    ],
    "paraphrase": [
        "Sentence: {text}\nWrite a second sentence such that the answer to \"does it mean the same as the "
        "first?\" is {label}.",
        "{text}\n\nWrite another sentence; whether it means the same as this one should be: {label}.",
        "Write a sentence for which the question \"same meaning as '{text}'?\" is answered {label}.",
    ],
}

# Chain-of-thought cues appended to a forward template.
COT_CUES = [
    "Let's think step by step.",
    "Explain your reasoning before giving the answer.",
    "Think it through first, then answer.",
    "Give a short rationale, then the answer.",
    "Reason about it briefly before you answer.",
]


def options_block(labels: list[str]) -> str:
    """FLAN's option list: "OPTIONS:\\n- a\\n- b"."""
    return "OPTIONS:\n" + "\n".join(f"- {o}" for o in labels)
