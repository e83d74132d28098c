"""Tiny MediaWiki export dumps written by tests (plain, bz2, and multistream bz2 with an index)."""

from __future__ import annotations

import bz2
from pathlib import Path
from xml.sax.saxutils import escape

HEAD = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">\n'
        "  <siteinfo><sitename>Wikipedia</sitename><dbname>enwiki</dbname></siteinfo>\n")
TAIL = "</mediawiki>\n"


def page_xml(title: str, text: str, ns: int = 0, redirect: str | None = None, page_id: int = 1) -> str:
    red = f'    <redirect title="{escape(redirect)}" />\n' if redirect else ""
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{page_id}</id>\n{red}"
            f"    <revision>\n      <id>{page_id}0</id>\n      <model>wikitext</model>\n"
            f'      <text xml:space="preserve">{escape(text)}</text>\n    </revision>\n  </page>\n')


def pages_xml(pages: list[dict]) -> list[str]:
    return [page_xml(page_id=i + 1, **p) for i, p in enumerate(pages)]


def write_dump(path: Path, pages: list[dict]) -> Path:
    """A whole-file dump; '.bz2' in the name compresses it as one stream."""
    xml = (HEAD + "".join(pages_xml(pages)) + TAIL).encode()
    path.write_bytes(bz2.compress(xml) if path.suffix == ".bz2" else xml)
    return path


def write_multistream(folder: Path, name: str, pages: list[dict], per_stream: int = 2) -> tuple[Path, Path]:
    """'<name>-multistream.xml.bz2' (header stream, streams of `per_stream` pages, footer stream) + index."""
    blocks = pages_xml(pages)
    data, index = bytearray(bz2.compress(HEAD.encode())), []
    for i in range(0, len(blocks), per_stream):
        offset = len(data)
        for j in range(i, min(i + per_stream, len(blocks))):
            index.append(f"{offset}:{j + 1}:{pages[j]['title']}\n")
        data += bz2.compress("".join(blocks[i:i + per_stream]).encode())
    data += bz2.compress(TAIL.encode())
    dump = folder / f"{name}-multistream.xml.bz2"
    dump.write_bytes(bytes(data))
    idx = folder / f"{name}-multistream-index.txt.bz2"
    idx.write_bytes(bz2.compress("".join(index).encode()))
    return dump, idx
