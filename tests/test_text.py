"""The whole-token semantics shared by stage 1 (counting) and stage 2 (matching)."""

from hypothesis import given, strategies as st

from pipeline.common.text import is_query_token, normalize_entry, spacing, tokenize


def metaclip_spacing(text: str) -> str:
    """MetaCLIP's substr_matching.spacing, verbatim in behaviour (the reference we refine)."""
    spaced = f" {text} "
    for p in [",", ".", ";", ":", "?", "!", "`"]:
        spaced = spaced.replace(p, f" {p} ")
    for c in ["\t", "\n", "\r"]:
        spaced = spaced.replace(c, " ")
    return spaced


def test_tokenize_splits_metaclip_punctuation_only():
    assert tokenize("New York, N.Y.: a `cat`! (born 1990) don't e-mail") == [
        "New", "York", ",", "N", ".", "Y", ".", ":", "a", "`", "cat", "`", "!", "(born", "1990)", "don't", "e-mail"]


def test_spacing_is_case_sensitive_and_whole_token():
    assert " new york " in spacing("I love new york.")
    assert " New York " not in spacing("I love new york.")
    assert " york " not in spacing("yorkshire")


@given(st.text(alphabet=st.sampled_from(list("ab ,.;:?!`\t\n\rXé")), max_size=40))
def test_spacing_equals_metaclip_up_to_whitespace_runs(text):
    assert spacing(text) == " " + " ".join(metaclip_spacing(text).split()) + " "
    assert tokenize(text) == metaclip_spacing(text).split()


@given(st.text(max_size=40))
def test_normalize_entry_is_idempotent(text):
    assert normalize_entry(normalize_entry(text)) == normalize_entry(text)


def test_entry_with_punctuation_matches_like_the_caption():
    assert spacing(normalize_entry("St. Louis")) in spacing("Flights to St. Louis, Missouri")


def test_query_tokens_are_words_not_markup():
    for word in ("cat", "New", "don't", "e-mail", "AT&T", "1990s", "Zürich", "x86"):
        assert is_query_token(word), word
    for junk in ("(born", "px]]", "|", "{{", "1990", "--", "'", "a_b", "=", "www.x"):
        assert not is_query_token(junk), junk
