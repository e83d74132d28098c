/* C core of the match stage's per-row work (pipeline/match/stage.py): the cheap checks and normalisation of steps 1-3,
 * MetaCLIP spacing, the Aho-Corasick hits as arrays, the uids, and the URL buckets; and, for the balance stage,
 * MetaCLIP's seeded draws (BLAKE2b is here already).
 *
 * Each function has a Python twin that defines it (match.check_rows_py, match.hit_columns_py, records.uids_of_py,
 * beamio.buckets_of_py, balance.head_only_draws_py); tests/test_matchcore.py holds the C to the twin on
 * real-looking and generated rows, and the stages run the twin where this extension could not be built.
 *
 * check_rows decides ASCII rows itself: a row whose url and caption are ASCII str, the url non-empty and the
 * caption free of '&' (no HTML reference to unescape, nothing for NFC to do). Every other row (~4% of real
 * captions: non-ASCII, '&', non-strings, missing values) goes to the Python callback, which is the reference.
 * ASCII whitespace here is what str.split()/str.strip() and the regex class \s treat as whitespace among ASCII
 * characters: \t \n \v \f \r, \x1c-\x1f and the space.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static unsigned char is_ws[128];
static unsigned char is_mark[128]; /* text.PUNCT_TO_WRAP: , . ; : ? ! ` */

static void init_tables(void)
{
    for (int c = 9; c <= 13; c++)
        is_ws[c] = 1;
    for (int c = 28; c <= 32; c++)
        is_ws[c] = 1;
    const char *marks = ",.;:?!`";
    for (const char *m = marks; *m; m++)
        is_mark[(unsigned char)*m] = 1;
}

/* match._HTTP_URL on a stripped ASCII url: 'http' or 'https' in any case, '://', then at least one character,
 * the first not one of / ? #, and no whitespace anywhere after the scheme. */
static int http_url_ok(const unsigned char *u, Py_ssize_t n)
{
    static const char http[] = "http";
    Py_ssize_t i = 0;
    for (; i < 4; i++)
        if (i >= n || (u[i] | 0x20) != http[i])
            return 0;
    if (i < n && (u[i] | 0x20) == 's')
        i++;
    if (n - i < 4 || u[i] != ':' || u[i + 1] != '/' || u[i + 2] != '/')
        return 0;
    i += 3;
    if (u[i] == '/' || u[i] == '?' || u[i] == '#')
        return 0;
    for (; i < n; i++)
        if (is_ws[u[i]])
            return 0;
    return 1;
}

typedef struct {
    unsigned char *data;
    Py_ssize_t size;
} Scratch;

static int scratch_reserve(Scratch *s, Py_ssize_t size)
{
    if (size <= s->size)
        return 0;
    unsigned char *grown = PyMem_Realloc(s->data, size);
    if (!grown) {
        PyErr_NoMemory();
        return -1;
    }
    s->data = grown;
    s->size = size;
    return 0;
}

/* An ASCII str object of n bytes copied from p. */
static PyObject *ascii_str(const unsigned char *p, Py_ssize_t n)
{
    PyObject *s = PyUnicode_New(n, 127);
    if (s)
        memcpy(PyUnicode_DATA(s), p, n);
    return s;
}

static int append_new(PyObject *list, PyObject *item)
{
    if (!item)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* Append (i, reason) to rejected. */
static int reject(PyObject *rejected, Py_ssize_t i, PyObject *reason)
{
    PyObject *index = PyLong_FromSsize_t(i);
    if (!index)
        return -1;
    int rc = append_new(rejected, PyTuple_Pack(2, index, reason));
    Py_DECREF(index);
    return rc;
}

enum { NOT_HTTP, EMPTY, TOO_SHORT, TOO_LONG, FEW_WORDS, N_REASONS };

static PyObject *check_rows(PyObject *self, PyObject *args)
{
    PyObject *urls_in, *captions_in, *reasons_in, *row_fn, *names;
    Py_ssize_t min_chars, max_chars, min_words;
    if (!PyArg_ParseTuple(args, "OOOnnnOO!:check_rows", &urls_in, &captions_in, &reasons_in, &min_chars, &max_chars,
                          &min_words, &row_fn, &PyTuple_Type, &names))
        return NULL;
    if (PyTuple_GET_SIZE(names) != N_REASONS) {
        PyErr_SetString(PyExc_ValueError, "check_rows: names must hold 5 reasons");
        return NULL;
    }
    PyObject *urls = NULL, *captions = NULL, *reasons = NULL, *result = NULL;
    PyObject *rows = NULL, *out_urls = NULL, *out_captions = NULL, *spaced = NULL, *rejected = NULL;
    Scratch buf = {NULL, 0};
    urls = PySequence_Fast(urls_in, "check_rows: urls must be a sequence");
    captions = urls ? PySequence_Fast(captions_in, "check_rows: captions must be a sequence") : NULL;
    if (!captions)
        goto done;
    if (reasons_in != Py_None && !(reasons = PySequence_Fast(reasons_in, "check_rows: reasons must be a sequence")))
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(urls);
    if (PySequence_Fast_GET_SIZE(captions) != n || (reasons && PySequence_Fast_GET_SIZE(reasons) != n)) {
        PyErr_SetString(PyExc_ValueError, "check_rows: columns of different lengths");
        goto done;
    }
    if (!(rows = PyList_New(0)) || !(out_urls = PyList_New(0)) || !(out_captions = PyList_New(0)) ||
        !(spaced = PyList_New(0)) || !(rejected = PyList_New(0)))
        goto done;

    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *url = PySequence_Fast_GET_ITEM(urls, i), *caption = PySequence_Fast_GET_ITEM(captions, i);
        if (reasons) {
            PyObject *reason = PySequence_Fast_GET_ITEM(reasons, i);
            int given = PyObject_IsTrue(reason);
            if (given < 0)
                goto done;
            if (given) {
                if (reject(rejected, i, reason) < 0)
                    goto done;
                continue;
            }
        }
        if (!(PyUnicode_CheckExact(url) && PyUnicode_CheckExact(caption) && PyUnicode_IS_ASCII(url) &&
              PyUnicode_IS_ASCII(caption) && PyUnicode_GET_LENGTH(url) > 0 &&
              !memchr(PyUnicode_DATA(caption), '&', PyUnicode_GET_LENGTH(caption)))) {
            /* the reference decides: a reason, or (url, caption, spaced) */
            PyObject *verdict = PyObject_CallFunctionObjArgs(row_fn, url, caption, NULL);
            if (!verdict)
                goto done;
            if (PyTuple_Check(verdict) && PyTuple_GET_SIZE(verdict) == 3) {
                PyObject *index = PyLong_FromSsize_t(i);
                int rc = append_new(rows, index) < 0 || PyList_Append(out_urls, PyTuple_GET_ITEM(verdict, 0)) < 0 ||
                         PyList_Append(out_captions, PyTuple_GET_ITEM(verdict, 1)) < 0 ||
                         PyList_Append(spaced, PyTuple_GET_ITEM(verdict, 2)) < 0;
                Py_DECREF(verdict);
                if (rc)
                    goto done;
            } else {
                int rc = reject(rejected, i, verdict);
                Py_DECREF(verdict);
                if (rc < 0)
                    goto done;
            }
            continue;
        }
        /* url.strip() */
        const unsigned char *u = PyUnicode_DATA(url);
        Py_ssize_t us = 0, ue = PyUnicode_GET_LENGTH(url);
        while (us < ue && is_ws[u[us]])
            us++;
        while (ue > us && is_ws[u[ue - 1]])
            ue--;
        /* " ".join(caption.split()): its length, word count, and whether it is the caption itself */
        const unsigned char *c = PyUnicode_DATA(caption);
        Py_ssize_t m = PyUnicode_GET_LENGTH(caption), chars = 0, words = 0;
        int in_word = 0, other_ws = 0; /* other_ws: whitespace other than the space */
        for (Py_ssize_t k = 0; k < m; k++) {
            unsigned char ch = c[k];
            if (is_ws[ch]) {
                in_word = 0;
                other_ws |= ch != ' ';
            } else {
                if (!in_word) {
                    words++;
                    in_word = 1;
                }
                chars++;
            }
        }
        Py_ssize_t length = words ? chars + words - 1 : 0;
        int reason = -1;
        if (!http_url_ok(u + us, ue - us))
            reason = NOT_HTTP;
        else if (length == 0)
            reason = EMPTY;
        else if (length < min_chars)
            reason = TOO_SHORT;
        else if (length > max_chars)
            reason = TOO_LONG;
        else if (min_words > 1 && words < min_words)
            reason = FEW_WORDS;
        if (reason >= 0) {
            if (reject(rejected, i, PyTuple_GET_ITEM(names, reason)) < 0)
                goto done;
            continue;
        }
        /* kept: row index, stripped url, normalized caption, spaced caption */
        if (append_new(rows, PyLong_FromSsize_t(i)) < 0)
            goto done;
        if (us == 0 && ue == PyUnicode_GET_LENGTH(url)) {
            if (PyList_Append(out_urls, url) < 0)
                goto done;
        } else if (append_new(out_urls, PyUnicode_Substring(url, us, ue)) < 0) {
            goto done;
        }
        if (scratch_reserve(&buf, 3 * m + 2) < 0)
            goto done;
        unsigned char *out = buf.data;
        Py_ssize_t o = 0;
        if (length == m && !other_ws) { /* already normalized: one space between words, none at the ends */
            if (PyList_Append(out_captions, caption) < 0)
                goto done;
        } else {
            for (Py_ssize_t k = 0; k < m; k++) {
                unsigned char ch = c[k];
                if (!is_ws[ch]) {
                    if (o && is_ws[c[k - 1]])
                        out[o++] = ' ';
                    out[o++] = ch;
                }
            }
            if (append_new(out_captions, ascii_str(out, o)) < 0)
                goto done;
        }
        /* spacing: ' ' + the tokens (marks are tokens of their own) joined by one space + ' ' */
        o = 0;
        out[o++] = ' ';
        for (Py_ssize_t k = 0; k < m; k++) {
            unsigned char ch = c[k];
            if (is_ws[ch]) {
                if (out[o - 1] != ' ')
                    out[o++] = ' ';
            } else if (is_mark[ch]) {
                if (out[o - 1] != ' ')
                    out[o++] = ' ';
                out[o++] = ch;
                out[o++] = ' ';
            } else {
                out[o++] = ch;
            }
        }
        if (out[o - 1] != ' ')
            out[o++] = ' ';
        if (append_new(spaced, ascii_str(out, o)) < 0)
            goto done;
    }
    result = PyTuple_Pack(5, rows, out_urls, out_captions, spaced, rejected);
done:
    PyMem_Free(buf.data);
    Py_XDECREF(urls);
    Py_XDECREF(captions);
    Py_XDECREF(reasons);
    Py_XDECREF(rows);
    Py_XDECREF(out_urls);
    Py_XDECREF(out_captions);
    Py_XDECREF(spaced);
    Py_XDECREF(rejected);
    return result;
}

/* hit_columns(hits, position_field, id_field) -> (positions, ids): two int64 columns as bytearrays, from a list of
 * tuples of ints (the Aho-Corasick libraries' hits). */
static PyObject *hit_columns(PyObject *self, PyObject *args)
{
    PyObject *hits;
    Py_ssize_t pos_field, id_field;
    if (!PyArg_ParseTuple(args, "O!nn:hit_columns", &PyList_Type, &hits, &pos_field, &id_field))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(hits);
    /* bytearrays: numpy arrays over them are writable, as the twin's are */
    PyObject *positions = PyByteArray_FromStringAndSize(NULL, n * 8), *ids = PyByteArray_FromStringAndSize(NULL, n * 8);
    if (!positions || !ids)
        goto fail;
    int64_t *p = (int64_t *)PyByteArray_AS_STRING(positions), *q = (int64_t *)PyByteArray_AS_STRING(ids);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *hit = PyList_GET_ITEM(hits, i);
        if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) <= pos_field || PyTuple_GET_SIZE(hit) <= id_field ||
            pos_field < 0 || id_field < 0) {
            PyErr_SetString(PyExc_TypeError, "hit_columns: each hit must be a tuple holding both fields");
            goto fail;
        }
        p[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(hit, pos_field));
        q[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(hit, id_field));
        if ((p[i] == -1 || q[i] == -1) && PyErr_Occurred())
            goto fail;
    }
    PyObject *result = PyTuple_Pack(2, positions, ids);
    Py_DECREF(positions);
    Py_DECREF(ids);
    return result;
fail:
    Py_XDECREF(positions);
    Py_XDECREF(ids);
    return NULL;
}

/* ---- BLAKE2b (RFC 7693), unkeyed, for records.uid_of: blake2b(url + '\x1f' + caption, digest_size=16) ---- */

static const uint64_t B2B_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t B2B_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

typedef struct {
    uint64_t h[8], t;  /* chain value, bytes compressed so far (inputs here are far below 2^64 bytes) */
    uint8_t block[128];
    size_t filled;
} Blake2b;

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static void b2b_compress(Blake2b *s, int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++) {
        uint64_t w = 0;
        for (int b = 7; b >= 0; b--)
            w = (w << 8) | s->block[8 * i + b];
        m[i] = w;
    }
    for (int i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = B2B_IV[i];
    }
    v[12] ^= s->t;
    if (last)
        v[14] = ~v[14];
#define B2B_G(a, b, c, d, x, y)                                                                                       \
    do {                                                                                                             \
        v[a] = v[a] + v[b] + (x); v[d] = rotr64(v[d] ^ v[a], 32);                                                    \
        v[c] = v[c] + v[d];       v[b] = rotr64(v[b] ^ v[c], 24);                                                    \
        v[a] = v[a] + v[b] + (y); v[d] = rotr64(v[d] ^ v[a], 16);                                                    \
        v[c] = v[c] + v[d];       v[b] = rotr64(v[b] ^ v[c], 63);                                                    \
    } while (0)
    for (int r = 0; r < 12; r++) {
        const uint8_t *sg = B2B_SIGMA[r];
        B2B_G(0, 4, 8, 12, m[sg[0]], m[sg[1]]);
        B2B_G(1, 5, 9, 13, m[sg[2]], m[sg[3]]);
        B2B_G(2, 6, 10, 14, m[sg[4]], m[sg[5]]);
        B2B_G(3, 7, 11, 15, m[sg[6]], m[sg[7]]);
        B2B_G(0, 5, 10, 15, m[sg[8]], m[sg[9]]);
        B2B_G(1, 6, 11, 12, m[sg[10]], m[sg[11]]);
        B2B_G(2, 7, 8, 13, m[sg[12]], m[sg[13]]);
        B2B_G(3, 4, 9, 14, m[sg[14]], m[sg[15]]);
    }
#undef B2B_G
    for (int i = 0; i < 8; i++)
        s->h[i] ^= v[i] ^ v[i + 8];
}

static void b2b_init(Blake2b *s, int digest_size)
{
    memcpy(s->h, B2B_IV, sizeof s->h);
    s->h[0] ^= 0x01010000ULL ^ (uint64_t)digest_size; /* no key, fanout 1, depth 1 */
    s->t = 0;
    s->filled = 0;
}

static void b2b_update(Blake2b *s, const uint8_t *p, size_t n)
{
    while (n) {
        if (s->filled == 128) { /* a full block is compressed only once more input follows */
            s->t += 128;
            b2b_compress(s, 0);
            s->filled = 0;
        }
        size_t take = 128 - s->filled < n ? 128 - s->filled : n;
        memcpy(s->block + s->filled, p, take);
        s->filled += take;
        p += take;
        n -= take;
    }
}

static void b2b_hex16(Blake2b *s, char *hex)
{
    static const char digits[] = "0123456789abcdef";
    s->t += s->filled;
    memset(s->block + s->filled, 0, 128 - s->filled);
    b2b_compress(s, 1);
    for (int i = 0; i < 16; i++) {
        uint8_t byte = (uint8_t)(s->h[i / 8] >> (8 * (i % 8)));
        hex[2 * i] = digits[byte >> 4];
        hex[2 * i + 1] = digits[byte & 15];
    }
}

/* The UTF-8 bytes of a str, surrogates passed through (as records.uid_of encodes): a new bytes object. */
static PyObject *utf8_bytes(PyObject *s)
{
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "uids and buckets take str values only");
        return NULL;
    }
    return PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass");
}

static PyObject *uids(PyObject *self, PyObject *args)
{
    PyObject *urls_in, *captions_in;
    if (!PyArg_ParseTuple(args, "OO:uids", &urls_in, &captions_in))
        return NULL;
    PyObject *urls = PySequence_Fast(urls_in, "uids: urls must be a sequence"), *captions = NULL, *out = NULL;
    if (!urls || !(captions = PySequence_Fast(captions_in, "uids: captions must be a sequence")))
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(urls);
    if (PySequence_Fast_GET_SIZE(captions) != n) {
        PyErr_SetString(PyExc_ValueError, "uids: urls and captions of different lengths");
        goto done;
    }
    if (!(out = PyList_New(n)))
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *parts[2] = {PySequence_Fast_GET_ITEM(urls, i), PySequence_Fast_GET_ITEM(captions, i)};
        Blake2b state;
        b2b_init(&state, 16);
        for (int k = 0; k < 2; k++) {
            PyObject *s = parts[k];
            if (PyUnicode_Check(s) && PyUnicode_IS_ASCII(s)) {
                b2b_update(&state, PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s));
            } else {
                PyObject *encoded = utf8_bytes(s);
                if (!encoded) {
                    Py_CLEAR(out);
                    goto done;
                }
                b2b_update(&state, (const uint8_t *)PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded));
                Py_DECREF(encoded);
            }
            if (k == 0)
                b2b_update(&state, (const uint8_t *)"\x1f", 1);
        }
        PyObject *uid = PyUnicode_New(32, 127);
        if (!uid) {
            Py_CLEAR(out);
            goto done;
        }
        b2b_hex16(&state, PyUnicode_DATA(uid));
        PyList_SET_ITEM(out, i, uid);
    }
done:
    Py_XDECREF(urls);
    Py_XDECREF(captions);
    return out;
}

/* ---- CRC-32 (zlib's: reflected 0xEDB88320, inverted in and out), for beamio.buckets_of ---- */

static uint32_t crc_table[8][256];

static void init_crc_table(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][b] = c;
    }
    for (int t = 1; t < 8; t++) /* slicing by 8: table t advances a byte through t more zero bytes */
        for (int b = 0; b < 256; b++)
            crc_table[t][b] = (crc_table[t - 1][b] >> 8) ^ crc_table[0][crc_table[t - 1][b] & 0xFF];
}

static uint32_t crc32_of(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (; n >= 8; p += 8, n -= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF] ^
            crc_table[4][lo >> 24] ^ crc_table[3][p[4]] ^ crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
    }
    for (; n; p++, n--)
        c = crc_table[0][(c ^ *p) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* buckets(keys, n_buckets) -> int64 bytearray: (crc32(utf-8 of key, surrogates passed) * n_buckets) >> 32 per key. */
static PyObject *buckets(PyObject *self, PyObject *args)
{
    PyObject *keys_in;
    long long n_buckets;
    if (!PyArg_ParseTuple(args, "OL:buckets", &keys_in, &n_buckets))
        return NULL;
    if (n_buckets <= 0 || n_buckets >= (1LL << 31)) {
        PyErr_Format(PyExc_ValueError, "n_buckets must be in [1, 2**31), got %lld", n_buckets);
        return NULL;
    }
    PyObject *keys = PySequence_Fast(keys_in, "buckets: keys must be a sequence");
    if (!keys)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(keys);
    PyObject *out = PyByteArray_FromStringAndSize(NULL, n * 8); /* writable under numpy, as the twin's array */
    if (!out)
        goto done;
    int64_t *b = (int64_t *)PyByteArray_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PySequence_Fast_GET_ITEM(keys, i);
        uint32_t crc;
        if (PyUnicode_Check(key) && PyUnicode_IS_ASCII(key)) {
            crc = crc32_of(PyUnicode_DATA(key), PyUnicode_GET_LENGTH(key));
        } else {
            PyObject *encoded = utf8_bytes(key);
            if (!encoded) {
                Py_CLEAR(out);
                goto done;
            }
            crc = crc32_of((const uint8_t *)PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded));
            Py_DECREF(encoded);
        }
        b[i] = (int64_t)(((uint64_t)crc * (uint64_t)n_buckets) >> 32);
    }
done:
    Py_DECREF(keys);
    return out;
}

/* ---- balance: MetaCLIP's seeded draws for pairs whose entries are all head entries (count > t) ---- */

/* Python's round(x) for 0 <= x < 2^52: to the nearest integer, ties to even. */
static long long round_half_even(double x)
{
    long long whole = (long long)x; /* floor, x >= 0 */
    double rest = x - (double)whole; /* exact below 2^52 */
    return whole + (rest > 0.5 || (rest == 0.5 && (whole & 1)));
}

/* The big-endian value of an 8-byte BLAKE2b digest (int.from_bytes(digest, "big")). */
static uint64_t b2b_digest8_be(Blake2b *s)
{
    s->t += s->filled;
    memset(s->block + s->filled, 0, 128 - s->filled);
    b2b_compress(s, 1);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | (uint8_t)(s->h[0] >> (8 * i));
    return v;
}

/* metaclip_draws(prefix, uids, offsets, ids, counts, t) -> (keep, expected_millionths), for pairs i = 0..n-1 with
 * entries ids[offsets[i]:offsets[i+1]] (counts: each entry's count, all > t). The pure functions of
 * pipeline/balance.py define it: keep[i] = metaclip_keep(...) (some entry's unit_hash(seed, uid, id) < t / count),
 * expected = sum of round(pair_keep_probability(...) * 1e6), with the same double operations in the same order
 * (t / count and the product of 1 - p_e are correctly rounded IEEE operations, the hash's 64-bit value is
 * converted with one rounding and scaled by 2^-64 exactly, and round_half_even rounds like Python's round()).
 * prefix is str(seed) + '\x1f' as UTF-8; offsets, ids and counts are int64 buffers. */
static PyObject *metaclip_draws(PyObject *self, PyObject *args)
{
    Py_buffer prefix, offsets_buf, ids_buf, counts_buf;
    PyObject *uids_in;
    long long t;
    if (!PyArg_ParseTuple(args, "y*Oy*y*y*L:metaclip_draws", &prefix, &uids_in, &offsets_buf, &ids_buf, &counts_buf,
                          &t))
        return NULL;
    PyObject *uids = NULL, *keep = NULL, *result = NULL;
    if (!(uids = PySequence_Fast(uids_in, "metaclip_draws: uids must be a sequence")))
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(uids), n_entries = ids_buf.len / 8;
    const int64_t *offsets = offsets_buf.buf, *ids = ids_buf.buf, *counts = counts_buf.buf;
    if (offsets_buf.len != (n + 1) * 8 || ids_buf.len % 8 || counts_buf.len != ids_buf.len || offsets[0] != 0 ||
        offsets[n] != n_entries || t < 1) {
        PyErr_SetString(PyExc_ValueError, "metaclip_draws: offsets, ids and counts do not describe the uids' entries");
        goto done;
    }
    if (!(keep = PyBytes_FromStringAndSize(NULL, n)))
        goto done;
    uint8_t *k = (uint8_t *)PyBytes_AS_STRING(keep);
    long long expected = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *uid = PySequence_Fast_GET_ITEM(uids, i);
        if (!PyUnicode_Check(uid) || !PyUnicode_IS_ASCII(uid) || offsets[i] > offsets[i + 1]) {
            PyErr_SetString(PyExc_ValueError, "metaclip_draws: uids must be ASCII str and offsets ascending");
            goto done;
        }
        double miss = 1.0;
        int kept = 0;
        for (int64_t e = offsets[i]; e < offsets[i + 1]; e++) {
            if (counts[e] <= t) {
                PyErr_SetString(PyExc_ValueError, "metaclip_draws: an entry with count <= t");
                goto done;
            }
            double p = (double)t / (double)counts[e];
            miss *= 1.0 - p;
            char digits[24];
            int nd = snprintf(digits, sizeof digits, "%lld", (long long)ids[e]);
            Blake2b state;
            b2b_init(&state, 8);
            b2b_update(&state, prefix.buf, prefix.len);
            b2b_update(&state, PyUnicode_DATA(uid), PyUnicode_GET_LENGTH(uid));
            b2b_update(&state, (const uint8_t *)"\x1f", 1);
            b2b_update(&state, (const uint8_t *)digits, nd);
            double draw = (double)b2b_digest8_be(&state) / 18446744073709551616.0; /* / 2^64 */
            kept |= draw < p;
        }
        k[i] = (uint8_t)kept;
        expected += round_half_even((1.0 - miss) * 1000000.0);
    }
    result = Py_BuildValue("(OL)", keep, expected);
done:
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&offsets_buf);
    PyBuffer_Release(&ids_buf);
    PyBuffer_Release(&counts_buf);
    Py_XDECREF(uids);
    Py_XDECREF(keep);
    return result;
}

static PyMethodDef module_methods[] = {
    {"check_rows", check_rows, METH_VARARGS,
     "check_rows(urls, captions, reasons, min_chars, max_chars, min_words, row_fn, names) -> "
     "(rows, urls, captions, spaced, rejected): match.check_rows_py, ASCII rows decided in C."},
    {"hit_columns", hit_columns, METH_VARARGS,
     "hit_columns(hits, position_field, id_field) -> (positions, ids) as int64 bytearrays: match.hit_columns_py."},
    {"uids", uids, METH_VARARGS, "uids(urls, captions) -> [uid]: records.uids_of_py (BLAKE2b-128, hex)."},
    {"buckets", buckets, METH_VARARGS,
     "buckets(keys, n_buckets) -> int64 bytearray: beamio.buckets_of_py (CRC-32 of the UTF-8, scaled to n_buckets)."},
    {"metaclip_draws", metaclip_draws, METH_VARARGS,
     "metaclip_draws(prefix, uids, offsets, ids, counts, t) -> (keep bytes, expected millionths): "
     "balance.head_only_draws_py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef matchcore_module = {
    PyModuleDef_HEAD_INIT, "pipeline.common._matchcore",
    "C core of the match stage's per-row work (see pipeline/match/stage.py).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__matchcore(void)
{
    init_tables();
    init_crc_table();
    return PyModule_Create(&matchcore_module);
}
