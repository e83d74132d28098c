/* C core of the match stage's per-row work (pipeline/match/stage.py): the cheap checks and normalisation of steps 1-3,
 * MetaCLIP spacing, and the Aho-Corasick hits as arrays. (Hashes are not here: uids come from hashlib's BLAKE2b,
 * buckets from zlib's CRC-32.)
 *
 * Each function has a Python twin that defines it (match.check_rows_py, match.hit_columns_py);
 * tests/test_matchcore.py holds the C to the twin on real-looking and generated rows, fuzz/targets.py
 * on arbitrary ones, and the stages run the twin where this extension could not be built.
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
        if (!PyTuple_Check(hit)) {
            PyErr_SetString(PyExc_TypeError, "hit_columns: each hit must be a tuple");
            goto fail;
        }
        /* a field number counts from the end when negative, as the twin's operator.itemgetter does */
        Py_ssize_t size = PyTuple_GET_SIZE(hit), pf = pos_field < 0 ? pos_field + size : pos_field,
                   idf = id_field < 0 ? id_field + size : id_field;
        if (pf < 0 || pf >= size || idf < 0 || idf >= size) {
            PyErr_SetString(PyExc_IndexError, "hit_columns: a hit without both fields");
            goto fail;
        }
        p[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(hit, pf));
        q[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(hit, idf));
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

static PyMethodDef module_methods[] = {
    {"check_rows", check_rows, METH_VARARGS,
     "check_rows(urls, captions, reasons, min_chars, max_chars, min_words, row_fn, names) -> "
     "(rows, urls, captions, spaced, rejected): match.check_rows_py, ASCII rows decided in C."},
    {"hit_columns", hit_columns, METH_VARARGS,
     "hit_columns(hits, position_field, id_field) -> (positions, ids) as int64 bytearrays: match.hit_columns_py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef matchcore_module = {
    PyModuleDef_HEAD_INIT, "pipeline.common._matchcore",
    "C core of the match stage's per-row work (see pipeline/match/stage.py).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__matchcore(void)
{
    init_tables();
    return PyModule_Create(&matchcore_module);
}
