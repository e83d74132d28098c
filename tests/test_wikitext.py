"""Markup stripping and page reading on real wikitext constructs (level 1: pure functions)."""

import pytest
from hypothesis import given, strategies as st

from pipeline.queries import wikitext as W
from pipeline.common.text import is_query_token, tokenize


def strip(s: str) -> str:
    return " ".join(W.strip_wiki_markup(s).split())


def test_templates_nested_in_templates_go_whole():
    text = ("{{Infobox person\n| name = Ada {{nowrap|Lovelace}}\n| birth_date = {{birth date|1815|12|10}}\n"
            "| image = Ada.jpg\n}}\n'''Ada Lovelace''' was a {{lang|en|mathematician}}.")
    assert strip(text) == "Ada Lovelace was a ."


def test_refs_named_self_closing_and_with_templates_go():
    text = ('Paris is large.<ref name="size">{{cite web |url=http://x.org |title=Size |accessdate=2020}}</ref> '
            'It is old.<ref name="size" /> End.<ref>Plain [http://y.org cite].</ref>')
    assert strip(text) == "Paris is large. It is old. End."


def test_tables_including_nested_tables_go():
    text = ('Before.\n{| class="wikitable" style="width:100%"\n|-\n! Header !! Other\n|-\n| cell || {{flag|X}}\n'
            '{|\n| inner cell\n|}\n|-\n| colspan=2 | last\n|}\nAfter.')
    assert strip(text) == "Before. After."


def test_template_parameter_pipe_brace_is_not_a_table_end():
    assert strip("a {{foo|}} b") == "a b"


def test_file_links_with_nested_links_and_brackets_go_with_their_caption():
    text = ("[[Image:C4.png|thumb|right|220px|Different C<sub>4</sub> alkanes: [[n-butane|''n''-butane]] "
            "and Bicyclo[1.1.0]butane.]]\nAlkanes have [[carbon]] atoms. "
            "[[File:Tetrahedrane.png|thumb|upright=1.2|[[Tetrahedrane]] ]]")
    assert strip(text) == "Alkanes have carbon atoms."


def test_categories_and_interwiki_go_visible_links_keep_text():
    text = ("[[dog|Dogs]] and [[cat]]s like [[Paris#History|the city]]. [[:Category:Pets|pet lists]] "
            "[[Category:Animals]] [[fr:Chien]] [[wikt:dog]] [[simple:Dog]]")
    assert strip(text) == "Dogs and cats like the city. pet lists"


def test_comments_tags_entities_quotes_headings_lists():
    text = ("<!-- hidden {{x}} -->== History ==\n* '''Bold''' and ''italic'' &amp; more&nbsp;text\n"
            "# item<br/>two <span style=\"color:red\">red</span>\n__NOTOC__\n----\n: indented <math>x^2</math>")
    words = [t for t in tokenize(W.strip_wiki_markup(text)) if is_query_token(t)]
    assert words == ["History", "Bold", "and", "italic", "more", "text", "item", "two", "red", "indented"]


def test_external_links_keep_label_bare_urls_go():
    assert strip("See [https://example.org/page the site] and [http://x.org] or https://y.org/a?b=c now") == \
        "See the site and or now"


def test_unclosed_constructs_do_not_swallow_or_crash():
    assert strip("a {{unclosed template b") == "a unclosed template b"
    assert strip("a [[unclosed link b") == "a unclosed link b"
    assert strip("stray }} and ]] here") == "stray and here"


def test_no_markup_artefacts_among_word_tokens():
    text = ("{{Infobox settlement|name=X|image_skyline=X.jpg|image_size=250px|coordinates={{coord|1|2}}}}\n"
            "[[File:X.jpg|thumb|left|300px|alt=Alt text|A caption]]\n{| class=\"wikitable sortable\" "
            "style=\"text-align:center\"\n|-\n| align=right | 5\n|}\nThe river flows.<ref>{{cite book|isbn=1}}</ref>"
            "\n[[Category:Rivers]]\n{{DEFAULTSORT:X}}")
    words = {t for t in tokenize(W.strip_wiki_markup(text)) if is_query_token(t)}
    assert words == {"The", "river", "flows"}


@given(st.text(alphabet=st.sampled_from(list("ab {}[]|=<>!-\n'&;:/#*")), max_size=200))
def test_strip_never_raises_and_leaves_no_bracket_pairs(s):
    out = W.strip_wiki_markup(s)
    assert "{{" not in out and "[[" not in out and "]]" not in out and "}}" not in out


LINK_PIECES = ["a", "b c", " ", "[[a]]", "[[a|b c]]", "[[fr:x]]", "[[File:x.png|thumb|", "]]", "[1.1.0]",
               "[[#s|t]]", "[[Category:C]]", "[[dog]]s"]   # nested, unclosed and stray links, single brackets


@given(st.lists(st.sampled_from(LINK_PIECES), max_size=30).map("".join))
def test_link_fast_path_agrees_with_the_scanner(s):
    # compared as the stripper's final tokens: runs like "[[[]][" may differ in where brackets stand
    def words(text):
        return tokenize(text.translate(W._MARKUP_TO_SPACE))
    assert words(W.replace_links(s)) == words(W.scan_links(s))


def test_iter_page_blocks_across_chunk_boundaries():
    xml = "<mediawiki><siteinfo/>" + "".join(f"<page><title>T{i}</title><ns>0</ns></page>" for i in range(5)) + "</mediawiki>"
    for size in (1, 3, 7, 50, 10_000):
        chunks = [xml[i:i + size] for i in range(0, len(xml), size)]
        blocks = list(W.iter_page_blocks(chunks))
        assert [W.parse_page_block(b).title for b in blocks] == [f"T{i}" for i in range(5)]


def test_iter_page_blocks_raises_on_truncation():
    with pytest.raises(W.TruncatedInput):
        list(W.iter_page_blocks(["<mediawiki><page><title>A</title><ns>0</ns></page><page><title>B"]))


def test_parse_page_block_fields_and_errors():
    page = W.parse_page_block('<page><title>A &amp; B</title><ns>0</ns><redirect title="C"/>'
                              '<revision><text>x &lt;ref&gt;</text></revision></page>')
    assert page == W.WikiPage(title="A & B", ns=0, redirect=True, text="x <ref>")
    with pytest.raises(ValueError):
        W.parse_page_block("<page><title>A</title><ns>0</ns><revision><text>x</revision></page>")
    with pytest.raises(ValueError):
        W.parse_page_block("<page><title>A</title></page>")
