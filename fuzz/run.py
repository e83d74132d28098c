"""Coverage-guided differential fuzzing of one C entry point against its Python twin (atheris = libFuzzer).

Run through make, which builds the extensions with clang, ASan, UBSan and libFuzzer's coverage
instrumentation (-fsanitize=address,undefined,fuzzer-no-link) and preloads atheris' ASan + libFuzzer runtime:
    make fuzz [FUZZ_SECONDS=300] [FUZZ_TARGETS="wikicore check_rows hit_columns"]
or by hand after `make native-sanitized`:
    LD_PRELOAD=<site-packages>/asan_with_fuzzer.so PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 \
        python -m fuzz.run wikicore --seconds 60
The run starts from seeds cut from the real sample data (data/sample: the Wikipedia excerpt's pages, its
external links and sentences; see `write_seeds`) and the regression corpus (tests/fuzz_corpus/<target>), and keeps
what it learns in fuzz/corpus/<target> (not committed). It fails on a crash, a sanitizer report or a
disagreement with the twin (fuzz/targets.py); libFuzzer then writes the input to fuzz/artifacts/<target>/: copy it
into tests/fuzz_corpus/<target>/ as a regression test (tests/test_fuzz.py replays every file there) once fixed.
Where a Python twin is branchy Python (check_rows), it is instrumented too (atheris.instrument_imports), so its
branches guide the search as well.
"""

from __future__ import annotations

import argparse
import bz2
import re
import struct
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DUMP = REPO / "data" / "sample" / "enwiki-excerpt.xml.bz2"
REGRESSIONS = REPO / "tests" / "fuzz_corpus"
EXTERNAL_LINK = re.compile(r"\[(https?://[^\s\]]+) ([^\]\n]+)\]")
# Python modules whose branches guide the search besides the C's: match's twin is branchy Python; wikicore's is
# regexes (sre, not instrumented), where instrumenting its glue would only cost ~10x the executions per second.
INSTRUMENTED = {"wikicore": ["fuzz.targets"], "check_rows": ["pipeline.match", "pipeline.common.text", "fuzz.targets"],
                "hit_columns": ["fuzz.targets"]}
SEED_CHARS = 800  # a seed page's length: real markup, yet ~10x the iterations of whole pages


def sample_pages() -> list[str]:
    """Article texts of the sample excerpt (real wikitext), parsed as stage 1 parses them."""
    from pipeline.queries import wikitext

    xml = bz2.open(SAMPLE_DUMP).read().decode("utf-8")
    pages = [wikitext.parse_page_block(block) for block in wikitext.iter_page_blocks([xml])]
    return [page.text for page in pages if page.ns == 0 and not page.redirect and page.text]


def write_seeds(target: str, out: Path) -> int:
    """Seed inputs for a target, in its byte format (fuzz/targets.py), from the sample excerpt; returns how many."""
    pages = sample_pages()
    seeds: list[bytes] = []
    if target == "wikicore":
        for i, page in enumerate(pages):
            for start in (0, len(page) // 2):
                seeds.append(bytes([i % 16]) + page[start:start + SEED_CHARS].encode())
        seeds.append(b"\x03" + "\0".join(p[:400] for p in pages[:8]).encode())
    elif target == "check_rows":
        links = [(url, label) for page in pages for url, label in EXTERNAL_LINK.findall(page)]
        sentences = [s.strip() for page in pages for s in page.split(". ") if 5 < len(s.strip()) < 200]
        for i in range(0, min(len(links), 400), 10):
            rows = links[i:i + 10]
            head = bytes([5, 3, 1, i & 1])
            seeds.append(head + "\0".join(f"{url}\0{label}" for url, label in rows).encode())
        for i in range(0, min(len(sentences), 400), 10):
            rows = [(f"http://example.org/{j}.jpg", s) for j, s in enumerate(sentences[i:i + 10])]
            seeds.append(bytes([0, 3, 2, 0]) + "\0".join(f"{url}\0{caption}" for url, caption in rows).encode())
    elif target == "hit_columns":
        for i, page in enumerate(pages[:40]):  # (end position, word id) per word, fields 0 and 1, as matchers give
            words = [(m.end(), hash_id(m.group())) for m in re.finditer(r"\w+", page[:2000])]
            seeds.append(bytes([2, 3]) + b"".join(b"\x02" + struct.pack("<qq", *hit) for hit in words))
    else:
        raise SystemExit(f"unknown fuzz target {target!r}")
    for n, seed in enumerate(seeds):
        (out / f"seed-{n:04d}").write_bytes(seed)
    return len(seeds)


def hash_id(word: str) -> int:
    return sum(word.encode()) * 31 % 500_000


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("target", choices=("wikicore", "check_rows", "hit_columns"))
    p.add_argument("--seconds", type=int, default=300, help="libFuzzer's -max_total_time")
    p.add_argument("--corpus", help="the corpus folder it keeps (default fuzz/corpus/TARGET)")
    args, libfuzzer_extra = p.parse_known_args(argv)
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED[args.target]):
        from fuzz import targets
        from pipeline.match import stage as match
        from pipeline.queries import wikicore
    native = {"wikicore": wikicore._wikicore, "check_rows": match._matchcore, "hit_columns": match._matchcore}
    if native[args.target] is None:
        raise SystemExit(f"fuzz {args.target}: the C extension is not built (make native-sanitized)")
    check = targets.TARGETS[args.target]
    corpus = Path(args.corpus or REPO / "fuzz" / "corpus" / args.target)
    artifacts = REPO / "fuzz" / "artifacts" / args.target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = Path(tempfile.mkdtemp(prefix=f"fuzz-seeds-{args.target}-"))
    n = write_seeds(args.target, seeds)
    regressions = REGRESSIONS / args.target
    print(f"fuzz {args.target}: {n} seeds from {SAMPLE_DUMP.name}, {args.seconds} s", flush=True)
    atheris.Setup([sys.argv[0], f"-max_total_time={args.seconds}", f"-artifact_prefix={artifacts}/",
                   "-timeout=30", "-rss_limit_mb=6144", "-max_len=4096", "-print_final_stats=1",
                   *libfuzzer_extra, str(corpus), str(seeds), *([str(regressions)] if regressions.is_dir() else [])],
                  check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
