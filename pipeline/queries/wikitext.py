"""MediaWiki export reading and wiki markup stripping: the pure core of the `queries` stage.

In: MediaWiki export XML (whole files streamed block by block, or single bz2 streams of a multistream dump).
Out: `WikiPage` records, and the plain text of an article with all markup removed.

The stripper is a fixed sequence of passes, each removing one construct, ordered so that a construct is
removed before anything that could hide inside it is looked at: comments, then tags whose content is
not prose (refs, math, galleries...), then templates (nested, removed innermost-out by a bracket scanner),
tables, external links, wiki links (file/image/category/interwiki links dropped with their captions,
other links replaced by their text), remaining HTML tags, entities, bold/italic quotes, headings and
list markers. Templates and tables are removed whole: their parameter names and cell syntax would
otherwise end up among the words counted for the query list. What markup survives a malformed page is
stopped later by `text.is_query_token`, which only admits word-shaped tokens.

These functions are the specification. The stage runs their C twin (pipeline/queries/_wikicore.c, the same passes
in the same order, plus a page parser for the plain dump layout that defers to ElementTree for anything
else); tests/test_wikicore.py checks that both give identical counts, so a change here needs the same
change there.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Iterable, Iterator

# Reject reasons for pages (counted by the stage; read = kept + rejected).
NOT_ARTICLE = "not_article"          # namespace != 0 (talk, user, template, file... pages)
REDIRECT = "redirect"
MALFORMED_PAGE = "malformed_page"    # the <page> block is not well-formed XML or lacks title/ns
EMPTY_TEXT = "empty_text"            # an article whose text is empty after markup stripping
TRUNCATED_STREAM = "truncated_stream"  # a bz2 stream or XML file that ends mid-way (counted once per stream)
CORRUPT_STREAM = "corrupt_stream"      # bytes that do not decompress (counted once per stream)


@dataclass(frozen=True)
class WikiPage:
    title: str
    ns: int
    redirect: bool
    text: str


# ---------------------------------------------------------------------------------------------------
# Reading <page> blocks from a stream of decoded XML text

_PAGE_OPEN = "<page>"
_PAGE_CLOSE = "</page>"


class TruncatedInput(Exception):
    """The input ended inside a page (or the compressed stream was cut)."""
    reason = TRUNCATED_STREAM


class CorruptInput(TruncatedInput):
    """Compressed bytes that do not decompress: the rest of that stream is lost."""
    reason = CORRUPT_STREAM


def iter_page_blocks(chunks: Iterable[str]) -> Iterator[str]:
    """Yield each '<page>...</page>' block from decoded XML text arriving in chunks of any size.

    Memory is bounded by the largest page, not the file. Raises TruncatedInput if the text ends inside a
    page. The MediaWiki root and <siteinfo> are ignored, so a multistream dump's bz2 streams (which each
    hold about 100 pages and no root element) are read by the same code as a whole file.
    """
    buf = ""
    for chunk in chunks:
        buf += chunk
        start = 0
        while True:
            i = buf.find(_PAGE_OPEN, start)
            if i < 0:
                # keep a tail long enough to contain a split "<page>" marker
                start = max(start, len(buf) - len(_PAGE_OPEN))
                break
            j = buf.find(_PAGE_CLOSE, i)
            if j < 0:
                start = i
                break
            yield buf[i:j + len(_PAGE_CLOSE)]
            start = j + len(_PAGE_CLOSE)
        buf = buf[start:]
    if _PAGE_OPEN in buf:
        raise TruncatedInput("input ended inside a <page> element")


def parse_page_block(block: str) -> WikiPage:
    """Parse one '<page>...</page>' block with expat. Raises ValueError for a malformed block.

    (Hand-written string searches were measured as no faster than ElementTree on the real excerpt, and
    the XML parser catches malformed pages that string searches would let through.)
    """
    try:
        page = ET.fromstring(block)
    except ET.ParseError as e:
        raise ValueError(f"malformed page XML: {e}") from None
    return page_from_fields(page.findtext("title"), page.findtext("ns"), page.find("redirect") is not None,
                            page.findtext("revision/text"))


def page_from_fields(title: str | None, ns: str | None, redirect: bool, text: str | None) -> WikiPage:
    """A WikiPage from a page's <title>, <ns>, <redirect> and <revision><text> (None: no such element)."""
    if title is None or ns is None or not ns.strip().lstrip("-").isdigit():
        raise ValueError("page without <title> or numeric <ns>")
    return WikiPage(title=title, ns=int(ns), redirect=redirect, text=text or "")


def looks_like_mediawiki(head: str) -> bool:
    """True if the first kilobytes of a file look like a MediaWiki export (root or a page block)."""
    return "<mediawiki" in head or "<page>" in head


# ---------------------------------------------------------------------------------------------------
# Markup stripping

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
# Tags whose content is not prose. <ref> content is a citation: titles, publishers, URLs.
_NON_PROSE_TAGS = ("ref", "math", "chem", "ce", "gallery", "timeline", "score", "syntaxhighlight", "source",
                   "pre", "imagemap", "hiero", "graph", "templatedata", "mapframe", "maplink", "references",
                   "code", "inputbox", "categorytree")
_NON_PROSE_BLOCK = re.compile(
    r"<(%s)\b[^>]*?(?:/>|>.*?</\1\s*>)" % "|".join(_NON_PROSE_TAGS), re.S | re.I)
_NON_PROSE_OPEN = re.compile(r"<(?:%s)\b[^>]*>" % "|".join(_NON_PROSE_TAGS), re.I)  # unclosed leftovers
_BRACES = re.compile(r"\{\{|\}\}")
_TABLE_EDGE = re.compile(r"^[ \t:]*(\{\||\|\})", re.M)
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*(?:[ \t]+([^\]\n]*))?\]", re.I)
_LINK_EDGE = re.compile(r"\[\[|\]\]")
# Most links are plain ([[target]] or [[target|label]], no namespace, no anchor): replaced by a regex
# template in C before the general scanner sees what is left (2x faster on the real excerpt).
_PLAIN_LINK = re.compile(r"\[\[([^\[\]|:#]*)\]\]")
_PLAIN_LABELLED_LINK = re.compile(r"\[\[[^\[\]|:#]*\|([^\[\]|]*)\]\]")
_BARE_URL = re.compile(r"(?:https?|ftp)://\S+", re.I)
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")

# Namespaces whose links are not prose: the link and its caption go. Interwiki links ("fr:Paris",
# "wikt:dog") go too; a leading ':' (e.g. [[:Category:X]]) is a visible link to the page and keeps its text.
_DROP_LINK_PREFIXES = frozenset(("file", "image", "media", "category"))
_LANGUAGE_PREFIX = re.compile(r"^[a-z]{2,3}(?:-[a-z]{2,8})*$")
_INTERWIKI_PREFIXES = frozenset(("wikt", "wiktionary", "wikipedia", "w", "commons", "s", "wikisource", "q",
                                 "wikiquote", "b", "wikibooks", "n", "wikinews", "v", "wikiversity", "d",
                                 "wikidata", "species", "voy", "mw", "meta", "m", "simple", "c"))


def remove_templates(text: str) -> str:
    """Remove every '{{ ... }}' template, nested ones included, in one left-to-right scan.

    A depth counter over the '{{' / '}}' tokens: linear, unlike repeated innermost-out regex passes.
    A template that is never closed loses only its opening braces (the page is malformed; its text stays).
    """
    out: list[str] = []
    depth, pos, span_start = 0, 0, 0
    for m in _BRACES.finditer(text):
        if m.group(0) == "{{":
            if depth == 0:
                out.append(text[pos:m.start()])
                span_start = m.start()
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                pos = m.end()
        # a "}}" at depth 0 is stray markup: the final translate blanks it
    out.append(text[span_start + 2:] if depth > 0 else text[pos:])
    return "".join(out)


def remove_tables(text: str) -> str:
    """Remove '{| ... |}' tables (nested ones too). Table edges only count at the start of a line."""
    out: list[str] = []
    depth, pos = 0, 0
    for m in _TABLE_EDGE.finditer(text):
        if m.group(1) == "{|":
            if depth == 0:
                out.append(text[pos:m.start()])
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                pos = m.end()
    if depth == 0:
        out.append(text[pos:])
    # an unclosed table swallows the rest of the page: everything after "{|" is cell syntax
    return "".join(out)


def link_text(inner: str) -> str:
    """What a reader sees of '[[inner]]': its label or target; nothing for file/category/interwiki links.

    The text is returned as written (spaces included), exactly as the plain-link fast path returns it.
    """
    target, pipe, label = inner.partition("|")
    name = target.strip()
    if name.startswith(":"):  # [[:Category:Foo]] is a visible link
        target = name[1:]
    elif ":" in name:
        prefix = name.split(":", 1)[0].strip().lower()
        if prefix in _DROP_LINK_PREFIXES or prefix in _INTERWIKI_PREFIXES or _LANGUAGE_PREFIX.match(prefix):
            return ""
    if pipe:  # an empty label was a template we removed: the reader saw its output, not the target
        return label.rsplit("|", 1)[-1]
    return target[1:] if name.startswith("#") else target.split("#", 1)[0]


def replace_links(text: str) -> str:
    """Replace every [[...]] by its visible text, innermost first, in one scan over the brackets.

    A scanner, not a regex: file captions hold links and single brackets ("Bicyclo[1.1.0]butane"), and
    the whole file link, caption included, has to go. An unclosed '[[' keeps its text.
    """
    text = _PLAIN_LABELLED_LINK.sub(r"\1", _PLAIN_LINK.sub(r"\1", text))
    if "[[" not in text and "]]" not in text:
        return text
    return scan_links(text)


def scan_links(text: str) -> str:
    """The general link scanner (what `replace_links` falls back to): a stack over '[[' / ']]'."""
    stack: list[list[str]] = [[]]
    pos = 0
    for m in _LINK_EDGE.finditer(text):
        stack[-1].append(text[pos:m.start()])
        pos = m.end()
        if m.group(0) == "[[":
            stack.append([])
        elif len(stack) > 1:
            inner = "".join(stack.pop())
            stack[-1].append(link_text(inner))
        # a ']]' with no '[[' open is stray markup and is dropped
    stack[-1].append(text[pos:])
    while len(stack) > 1:  # an unclosed '[[' becomes a space, as a stray bracket would
        inner = "".join(stack.pop())
        stack[-1].append(" " + inner)
    return "".join(stack[0])


# Characters that are markup wherever they survive the passes above (list bullets, heading '=',
# brackets and pipes of malformed constructs). None can be part of a query token, so they become spaces
# in one C-speed translate instead of several regex passes ("Bicyclo[1.1.0]butane" -> two words).
_MARKUP_TO_SPACE = str.maketrans({c: " " for c in "*#={}[]|\xa0"})


def strip_wiki_markup(text: str) -> str:
    """Plain prose of a wikitext article. Lines are kept (one per paragraph, heading or list item)."""
    text = _COMMENT.sub("", text)
    text = _NON_PROSE_BLOCK.sub(" ", text)
    text = _NON_PROSE_OPEN.sub(" ", text)
    text = remove_templates(text)
    text = remove_tables(text)
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = replace_links(text)
    if "://" in text:
        text = _BARE_URL.sub(" ", text)
    text = _TAG.sub(" ", text)
    if "&" in text:  # entities may spell out tags (&lt;br&gt;)
        text = _TAG.sub(" ", html.unescape(text))
    if "''" in text:  # bold-italic, bold, italic; a 4th apostrophe is a literal one, as MediaWiki reads it
        text = text.replace("'''''", "").replace("'''", "").replace("''", "")
    if "__" in text:
        text = _MAGIC_WORD.sub(" ", text)
    return text.translate(_MARKUP_TO_SPACE)
