"""ROUGE-L (the rouge-score package) and the lead-sentences baseline on strings whose scores are known by hand."""

import pytest

from lifecycle.workloads.decoders.rouge import lead_sentences, rouge_l


def test_rouge_l_is_the_lcs_f_measure_of_stemmed_words():
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    # LCS "the cat was under the bed": 6 of the prediction's 7 words, all 6 of the reference's
    p, r = 6 / 7, 6 / 6
    assert rouge_l(["the cat was found under the bed"], ["the cat was under the bed"]) == pytest.approx(
        2 * p * r / (p + r))
    assert rouge_l(["Cats running"], ["cat run"]) == pytest.approx(1.0)  # Porter stems, case folded
    assert rouge_l(["a dog", "blue sky"], ["a dog", "green grass"]) == pytest.approx(0.5)  # the mean over pairs
    with pytest.raises(ValueError, match="as many predictions"):
        rouge_l(["x"], ["x", "y"])


def test_lead_sentences_takes_the_first_sentences():
    text = "Cells die. Mitochondria (M1-M4) move! Why? We used e.g. dyes in vitro. 2 groups were compared."
    assert lead_sentences(text, 1) == "Cells die."
    assert lead_sentences(text, 2) == "Cells die. Mitochondria (M1-M4) move!"
    assert lead_sentences(text, 4) == "Cells die. Mitochondria (M1-M4) move! Why? We used e.g. dyes in vitro."
    assert lead_sentences("  one sentence only  ", 3) == "one sentence only"
    # the baseline scored: the context's lead against a reference that repeats its first sentence
    assert rouge_l([lead_sentences(text, 1)], ["Cells die."]) == pytest.approx(1.0)
