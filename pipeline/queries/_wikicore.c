/* Stage 1's hot loop in C: wiki markup stripping + MetaCLIP tokenization + word/bigram counting. Used through
 * pipeline/queries/wikicore.py. (Pages are parsed by expat through ElementTree, wikitext.parse_page_block.)
 *
 * In:  an article's wikitext (str), one page at a time, into a SplitCounter.
 * Out: SplitCounter.result() -> ({word: n}, {(word, word): n}) and .parts(buckets, bucket_of), keyed exactly
 *      as the Python reference (pipeline.queries.wikicore.PySplitCounter) keys them.
 *
 * The Python functions stay the specification (pipeline/queries/wikitext.py strip_wiki_markup, pipeline/common/text.py
 * tokenize and is_query_token); this file reproduces them pass by pass, each pass the C twin of one regex
 * or scanner, in the same order, so equality can be argued pass by pass and is tested differentially
 * (tests/test_wikicore.py; bench/bench_queries.py on the real excerpt; fuzz/targets.py on arbitrary text).
 * Unicode semantics are those of the reference: whitespace is Py_UNICODE_ISSPACE (str.split, re's \s),
 * word characters Py_UNICODE_ISALNUM or '_' (re's \w), re.IGNORECASE folding as sre does it (fold_letter,
 * match_group_ci). Where exact equality would need a large table, the piece goes back to Python:
 *   - an entity that is not '&name;' with name+';' in html.entities.html5, or a numeric reference outside
 *     the plainly valid ranges, is unescaped by html.unescape on that entity alone;
 *   - a link whose namespace prefix is not ASCII (or longer than 23 characters) goes to wikitext.link_text;
 *   - a token that is not ASCII is classified by text.is_query_token (once per distinct token).
 * The first two are counted (stats['fallback_pieces']) so their rate can be reported.
 * Counting interns each distinct token once (hash table of code points -> id); a bigram is a pair of
 * ids, and only word tokens are kept in the result. Hash-table slots are prefetched a few dozen tokens
 * ahead: with tables larger than the cache, counting is otherwise bound by memory latency.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <wchar.h>

typedef Py_UCS4 ch;

typedef struct {
    ch *p;
    Py_ssize_t n, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t need)
{
    if (need <= b->cap)
        return 0;
    Py_ssize_t c = b->cap ? b->cap : 4096;
    while (c < need)
        c *= 2;
    ch *p = PyMem_Realloc(b->p, (size_t)c * sizeof(ch));
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = c;
    return 0;
}

/* Append a str's code points to b at b->n. */
static int buf_append_str(Buf *b, PyObject *s)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(s);
    if (buf_reserve(b, b->n + len + 1) < 0)
        return -1;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    for (Py_ssize_t i = 0; i < len; i++)
        b->p[b->n++] = PyUnicode_READ(kind, data, i);
    return 0;
}

#define ISSPACE(c) Py_UNICODE_ISSPACE(c)
#define ISWORD(c) (Py_UNICODE_ISALNUM(c) || (c) == '_')   /* sre's Unicode \w */

static inline ch lower_ascii(ch c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }
static inline int is_alpha_ascii(ch c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

/* The index of the first c in s[i..n), or n. wmemchr is glibc's vectorized search when wchar_t is
 * 32-bit, as Py_UCS4 is (Linux, macOS); a plain loop elsewhere. */
static inline Py_ssize_t find_ch(const ch *s, Py_ssize_t i, Py_ssize_t n, ch c)
{
    if (i >= n)
        return n;
#if WCHAR_MAX > 0xFFFF
    const wchar_t *p = wmemchr((const wchar_t *)s + i, (wchar_t)c, (size_t)(n - i));
    return p ? (Py_ssize_t)((const ch *)p - s) : n;
#else
    while (i < n && s[i] != c)
        i++;
    return i;
#endif
}

static int has_char(const ch *s, Py_ssize_t n, ch a) { return find_ch(s, 0, n, a) < n; }

static int has_pair(const ch *s, Py_ssize_t n, ch a, ch b)
{
    for (Py_ssize_t i = find_ch(s, 0, n, a); i + 1 < n; i = find_ch(s, i + 1, n, a))
        if (s[i + 1] == b)
            return 1;
    return 0;
}

/* In a pass's loop: copy in[i..) up to the next `trig` to w[o..), and leave the loop at the end. */
#define COPY_TO(trig)                                               \
    {                                                               \
        Py_ssize_t j_ = find_ch(in, i, n, (trig));                  \
        memcpy(w + o, in + i, (size_t)(j_ - i) * sizeof(ch));       \
        o += j_ - i;                                                \
        i = j_;                                                     \
        if (i >= n)                                                 \
            break;                                                  \
    }

/* The ASCII lower-case letter that a pattern letter matches c as under re.IGNORECASE, else c.
 * Besides ASCII case, sre folds exactly four non-ASCII characters onto ASCII letters (found by testing
 * every code point against re.compile(letter, re.I)): U+0130 and U+0131 -> 'i', U+017F -> 's',
 * U+212A (Kelvin sign) -> 'k'. */
static inline ch fold_letter(ch c)
{
    if (c < 128)
        return lower_ascii(c);
    if (c == 0x130 || c == 0x131)
        return 'i';
    if (c == 0x17f)
        return 's';
    if (c == 0x212a)
        return 'k';
    return c;
}

/* re.IGNORECASE match of the ASCII lower-case word w at s[i..]. */
static int match_ci(const ch *s, Py_ssize_t n, Py_ssize_t i, const char *w)
{
    for (; *w; w++, i++)
        if (i >= n || fold_letter(s[i]) != (ch)*w)
            return 0;
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Context: the Python callables and tables the C path hands rare cases back to, and its counters.   */

typedef struct {
    PyObject *link_text;   /* wikitext.link_text */
    PyObject *unescape;    /* html.unescape */
    PyObject *entities;    /* html.entities.html5 */
    long long fallback_pieces;
} Ctx;

/* ---------------------------------------------------------------------------------------------- */
/* Passes of wikitext.strip_wiki_markup, in its order. Each reads in[0..n) and writes out.            */

/* _COMMENT: <!--.*?(?:-->|\Z) -> "" */
static int pass_comments(const ch *in, Py_ssize_t n, Buf *out)
{
    if (buf_reserve(out, n + 1) < 0)
        return -1;
    ch *w = out->p;
    Py_ssize_t o = 0, i = 0;
    while (i < n) {
        COPY_TO('<');
        if (in[i] == '<' && i + 3 < n && in[i + 1] == '!' && in[i + 2] == '-' && in[i + 3] == '-') {
            Py_ssize_t j = i + 4;
            while (j + 2 < n && !(in[j] == '-' && in[j + 1] == '-' && in[j + 2] == '>'))
                j++;
            i = (j + 2 < n) ? j + 3 : n;
            continue;
        }
        w[o++] = in[i++];
    }
    out->n = o;
    return 0;
}

/* The _NON_PROSE_TAGS of wikitext.py, in its order. */
static const char *NON_PROSE[] = {"ref", "math", "chem", "ce", "gallery", "timeline", "score",
                                  "syntaxhighlight", "source", "pre", "imagemap", "hiero", "graph",
                                  "templatedata", "mapframe", "maplink", "references", "code",
                                  "inputbox", "categorytree", NULL};

/* '<(ref|math|...)\b' at s[i]: the tag's index, or -1. *k is set to the end of the name.
 * With \b after a name made of letters, the name is the whole \w run after '<'. */
static int non_prose_name(const ch *s, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *k)
{
    Py_ssize_t j = i + 1, e = j;
    while (e < n && ISWORD(s[e]) && e - j <= 15)
        e++;
    Py_ssize_t len = e - j;
    if (len < 2 || len > 15 || (e < n && ISWORD(s[e])))
        return -1;
    char name[16];
    for (Py_ssize_t q = 0; q < len; q++) {
        ch c = fold_letter(s[j + q]);
        if (c >= 128)
            return -1;
        name[q] = (char)c;
    }
    name[len] = 0;
    for (int t = 0; NON_PROSE[t]; t++)
        if (strcmp(name, NON_PROSE[t]) == 0) {
            *k = e;
            return t;
        }
    return -1;
}

/* A backreference under re.IGNORECASE: sre compares the simple lower-case mappings of both sides
 * (so 'İ' matches a group's 'i', but 'ı' and 'ſ' match only themselves). */
static int match_group_ci(const ch *s, Py_ssize_t n, Py_ssize_t i, const ch *group, Py_ssize_t len)
{
    if (i + len > n)
        return 0;
    for (Py_ssize_t q = 0; q < len; q++)
        if (s[i + q] != group[q] && Py_UNICODE_TOLOWER(s[i + q]) != Py_UNICODE_TOLOWER(group[q]))
            return 0;
    return 1;
}

/* End of the first '</\1\s*>' at or after `from`, or -1 (the lazy '.*?</\1\s*>' of _NON_PROSE_BLOCK);
 * the group is the tag name as written in the opening tag, s[name0..name0+len). */
static Py_ssize_t find_close(const ch *s, Py_ssize_t n, Py_ssize_t from, Py_ssize_t name0, Py_ssize_t len)
{
    for (Py_ssize_t q = from; q + 1 < n; q++) {
        if (s[q] != '<' || s[q + 1] != '/' || !match_group_ci(s, n, q + 2, s + name0, len))
            continue;
        Py_ssize_t r = q + 2 + len;
        while (r < n && ISSPACE(s[r]))
            r++;
        if (r < n && s[r] == '>')
            return r + 1;
    }
    return -1;
}

/* _NON_PROSE_BLOCK: <(tag)\b[^>]*?(?:/>|>.*?</\1\s*>) -> " "   (whole=1)
 * _NON_PROSE_OPEN:  <(?:tag)\b[^>]*>                  -> " "   (whole=0) */
static int pass_non_prose(const ch *in, Py_ssize_t n, Buf *out, int whole)
{
    if (buf_reserve(out, n + 1) < 0)
        return -1;
    ch *w = out->p;
    Py_ssize_t o = 0, i = 0;
    while (i < n) {
        COPY_TO('<');
        if (in[i] == '<') {
            Py_ssize_t k;
            int t = non_prose_name(in, n, i, &k);
            if (t >= 0) {
                Py_ssize_t m = k;
                while (m < n && in[m] != '>')
                    m++;
                if (m < n) {
                    Py_ssize_t end;
                    if (!whole || (m - 1 >= k && in[m - 1] == '/'))
                        end = m + 1;   /* the lazy [^>]*? meets '/>' before '>' */
                    else
                        end = find_close(in, n, m + 1, i + 1, k - (i + 1));
                    if (end >= 0) {
                        w[o++] = ' ';
                        i = end;
                        continue;
                    }
                }
            }
        }
        w[o++] = in[i++];
    }
    out->n = o;
    return 0;
}

/* wikitext.remove_templates: a depth counter over '{{' / '}}' tokens. */
static int pass_templates(const ch *in, Py_ssize_t n, Buf *out)
{
    if (buf_reserve(out, n + 1) < 0)
        return -1;
    ch *w = out->p;
    Py_ssize_t o = 0, depth = 0, pos = 0, span_start = 0, i = 0;
    while (i + 1 < n) {
        if (in[i] == '{' && in[i + 1] == '{') {
            if (depth == 0) {
                memcpy(w + o, in + pos, (size_t)(i - pos) * sizeof(ch));
                o += i - pos;
                span_start = i;
            }
            depth++;
            i += 2;
        } else if (in[i] == '}' && in[i + 1] == '}') {
            if (depth > 0 && --depth == 0)
                pos = i + 2;
            i += 2;
        } else {
            i++;
        }
    }
    Py_ssize_t from = depth > 0 ? span_start + 2 : pos;
    memcpy(w + o, in + from, (size_t)(n - from) * sizeof(ch));
    out->n = o + (n - from);
    return 0;
}

/* wikitext.remove_tables: '^[ \t:]*(\{\||\|\})' (re.M) edges with a depth counter. */
static int pass_tables(const ch *in, Py_ssize_t n, Buf *out)
{
    if (buf_reserve(out, n + 1) < 0)
        return -1;
    ch *w = out->p;
    Py_ssize_t o = 0, depth = 0, pos = 0, ls = 0;
    while (ls < n) {   /* ls: a line start (0 or after '\n') */
        Py_ssize_t q = ls;
        while (q < n && (in[q] == ' ' || in[q] == '\t' || in[q] == ':'))
            q++;
        if (q + 1 < n && in[q] == '{' && in[q + 1] == '|') {
            if (depth == 0) {
                memcpy(w + o, in + pos, (size_t)(ls - pos) * sizeof(ch));
                o += ls - pos;
            }
            depth++;
        } else if (q + 1 < n && in[q] == '|' && in[q + 1] == '}') {
            if (depth > 0 && --depth == 0)
                pos = q + 2;
        }
        while (q < n && in[q] != '\n')
            q++;
        ls = q + 1;
    }
    if (depth == 0) {
        memcpy(w + o, in + pos, (size_t)(n - pos) * sizeof(ch));
        o += n - pos;
    }
    out->n = o;
    return 0;
}

/* _EXTERNAL_LINK: \[(?:https?:|ftp:)?//[^\s\]]*(?:[ \t]+([^\]\n]*))?\]  (re.I) -> group 1 or "" */
static int pass_external_links(const ch *in, Py_ssize_t n, Buf *out)
{
    if (buf_reserve(out, n + 1) < 0)
        return -1;
    ch *w = out->p;
    Py_ssize_t o = 0, i = 0;
    while (i < n) {
        COPY_TO('[');
        if (in[i] == '[') {
            Py_ssize_t j = i + 1;
            if (match_ci(in, n, j, "https:"))
                j += 6;
            else if (match_ci(in, n, j, "http:"))
                j += 5;
            else if (match_ci(in, n, j, "ftp:"))
                j += 4;
            if (!(j + 1 < n && in[j] == '/' && in[j + 1] == '/'))
                j = -1;   /* a scheme without '//' cannot be followed by '//' at i+1 either */
            if (j >= 0) {
                Py_ssize_t k = j + 2;
                while (k < n && in[k] != ']' && !ISSPACE(in[k]))
                    k++;
                if (k < n && in[k] == ']') {
                    i = k + 1;
                    continue;
                }
                if (k < n && (in[k] == ' ' || in[k] == '\t')) {
                    while (k < n && (in[k] == ' ' || in[k] == '\t'))
                        k++;
                    Py_ssize_t t = k;
                    while (t < n && in[t] != ']' && in[t] != '\n')
                        t++;
                    if (t < n && in[t] == ']') {
                        memcpy(w + o, in + k, (size_t)(t - k) * sizeof(ch));
                        o += t - k;
                        i = t + 1;
                        continue;
                    }
                }
            }
        }
        w[o++] = in[i++];
    }
    out->n = o;
    return 0;
}

static inline int in_set(ch c, const char *set)
{
    for (; *set; set++)
        if (c == (ch)*set)
            return 1;
    return 0;
}

/* _PLAIN_LINK: \[\[([^\[\]|:#]*)\]\] -> \1   (labelled=0)
 * _PLAIN_LABELLED_LINK: \[\[[^\[\]|:#]*\|([^\[\]|]*)\]\] -> \1   (labelled=1) */
static int pass_plain_links(const ch *in, Py_ssize_t n, Buf *out, int labelled)
{
    if (buf_reserve(out, n + 1) < 0)
        return -1;
    ch *w = out->p;
    Py_ssize_t o = 0, i = 0;
    while (i < n) {
        COPY_TO('[');
        if (in[i] == '[' && i + 1 < n && in[i + 1] == '[') {
            Py_ssize_t k = i + 2;
            while (k < n && !in_set(in[k], "[]|:#"))
                k++;
            Py_ssize_t from = i + 2;
            if (labelled) {
                if (k < n && in[k] == '|') {
                    from = ++k;
                    while (k < n && !in_set(in[k], "[]|"))
                        k++;
                } else {
                    k = -1;
                }
            }
            if (k >= 0 && k + 1 < n && in[k] == ']' && in[k + 1] == ']') {
                memcpy(w + o, in + from, (size_t)(k - from) * sizeof(ch));
                o += k - from;
                i = k + 2;
                continue;
            }
        }
        w[o++] = in[i++];
    }
    out->n = o;
    return 0;
}

static const char *DROP_PREFIXES[] = {"file", "image", "media", "category", NULL};
static const char *INTERWIKI[] = {"wikt", "wiktionary", "wikipedia", "w", "commons", "s", "wikisource", "q",
                                  "wikiquote", "b", "wikibooks", "n", "wikinews", "v", "wikiversity", "d",
                                  "wikidata", "species", "voy", "mw", "meta", "m", "simple", "c", NULL};

/* _LANGUAGE_PREFIX: ^[a-z]{2,3}(?:-[a-z]{2,8})*$ on an ASCII string */
static int language_prefix(const char *p)
{
    int run = 0, first = 1;
    for (;; p++) {
        if (*p >= 'a' && *p <= 'z') {
            run++;
            continue;
        }
        if (first ? (run < 2 || run > 3) : (run < 2 || run > 8))
            return 0;
        if (*p == 0)
            return 1;
        if (*p != '-')
            return 0;
        first = 0;
        run = 0;
    }
}

static int in_list(const char *s, const char **list)
{
    for (; *list; list++)
        if (strcmp(s, *list) == 0)
            return 1;
    return 0;
}

/* wikitext.link_text(inner) appended to out; inner is s[a..b). Returns 0, or -1 on error. */
static int link_text(Ctx *ctx, const ch *s, Py_ssize_t a, Py_ssize_t b, Buf *out)
{
    Py_ssize_t bar = -1, last_bar = -1;
    for (Py_ssize_t q = a; q < b; q++)
        if (s[q] == '|') {
            if (bar < 0)
                bar = q;
            last_bar = q;
        }
    Py_ssize_t t0 = a, t1 = bar >= 0 ? bar : b;   /* target */
    Py_ssize_t n0 = t0, n1 = t1;                     /* name = target.strip() */
    while (n0 < n1 && ISSPACE(s[n0]))
        n0++;
    while (n1 > n0 && ISSPACE(s[n1 - 1]))
        n1--;
    int name_hash = 0;
    if (n0 < n1 && s[n0] == ':') {
        t0 = n0 + 1;
        t1 = n1;
    } else {
        Py_ssize_t colon = -1;
        for (Py_ssize_t q = n0; q < n1; q++)
            if (s[q] == ':') {
                colon = q;
                break;
            }
        if (colon >= 0) {
            Py_ssize_t p0 = n0, p1 = colon;
            while (p0 < p1 && ISSPACE(s[p0]))
                p0++;
            while (p1 > p0 && ISSPACE(s[p1 - 1]))
                p1--;
            char prefix[24];
            int ascii = p1 - p0 < (Py_ssize_t)sizeof(prefix);
            for (Py_ssize_t q = p0; ascii && q < p1; q++) {
                if (s[q] >= 128)
                    ascii = 0;
                else
                    prefix[q - p0] = (char)lower_ascii(s[q]);
            }
            if (!ascii) {
                /* str.lower() of a non-ASCII prefix, or a prefix too long for our buffer (it may still be
                 * a long language tag): the Python reference decides */
                ctx->fallback_pieces++;
                PyObject *inner = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, s + a, b - a);
                if (!inner)
                    return -1;
                PyObject *r = PyObject_CallOneArg(ctx->link_text, inner);
                Py_DECREF(inner);
                if (!r)
                    return -1;
                int rc = buf_append_str(out, r);
                Py_DECREF(r);
                return rc;
            }
            prefix[p1 - p0] = 0;
            if (in_list(prefix, DROP_PREFIXES) || in_list(prefix, INTERWIKI) || language_prefix(prefix))
                return 0;
        }
        name_hash = n0 < n1 && s[n0] == '#';
    }
    Py_ssize_t r0, r1;
    if (bar >= 0) {
        r0 = last_bar + 1;
        r1 = b;
    } else if (name_hash) {
        r0 = t0 + 1;
        r1 = t1;
    } else {
        r0 = t0;
        r1 = t0;
        while (r1 < t1 && s[r1] != '#')
            r1++;
    }
    if (r0 > r1)
        r0 = r1;
    if (buf_reserve(out, out->n + (r1 - r0) + 1) < 0)
        return -1;
    memcpy(out->p + out->n, s + r0, (size_t)(r1 - r0) * sizeof(ch));
    out->n += r1 - r0;
    return 0;
}

/* wikitext.scan_links: a stack over '[[' / ']]' (kept as offsets into one output buffer). */
static int pass_scan_links(Ctx *ctx, const ch *in, Py_ssize_t n, Buf *out, Buf *tmp)
{
    out->n = 0;
    if (buf_reserve(out, n + 1) < 0)
        return -1;
    Py_ssize_t *stack = NULL, depth = 0, cap = 0, pos = 0, i = 0;
    int rc = -1;
#define APPEND(from, to)                                                            \
    do {                                                                            \
        if (buf_reserve(out, out->n + ((to) - (from)) + 1) < 0)                     \
            goto done;                                                              \
        memcpy(out->p + out->n, in + (from), (size_t)((to) - (from)) * sizeof(ch)); \
        out->n += (to) - (from);                                                    \
    } while (0)
    while (i + 1 < n) {
        int open = in[i] == '[' && in[i + 1] == '[';
        int close = !open && in[i] == ']' && in[i + 1] == ']';
        if (!open && !close) {
            i++;
            continue;
        }
        APPEND(pos, i);
        pos = i + 2;
        if (open) {
            if (depth == cap) {
                cap = cap ? cap * 2 : 16;
                Py_ssize_t *ns = PyMem_Realloc(stack, (size_t)cap * sizeof(Py_ssize_t));
                if (!ns) {
                    PyErr_NoMemory();
                    goto done;
                }
                stack = ns;
            }
            stack[depth++] = out->n;
        } else if (depth > 0) {
            Py_ssize_t start = stack[--depth];
            /* the inner text moves to tmp, the link's visible text replaces it */
            tmp->n = 0;
            if (buf_reserve(tmp, out->n - start + 1) < 0)
                goto done;
            memcpy(tmp->p, out->p + start, (size_t)(out->n - start) * sizeof(ch));
            tmp->n = out->n - start;
            out->n = start;
            if (link_text(ctx, tmp->p, 0, tmp->n, out) < 0)
                goto done;
        }
        i += 2;
    }
    APPEND(pos, n);
    if (depth > 0) {   /* each unclosed '[[' becomes a space before its text */
        if (buf_reserve(tmp, out->n + depth + 1) < 0)
            goto done;
        Py_ssize_t o = 0, d = 0;
        for (Py_ssize_t q = 0; q <= out->n; q++) {
            while (d < depth && stack[d] == q) {
                tmp->p[o++] = ' ';
                d++;
            }
            if (q < out->n)
                tmp->p[o++] = out->p[q];
        }
        if (buf_reserve(out, o + 1) < 0)
            goto done;
        memcpy(out->p, tmp->p, (size_t)o * sizeof(ch));
        out->n = o;
    }
    rc = 0;
done:
    PyMem_Free(stack);
    return rc;
#undef APPEND
}

/* _BARE_URL: (?:https?|ftp)://\S+ (re.I) -> " " */
static int pass_bare_urls(const ch *in, Py_ssize_t n, Buf *out)
{
    if (buf_reserve(out, n + 1) < 0)
        return -1;
    ch *w = out->p;
    Py_ssize_t o = 0, i = 0;
    while (i < n) {
        ch c = lower_ascii(in[i]);
        if (c == 'h' || c == 'f') {
            Py_ssize_t j = -1;
            if (match_ci(in, n, i, "http")) {
                j = i + 4;
                if (j < n && fold_letter(in[j]) == 's')
                    j++;
            } else if (match_ci(in, n, i, "ftp")) {
                j = i + 3;
            }
            if (j >= 0 && j + 3 < n && in[j] == ':' && in[j + 1] == '/' && in[j + 2] == '/' &&
                !ISSPACE(in[j + 3])) {
                Py_ssize_t k = j + 3;
                while (k < n && !ISSPACE(in[k]))
                    k++;
                w[o++] = ' ';
                i = k;
                continue;
            }
        }
        w[o++] = in[i++];
    }
    out->n = o;
    return 0;
}

/* _TAG: </?[A-Za-z][^<>]*> -> " " */
static int pass_tags(const ch *in, Py_ssize_t n, Buf *out)
{
    if (buf_reserve(out, n + 1) < 0)
        return -1;
    ch *w = out->p;
    Py_ssize_t o = 0, i = 0;
    while (i < n) {
        COPY_TO('<');
        if (in[i] == '<') {
            Py_ssize_t j = i + 1;
            if (j < n && in[j] == '/')
                j++;
            if (j < n && is_alpha_ascii(in[j])) {
                Py_ssize_t k = j + 1;
                while (k < n && in[k] != '<' && in[k] != '>')
                    k++;
                if (k < n && in[k] == '>') {
                    w[o++] = ' ';
                    i = k + 1;
                    continue;
                }
            }
        }
        w[o++] = in[i++];
    }
    out->n = o;
    return 0;
}

/* A numeric character reference html.unescape turns into chr(num) (no replacement table applies). */
static int plain_codepoint(long long num)
{
    return (num >= 0x20 && num < 0x7f) || (num >= 0xa0 && num <= 0xd7ff) || (num >= 0xe000 && num < 0xfdd0) ||
           (num >= 0xfdf0 && num <= 0x10ffff && (num & 0xfffe) != 0xfffe) || num == '\n' || num == '\t';
}

static inline int hexval(ch c)
{
    if (c >= '0' && c <= '9')
        return (int)(c - '0');
    c = lower_ascii(c);
    return (c >= 'a' && c <= 'f') ? (int)(c - 'a' + 10) : -1;
}

/* html.unescape: '&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)' replaced per html5 rules. */
static int pass_entities(Ctx *ctx, const ch *in, Py_ssize_t n, Buf *out)
{
    out->n = 0;
    if (buf_reserve(out, n + 1) < 0)
        return -1;
    Py_ssize_t i = 0;
    while (i < n) {
        Py_ssize_t amp = find_ch(in, i, n, '&');
        memcpy(out->p + out->n, in + i, (size_t)(amp - i) * sizeof(ch));
        out->n += amp - i;
        i = amp;
        if (i >= n)
            break;
        Py_ssize_t j = i + 1, end = -1;   /* end: the end of the entity the regex matches */
        long long num = -1;
        if (j < n && in[j] == '#') {
            Py_ssize_t k = j + 1;
            int base = 10;
            if (k + 1 < n && (in[k] == 'x' || in[k] == 'X') && hexval(in[k + 1]) >= 0) {
                base = 16;
                k++;
            }
            Py_ssize_t d0 = k;
            num = 0;
            while (k < n && (base == 16 ? hexval(in[k]) >= 0 : (in[k] >= '0' && in[k] <= '9'))) {
                if (num < 0x1000000)
                    num = num * base + hexval(in[k]);
                k++;
            }
            if (k > d0)
                end = (k < n && in[k] == ';') ? k + 1 : k;
            if (end >= 0 && plain_codepoint(num)) {
                out->p[out->n++] = (ch)num;
                i = end;
                continue;
            }
        } else {
            Py_ssize_t k = j;
            while (k < n && k - j < 32 && in[k] != '\t' && in[k] != '\n' && in[k] != '\f' && in[k] != ' ' &&
                   in[k] != '<' && in[k] != '&' && in[k] != '#' && in[k] != ';')
                k++;
            if (k > j) {
                end = (k < n && in[k] == ';') ? k + 1 : k;
                if (end == k + 1) {   /* '&name;': html5[name + ';'] when the table has it */
                    PyObject *key = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, in + j, end - j);
                    if (!key)
                        return -1;
                    PyObject *v = PyDict_GetItemWithError(ctx->entities, key);
                    Py_DECREF(key);
                    if (v) {
                        if (buf_append_str(out, v) < 0 || buf_reserve(out, out->n + (n - end) + 1) < 0)
                            return -1;
                        i = end;
                        continue;
                    }
                    if (PyErr_Occurred())
                        return -1;
                }
            }
        }
        if (end < 0) {   /* no entity here: a literal '&' */
            out->p[out->n++] = in[i++];
            continue;
        }
        /* anything else: html.unescape on this entity alone (it matches the same span there) */
        ctx->fallback_pieces++;
        PyObject *piece = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, in + i, end - i);
        if (!piece)
            return -1;
        PyObject *r = PyObject_CallOneArg(ctx->unescape, piece);
        Py_DECREF(piece);
        if (!r)
            return -1;
        int rc = buf_append_str(out, r);
        Py_DECREF(r);
        if (rc < 0 || buf_reserve(out, out->n + (n - end) + 1) < 0)
            return -1;
        i = end;
    }
    return 0;
}

/* str.replace(k apostrophes, "") */
static int pass_quotes(const ch *in, Py_ssize_t n, Buf *out, int k)
{
    if (buf_reserve(out, n + 1) < 0)
        return -1;
    ch *w = out->p;
    Py_ssize_t o = 0, i = 0;
    while (i < n) {
        COPY_TO('\'');
        if (in[i] == '\'' && i + k <= n) {
            int q = 1;
            while (q < k && in[i + q] == '\'')
                q++;
            if (q == k) {
                i += k;
                continue;
            }
        }
        w[o++] = in[i++];
    }
    out->n = o;
    return 0;
}

/* _MAGIC_WORD: __[A-Z]+__ -> " " */
static int pass_magic_words(const ch *in, Py_ssize_t n, Buf *out)
{
    if (buf_reserve(out, n + 1) < 0)
        return -1;
    ch *w = out->p;
    Py_ssize_t o = 0, i = 0;
    while (i < n) {
        COPY_TO('_');
        if (in[i] == '_' && i + 1 < n && in[i + 1] == '_') {
            Py_ssize_t k = i + 2;
            while (k < n && in[k] >= 'A' && in[k] <= 'Z')
                k++;
            if (k > i + 2 && k + 1 < n && in[k] == '_' && in[k + 1] == '_') {
                w[o++] = ' ';
                i = k + 2;
                continue;
            }
        }
        w[o++] = in[i++];
    }
    out->n = o;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Counting: interned tokens, unigram counts per id, bigram counts per (id, id) of word tokens.       */

typedef struct {
    uint64_t hash;
    Py_ssize_t off, len;
    long long count;
    int word;
    int bucket;   /* set by parts() */
    PyObject *str;
} Token;

typedef struct {
    uint64_t key;   /* (a << 32 | b) + 1; 0 marks an empty slot */
    long long count;
} BigramSlot;

typedef struct {
    const ch *p;
    Py_ssize_t len;
    uint64_t hash;
    Py_ssize_t id;   /* interned id if a word token, else -1 */
} PageToken;

typedef struct {
    PyObject_HEAD
    Ctx ctx;
    PyObject *is_word;        /* text.is_query_token */
    Buf a, b, tmp, chars;     /* work buffers; chars: the code points of all interned tokens */
    Token *tokens;
    Py_ssize_t ntokens, tokens_cap;
    int32_t *slots;           /* token hash table: ids, -1 empty */
    size_t slots_mask;
    BigramSlot *bigrams;
    size_t bigrams_mask, nbigrams;
    PageToken *page;          /* the current page's tokens */
    Py_ssize_t page_cap;
    long long pages;
} SplitCounter;

/* ASCII classes for the tokenizer: 0 token char, 1 separator, 2 punctuation token, 3 newline. */
static unsigned char ASCII_CLASS[128];
static ch PUNCT[128];   /* the punctuation tokens, addressable: PUNCT[c] == c */

static void init_ascii_class(void)
{
    for (int c = 0; c < 128; c++)
        ASCII_CLASS[c] = Py_UNICODE_ISSPACE(c) ? 1 : 0;
    for (const char *p = "*#={}[]|"; *p; p++)   /* strip_wiki_markup's final translate */
        ASCII_CLASS[(int)*p] = 1;
    for (const char *p = ",.;:?!`"; *p; p++)    /* text.PUNCT_TO_WRAP */
        ASCII_CLASS[(int)*p] = 2;
    ASCII_CLASS['\n'] = 3;                      /* wikicore.page_tokens: '\n' -> ' . ' */
    for (int c = 0; c < 128; c++)
        PUNCT[c] = (ch)c;
}

static inline uint64_t hash_chars(const ch *s, Py_ssize_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

/* text.is_query_token for an all-ASCII token: ^[^\W_](?:(?:[^\W_]|['’\-&])*[^\W_])?$ and a letter
 * somewhere; on ASCII, [^\W_] is [A-Za-z0-9] and a letter is [A-Za-z]. -2 for a token that is not ASCII. */
static int ascii_is_query_token(const ch *s, Py_ssize_t n)
{
    int letter = 0, ok = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        ch c = s[i];
        if (c >= 128)
            return -2;
        int alpha = is_alpha_ascii(c), alnum = alpha || (c >= '0' && c <= '9');
        letter |= alpha;
        if (!alnum && (i == 0 || i == n - 1 || (c != '\'' && c != '-' && c != '&')))
            ok = 0;
    }
    return ok && letter && n > 0;
}

static inline int same_chars(const ch *a, const ch *b, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)   /* tokens are short: a loop beats a call to memcmp */
        if (a[i] != b[i])
            return 0;
    return 1;
}

static int grow_slots(SplitCounter *sc)
{
    size_t cap = sc->slots ? (sc->slots_mask + 1) * 2 : 1 << 14;
    int32_t *slots = PyMem_Malloc(cap * sizeof(int32_t));
    if (!slots) {
        PyErr_NoMemory();
        return -1;
    }
    memset(slots, 0xff, cap * sizeof(int32_t));
    for (Py_ssize_t id = 0; id < sc->ntokens; id++) {
        size_t s = sc->tokens[id].hash & (cap - 1);
        while (slots[s] >= 0)
            s = (s + 1) & (cap - 1);
        slots[s] = (int32_t)id;
    }
    PyMem_Free(sc->slots);
    sc->slots = slots;
    sc->slots_mask = cap - 1;
    return 0;
}

/* The id of token s[0..n), interned on first sight (asking is_word once). -1 on error. */
static Py_ssize_t intern_token(SplitCounter *sc, const ch *s, Py_ssize_t n, uint64_t h)
{
    size_t slot = h & sc->slots_mask;
    for (;;) {
        int32_t id = sc->slots[slot];
        if (id < 0)
            break;
        Token *t = &sc->tokens[id];
        if (t->hash == h && t->len == n && same_chars(sc->chars.p + t->off, s, n))
            return id;
        slot = (slot + 1) & sc->slots_mask;
    }
    if (sc->ntokens >= INT32_MAX - 1) {
        PyErr_SetString(PyExc_OverflowError, "too many distinct tokens in one split");
        return -1;
    }
    if (sc->ntokens == sc->tokens_cap) {
        Py_ssize_t cap = sc->tokens_cap ? sc->tokens_cap * 2 : 4096;
        Token *t = PyMem_Realloc(sc->tokens, (size_t)cap * sizeof(Token));
        if (!t) {
            PyErr_NoMemory();
            return -1;
        }
        sc->tokens = t;
        sc->tokens_cap = cap;
    }
    PyObject *str = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, s, n);
    if (!str)
        return -1;
    int word = ascii_is_query_token(s, n);
    if (word == -2) {   /* not ASCII: text.is_query_token decides (Unicode \w and \d) */
        PyObject *r = PyObject_CallOneArg(sc->is_word, str);
        word = r ? PyObject_IsTrue(r) : -1;
        Py_XDECREF(r);
    }
    if (word < 0 || buf_reserve(&sc->chars, sc->chars.n + n + 1) < 0) {
        Py_DECREF(str);
        return -1;
    }
    Py_ssize_t id = sc->ntokens++;
    Token *t = &sc->tokens[id];
    t->hash = h;
    t->off = sc->chars.n;
    t->len = n;
    t->count = 0;
    t->word = word;
    t->str = str;
    memcpy(sc->chars.p + sc->chars.n, s, (size_t)n * sizeof(ch));
    sc->chars.n += n;
    sc->slots[slot] = (int32_t)id;
    if ((size_t)sc->ntokens * 2 > sc->slots_mask && grow_slots(sc) < 0)
        return -1;
    return id;
}

/* splitmix64's finalizer: every key bit reaches the low bits the table mask keeps */
static inline size_t mix64(uint64_t k)
{
    k = (k ^ (k >> 30)) * 0xBF58476D1CE4E5B9ULL;
    k = (k ^ (k >> 27)) * 0x94D049BB133111EBULL;
    return (size_t)(k ^ (k >> 31));
}

static int grow_bigrams(SplitCounter *sc)
{
    size_t cap = sc->bigrams ? (sc->bigrams_mask + 1) * 2 : 1 << 16;
    BigramSlot *t = PyMem_Calloc(cap, sizeof(BigramSlot));
    if (!t) {
        PyErr_NoMemory();
        return -1;
    }
    if (sc->bigrams)
        for (size_t i = 0; i <= sc->bigrams_mask; i++) {
            if (!sc->bigrams[i].key)
                continue;
            size_t s = mix64(sc->bigrams[i].key) & (cap - 1);
            while (t[s].key)
                s = (s + 1) & (cap - 1);
            t[s] = sc->bigrams[i];
        }
    PyMem_Free(sc->bigrams);
    sc->bigrams = t;
    sc->bigrams_mask = cap - 1;
    return 0;
}

static inline size_t bigram_slot0(SplitCounter *sc, Py_ssize_t a, Py_ssize_t b)
{
    return mix64((((uint64_t)a << 32) | (uint64_t)b) + 1) & sc->bigrams_mask;
}

static inline int count_bigram(SplitCounter *sc, Py_ssize_t a, Py_ssize_t b)
{
    uint64_t key = (((uint64_t)a << 32) | (uint64_t)b) + 1;
    size_t s = mix64(key) & sc->bigrams_mask;
    while (sc->bigrams[s].key && sc->bigrams[s].key != key)
        s = (s + 1) & sc->bigrams_mask;
    if (!sc->bigrams[s].key) {
        sc->bigrams[s].key = key;
        if (++sc->nbigrams * 2 > sc->bigrams_mask) {
            sc->bigrams[s].count = 1;
            return grow_bigrams(sc);
        }
    }
    sc->bigrams[s].count++;
    return 0;
}

static int reserve_page_tokens(SplitCounter *sc, Py_ssize_t need)
{
    if (need <= sc->page_cap)
        return 0;
    Py_ssize_t cap = sc->page_cap ? sc->page_cap : 4096;
    while (cap < need)
        cap *= 2;
    PageToken *t = PyMem_Realloc(sc->page, (size_t)cap * sizeof(PageToken));
    if (!t) {
        PyErr_NoMemory();
        return -1;
    }
    sc->page = t;
    sc->page_cap = cap;
    return 0;
}

/* How many tokens ahead hash-table slots are prefetched: they are random accesses into tables larger
 * than the cache, and a DRAM miss costs about as much as counting a few dozen tokens. */
#define PREFETCH_AHEAD 32

/* text.tokenize(stripped.translate(_MARKUP_TO_SPACE).replace('\n', ' . ')), counted. Returns #tokens.
 * Three sweeps over the page's tokens so that each hash-table access can be prefetched ahead of use:
 * split (with hashes), intern (ids), then bigrams. Counting is memory-latency bound without it. */
static Py_ssize_t count_text(SplitCounter *sc, const ch *s, Py_ssize_t n)
{
    /* tokens never outnumber the characters */
    if (reserve_page_tokens(sc, n + 1) < 0)
        return -1;
    PageToken *pt = sc->page;
    Py_ssize_t start = -1, ntok = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        ch c = s[i];
        int cls = c < 128 ? ASCII_CLASS[c] : (c == 0xa0 || Py_UNICODE_ISSPACE(c));
        if (cls == 0) {
            if (start < 0)
                start = i;
            continue;
        }
        if (start >= 0) {
            pt[ntok].p = s + start;
            pt[ntok++].len = i - start;
            start = -1;
        }
        if (cls >= 2) {
            pt[ntok].p = &PUNCT[cls == 3 ? '.' : c];
            pt[ntok++].len = 1;
        }
    }
    if (start >= 0) {
        pt[ntok].p = s + start;
        pt[ntok++].len = n - start;
    }
    for (Py_ssize_t i = 0; i < ntok; i++)
        pt[i].hash = hash_chars(pt[i].p, pt[i].len);
    for (Py_ssize_t i = 0; i < ntok; i++) {
        if (i + PREFETCH_AHEAD < ntok)
            __builtin_prefetch(&sc->slots[pt[i + PREFETCH_AHEAD].hash & sc->slots_mask]);
        Py_ssize_t id = intern_token(sc, pt[i].p, pt[i].len, pt[i].hash);
        if (id < 0)
            return -1;
        Token *t = &sc->tokens[id];
        t->count++;
        pt[i].id = t->word ? id : -1;
    }
    for (Py_ssize_t i = 0; i + 1 < ntok; i++) {
        if (i + 1 + PREFETCH_AHEAD < ntok && pt[i + PREFETCH_AHEAD].id >= 0 && pt[i + 1 + PREFETCH_AHEAD].id >= 0)
            __builtin_prefetch(&sc->bigrams[bigram_slot0(sc, pt[i + PREFETCH_AHEAD].id, pt[i + 1 + PREFETCH_AHEAD].id)]);
        if (pt[i].id >= 0 && pt[i + 1].id >= 0 && count_bigram(sc, pt[i].id, pt[i + 1].id) < 0)
            return -1;
    }
    return ntok;
}

#define RUN(call)              \
    do {                       \
        if ((call) < 0)        \
            return -1;         \
        Buf t_ = *cur;         \
        *cur = *nxt;           \
        *nxt = t_;             \
    } while (0)

/* wikitext.strip_wiki_markup on sc->a, pass by pass; the result is left in sc->a. */
static int strip_markup(SplitCounter *sc)
{
    Buf *cur = &sc->a, *nxt = &sc->b;
    Ctx *ctx = &sc->ctx;
    if (has_char(cur->p, cur->n, '<')) {
        if (has_pair(cur->p, cur->n, '<', '!'))
            RUN(pass_comments(cur->p, cur->n, nxt));
        RUN(pass_non_prose(cur->p, cur->n, nxt, 1));
        RUN(pass_non_prose(cur->p, cur->n, nxt, 0));
    }
    if (has_pair(cur->p, cur->n, '{', '{'))
        RUN(pass_templates(cur->p, cur->n, nxt));
    if (has_pair(cur->p, cur->n, '{', '|'))
        RUN(pass_tables(cur->p, cur->n, nxt));
    if (has_char(cur->p, cur->n, '['))
        RUN(pass_external_links(cur->p, cur->n, nxt));
    if (has_pair(cur->p, cur->n, '[', '[')) {
        RUN(pass_plain_links(cur->p, cur->n, nxt, 0));
        RUN(pass_plain_links(cur->p, cur->n, nxt, 1));
    }
    if (has_pair(cur->p, cur->n, '[', '[') || has_pair(cur->p, cur->n, ']', ']'))
        RUN(pass_scan_links(ctx, cur->p, cur->n, nxt, &sc->tmp));
    if (has_pair(cur->p, cur->n, ':', '/'))   /* "://" in text */
        RUN(pass_bare_urls(cur->p, cur->n, nxt));
    if (has_char(cur->p, cur->n, '<'))
        RUN(pass_tags(cur->p, cur->n, nxt));
    if (has_char(cur->p, cur->n, '&')) {
        RUN(pass_entities(ctx, cur->p, cur->n, nxt));
        if (has_char(cur->p, cur->n, '<'))
            RUN(pass_tags(cur->p, cur->n, nxt));
    }
    if (has_pair(cur->p, cur->n, '\'', '\'')) {
        RUN(pass_quotes(cur->p, cur->n, nxt, 5));
        RUN(pass_quotes(cur->p, cur->n, nxt, 3));
        RUN(pass_quotes(cur->p, cur->n, nxt, 2));
    }
    if (has_pair(cur->p, cur->n, '_', '_'))
        RUN(pass_magic_words(cur->p, cur->n, nxt));
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* The Python type                                                                                   */

static PyObject *SplitCounter_add_page(SplitCounter *sc, PyObject *text)
{
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "add_page() needs a str");
        return NULL;
    }
    sc->pages++;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (buf_reserve(&sc->a, n + 1) < 0 || buf_reserve(&sc->b, n + 1) < 0)
        return NULL;
    if (!PyUnicode_AsUCS4(text, sc->a.p, sc->a.cap, 0))
        return NULL;
    sc->a.n = n;
    if (strip_markup(sc) < 0)
        return NULL;
    Py_ssize_t ntok = count_text(sc, sc->a.p, sc->a.n);
    if (ntok < 0)
        return NULL;
    return PyLong_FromSsize_t(ntok);
}

static PyObject *SplitCounter_result(SplitCounter *sc, PyObject *Py_UNUSED(ignored))
{
    PyObject *uni = PyDict_New(), *bi = PyDict_New();
    if (!uni || !bi)
        goto error;
    for (Py_ssize_t id = 0; id < sc->ntokens; id++) {
        Token *t = &sc->tokens[id];
        if (!t->word || !t->count)
            continue;
        PyObject *c = PyLong_FromLongLong(t->count);
        if (!c || PyDict_SetItem(uni, t->str, c) < 0) {
            Py_XDECREF(c);
            goto error;
        }
        Py_DECREF(c);
    }
    for (size_t i = 0; sc->bigrams && i <= sc->bigrams_mask; i++) {
        BigramSlot *s = &sc->bigrams[i];
        if (!s->key)
            continue;
        uint64_t k = s->key - 1;
        PyObject *key = PyTuple_Pack(2, sc->tokens[k >> 32].str, sc->tokens[k & 0xffffffffu].str);
        PyObject *c = key ? PyLong_FromLongLong(s->count) : NULL;
        if (!c || PyDict_SetItem(bi, key, c) < 0) {
            Py_XDECREF(key);
            Py_XDECREF(c);
            goto error;
        }
        Py_DECREF(key);
        Py_DECREF(c);
    }
    return Py_BuildValue("(NN)", uni, bi);
error:
    Py_XDECREF(uni);
    Py_XDECREF(bi);
    return NULL;
}

/* Put value into the dict parts[b], creating it. */
static int set_in_part(PyObject **parts, int b, PyObject *key, long long count)
{
    if (!parts[b] && !(parts[b] = PyDict_New()))
        return -1;
    PyObject *c = PyLong_FromLongLong(count);
    if (!c)
        return -1;
    int rc = PyDict_SetItem(parts[b], key, c);
    Py_DECREF(c);
    return rc;
}

/* The C twin of wikicore.split_counts(*result(), buckets): the parts without building whole dicts. */
static PyObject *SplitCounter_parts(SplitCounter *sc, PyObject *args)
{
    int buckets;
    PyObject *bucket_of, *out = NULL, **uni = NULL, **bi = NULL;
    if (!PyArg_ParseTuple(args, "iO:parts", &buckets, &bucket_of))
        return NULL;
    if (buckets < 1) {
        PyErr_SetString(PyExc_ValueError, "buckets must be >= 1");
        return NULL;
    }
    uni = PyMem_Calloc((size_t)buckets, sizeof(PyObject *));
    bi = PyMem_Calloc((size_t)buckets, sizeof(PyObject *));
    if (!uni || !bi) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t id = 0; id < sc->ntokens; id++) {
        Token *t = &sc->tokens[id];
        if (!t->word || !t->count)
            continue;
        PyObject *r = PyObject_CallFunction(bucket_of, "Oi", t->str, buckets);
        long b = r ? PyLong_AsLong(r) : -1;
        Py_XDECREF(r);
        if (b < 0 || b >= buckets) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "bucket_of returned a bucket out of range");
            goto done;
        }
        t->bucket = (int)b;
        if (set_in_part(uni, t->bucket, t->str, t->count) < 0)
            goto done;
    }
    for (size_t i = 0; sc->bigrams && i <= sc->bigrams_mask; i++) {
        BigramSlot *s = &sc->bigrams[i];
        if (!s->key)
            continue;
        uint64_t k = s->key - 1;
        Token *a = &sc->tokens[k >> 32], *b = &sc->tokens[k & 0xffffffffu];
        PyObject *key = PyTuple_Pack(2, a->str, b->str);
        int rc = key ? set_in_part(bi, a->bucket, key, s->count) : -1;
        Py_XDECREF(key);
        if (rc < 0)
            goto done;
    }
    if (!(out = PyList_New(0)))
        goto done;
    for (int kind = 0; kind < 2; kind++)
        for (int b = 0; b < buckets; b++) {
            PyObject *part = (kind ? bi : uni)[b];
            if (!part)
                continue;
            PyObject *item = Py_BuildValue("(siO)", kind ? "bi" : "uni", b, part);
            if (!item || PyList_Append(out, item) < 0) {
                Py_XDECREF(item);
                Py_CLEAR(out);
                goto done;
            }
            Py_DECREF(item);
        }
done:
    for (int b = 0; b < buckets && uni && bi; b++) {
        Py_XDECREF(uni[b]);
        Py_XDECREF(bi[b]);
    }
    PyMem_Free(uni);
    PyMem_Free(bi);
    return out;
}

static void clear_counts(SplitCounter *sc)
{
    for (Py_ssize_t id = 0; id < sc->ntokens; id++)
        Py_CLEAR(sc->tokens[id].str);
    sc->ntokens = 0;
    sc->chars.n = 0;
    if (sc->slots)
        memset(sc->slots, 0xff, (sc->slots_mask + 1) * sizeof(int32_t));
    PyMem_Free(sc->bigrams);
    sc->bigrams = NULL;
    sc->nbigrams = 0;
}

static PyObject *SplitCounter_clear(SplitCounter *sc, PyObject *Py_UNUSED(ignored))
{
    clear_counts(sc);
    if (grow_bigrams(sc) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int SplitCounter_init(SplitCounter *sc, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"is_word", "link_text", "unescape", "entities", NULL};
    PyObject *is_word, *link_text_fn, *unescape, *entities;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO!", kw, &is_word, &link_text_fn,
                                     &unescape, &PyDict_Type, &entities))
        return -1;
    Py_INCREF(is_word);
    Py_XSETREF(sc->is_word, is_word);
    Py_INCREF(link_text_fn);
    Py_XSETREF(sc->ctx.link_text, link_text_fn);
    Py_INCREF(unescape);
    Py_XSETREF(sc->ctx.unescape, unescape);
    Py_INCREF(entities);
    Py_XSETREF(sc->ctx.entities, entities);
    clear_counts(sc);
    if ((!sc->slots && grow_slots(sc) < 0) || grow_bigrams(sc) < 0)
        return -1;
    return 0;
}

static void SplitCounter_dealloc(SplitCounter *sc)
{
    clear_counts(sc);
    Py_XDECREF(sc->is_word);
    Py_XDECREF(sc->ctx.link_text);
    Py_XDECREF(sc->ctx.unescape);
    Py_XDECREF(sc->ctx.entities);
    PyMem_Free(sc->a.p);
    PyMem_Free(sc->b.p);
    PyMem_Free(sc->tmp.p);
    PyMem_Free(sc->chars.p);
    PyMem_Free(sc->tokens);
    PyMem_Free(sc->slots);
    PyMem_Free(sc->page);
    Py_TYPE(sc)->tp_free((PyObject *)sc);
}

static PyObject *SplitCounter_get_distinct_bigrams(SplitCounter *sc, void *c)
{
    return PyLong_FromSize_t(sc->nbigrams);
}

static PyObject *SplitCounter_get_stats(SplitCounter *sc, void *c)
{
    return Py_BuildValue("{sLsL}", "pages", sc->pages, "fallback_pieces", sc->ctx.fallback_pieces);
}

static PyMethodDef SplitCounter_methods[] = {
    {"add_page", (PyCFunction)SplitCounter_add_page, METH_O,
     "add_page(wikitext) -> number of tokens of the page (all tokens, punctuation included)."},
    {"result", (PyCFunction)SplitCounter_result, METH_NOARGS,
     "result() -> ({word: count}, {(word, word): count}) over the word tokens (text.is_query_token)."},
    {"parts", (PyCFunction)SplitCounter_parts, METH_VARARGS,
     "parts(buckets, bucket_of) -> [('uni'|'bi', bucket, {key: count})]: wikicore.split_counts(*result(), buckets)."},
    {"clear", (PyCFunction)SplitCounter_clear, METH_NOARGS, "Forget all counts (after result())."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef SplitCounter_getset[] = {
    {"distinct_bigrams", (getter)SplitCounter_get_distinct_bigrams, NULL, "distinct word bigrams held", NULL},
    {"stats", (getter)SplitCounter_get_stats, NULL,
     "{'pages', 'fallback_pieces'}: pages counted, and pieces handed back to the Python reference", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SplitCounterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pipeline.queries._wikicore.SplitCounter",
    .tp_doc = "Strip, tokenize and count the word unigrams and bigrams of wikitext pages "
              "(SplitCounter(is_word, link_text, unescape, entities)).",
    .tp_basicsize = sizeof(SplitCounter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SplitCounter_init,
    .tp_dealloc = (destructor)SplitCounter_dealloc,
    .tp_methods = SplitCounter_methods,
    .tp_getset = SplitCounter_getset,
};

static PyMethodDef module_methods[] = {
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef wikicore_module = {
    PyModuleDef_HEAD_INIT, "pipeline.queries._wikicore",
    "C core of stage 1: wiki markup stripping, tokenization and counting (see pipeline/queries/wikicore.py).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__wikicore(void)
{
    init_ascii_class();
    if (PyType_Ready(&SplitCounterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&wikicore_module);
    if (!m)
        return NULL;
    Py_INCREF(&SplitCounterType);
    if (PyModule_AddObject(m, "SplitCounter", (PyObject *)&SplitCounterType) < 0) {
        Py_DECREF(&SplitCounterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
