"""Answer quality on a fixed prompt set: whatever the backend and the precision mode, the default model's
greedy answers carry the facts it knows. (What a fast mode costs in distribution terms, KL divergence and
perplexity over a long text, is measured by bench/quality.py.)"""

import re

import pytest

from support import answer

# A question and a pattern its answer must contain (case-insensitive): facts SmolLM2-135M answers right.
FACTS = [
    ("What is the capital of France? Answer in English.", r"\bParis\b"),
    ("Name three primary colours.", r"\bred\b"),
    ("List the days of the week.", r"\bMonday\b"),
    ("Why is the sky blue? Answer briefly.", r"scatter"),
    ("Who wrote Romeo and Juliet?", r"\bShakespeare\b"),
    ("What is the boiling point of water in Celsius?", r"\b100\b"),
    ("What is the chemical symbol for gold?", r"\bAu\b"),
    ("Which ocean is the largest?", r"\bPacific\b"),
    ("What gas do plants absorb from the air?", r"carbon dioxide"),
]


@pytest.mark.parametrize("question, fact", FACTS, ids=[f for _, f in FACTS])
def test_greedy_answers_carry_the_expected_facts(host, question, fact):
    text = answer(host, question, stream=False)
    assert re.search(fact, text, re.IGNORECASE), text
