"""The fastText language filter (pipeline/lid.py) on the fasttext-predict wheel (level 1: pure functions).

The identifier must give, per text, the wheel's own top label for the line fastText reads (one line per text, a
newline inside it read as a space), batched in one call; the expected values here come from the wheel's
one-text `predict`, not from the batched path under test.
"""

import pytest

from pipeline.match import lid

SAMPLES = {
    "de": ["Der Hund schläft auf dem Sofa.", "Die Kinder spielen im Garten mit dem Ball."],
    "fr": ["Le chat dort sur le canapé.", "Les enfants jouent dans le jardin."],
    "ru": ["Собака спит на диване.", "Дети играют в саду с мячом."],
    "ja": ["犬がソファで寝ています。", "町の外れにある古い家。"],
    "en": ["a dog sleeps on the sofa .", "children play with a ball in the garden"],
}
ODD_TEXTS = ["", " ", "\n", "12345", "😀", "a\tb\vc\fd\0e\rf\ng", "line one\nline two", "</s>", "__label__de",
             "z" * 5000, "e\u0301te\u0301 cafe\u0301", "\ufeffbom at start"]


@pytest.fixture(scope="module")
def wheel():
    import fasttext  # the fasttext-predict wheel

    return fasttext.load_model(lid.fasttext_model_path())


def wheel_label(wheel, text: str | bytes, threshold: float) -> str | None:
    """The wheel's top label for one text, through its one-line `predict`."""
    line = text.replace(b"\n", b" ") + b"\n" if isinstance(text, bytes) else text.replace("\n", " ") + "\n"
    found = wheel.f.predict(line, 1, threshold, "strict")
    return found[0][1].removeprefix("__label__") if found else None


def test_sample_sentences_get_their_language():
    identify = lid.load_identifier("fasttext")
    for language, sentences in SAMPLES.items():
        assert identify(sentences) == [language] * len(sentences), language


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.9])
def test_a_batch_gives_the_wheels_label_per_text(wheel, threshold):
    texts = [s for group in SAMPLES.values() for s in group] + ODD_TEXTS
    expected = [wheel_label(wheel, t, threshold) for t in texts]
    assert lid.load_identifier("fasttext", threshold)(texts) == expected
    assert "line one\nline two" in texts and expected[texts.index("line one\nline two")] is not None


def test_lone_surrogates_are_read_as_their_3_byte_form(wheel):
    # The wheel cannot take such a str at all (TypeError); the filter hands it the 'surrogatepass' bytes, so that
    # one odd caption (a file decoded with errors='surrogateescape') does not stop the stage, and the other texts
    # of the batch keep their answers.
    texts = ["der Hund \ud800 ist", "\udcff", "Der Hund schläft auf dem Sofa.", "lone \udfff at the end \ud83d"]
    expected = [wheel_label(wheel, t.encode("utf-8", "surrogatepass"), 0.0) for t in texts]
    assert expected[2] == "de"
    assert lid.load_identifier("fasttext")(texts) == expected
