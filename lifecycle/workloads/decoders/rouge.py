"""ROUGE-L of generated answers against reference answers (the `rouge-score` package: Google's re-implementation
of ROUGE-1.5.5, offline, no hub), and the lead-sentences baseline: the first sentences of the source as the
answer, which summarization-like data (an abstract's conclusion from its other sections) often makes hard to
beat. Reported beside the model whatever the sign."""

from __future__ import annotations

import re

# A sentence ends at . ! or ? followed by white space and a capital, a digit or an opening bracket. Simple on
# purpose: an abbreviation before a capital ("et al. Smith") splits wrongly, which moves the baseline a little,
# never the model's score.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (0..1; longest common subsequence of words, Porter-stemmed) over the pairs."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not references:
        raise ValueError(f"rouge_l needs as many predictions as references (>0); got {len(predictions)}, "
                         f"{len(references)}")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(references)


def lead_sentences(text: str, n: int) -> str:
    """The first `n` sentences of `text`."""
    return " ".join(SENTENCE_END.split(text.strip())[:n])
