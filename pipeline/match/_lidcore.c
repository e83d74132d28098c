/* fastText inference in C for the `match` stage's language filter (pipeline/match/lid.py, backend "fasttext").
 *
 * In:  a supervised fastText model file (.ftz or .bin; the stage loads lid.176.ftz), then batches of texts
 *      (str, read as UTF-8; a lone surrogate, which has no UTF-8, as its 3-byte 'surrogatepass' form; or bytes).
 * Out: Model.predict(texts, threshold) -> [(label index or -1, probability)], Model.top_labels(texts, threshold)
 *      -> [label name or None]: the most probable label of each text when fastText would report it.
 *
 * The specification is fastText's own predictLine (facebookresearch/fastText, src/dictionary.cc getLine,
 * src/model.cc, src/loss.cc, src/quantmatrix.cc, src/productquantizer.cc) as the fasttext-predict wheel runs
 * it on `text.replace("\n", " ") + "\n"` with k=1 (what lid.py used to call). Step by step:
 *   - tokens are runs of bytes of the UTF-8 text between ' ', '\n', '\r', '\t', '\v', '\f', '\0'; the line
 *     ends with the EOS token "</s>" (a literal "</s>" token also ends it: fastText breaks on it);
 *   - a token's hash is FNV-1a over its bytes taken as *signed* chars (fastText keeps that quirk so that
 *     released models still load); a token in the vocabulary contributes its own input row; a word token
 *     (not "__label__..." and not EOS) also contributes its character n-grams: every run of minn..maxn UTF-8
 *     characters of "<" + token + ">" (a lone "<" or ">" never), hashed, modulo `bucket`, kept only when the
 *     quantizer's pruning kept that bucket (pruneidx), at row nwords + its index;
 *   - with wordNgrams > 1 the hashes of consecutive word tokens add word n-gram rows after all of those;
 *   - the hidden vector is the mean of all those rows (float32, rows in that order);
 *   - hierarchical softmax: a depth-first walk of the Huffman tree built from the label counts, left child
 *     first, log-probabilities summed as fastText sums them (log(p + 1e-5), float), subtrees dropped once
 *     below log(threshold + 1e-5) or below the best leaf found so far (a later leaf wins a tie);
 *     the probability reported is exp of the best leaf's score. No leaf -> no label (-1).
 * Quantized matrices (product quantization, with quantized norms) are expanded once at load into plain
 * float rows: the product norm * centroid is the same float product fastText computes at every use, so the
 * sums are bit for bit those of fastText.
 *
 * Speed: a per-model cache maps a token's bytes to the sum of its rows (word row + n-gram rows) and their
 * number, so a repeated word costs one hash-table probe and `dim` additions instead of ~15 n-gram hashes,
 * pruneidx lookups and row additions. Words are Zipf-distributed: on real captions almost every token hits.
 * A record holds the key (inline up to 16 bytes) next to its sum, and a text's tokens are hashed and their
 * table slots prefetched before any is looked up, so that the cache misses of one text overlap.
 * Summing a word's rows first changes the float rounding of the mean (~1e-7 relative); tests/test_lidcore.py
 * and bench/bench_lid.py check that labels stay identical and probabilities agree within 1e-5. A model made
 * with max_cached_words=0 sums row by row in fastText's order and gives bit-identical probabilities.
 * The cache holds at most max_cached_words tokens of at most CACHE_MAX_KEY bytes (longer ones are computed
 * every time); when full it is emptied and refilled (bounded memory: ~104 bytes a word at dim 16).
 * The numeric work of a batch runs without the GIL, under a per-model lock (the cache is mutable state).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define FT_MAGIC 793712314          /* fastText's FASTTEXT_FILEFORMAT_MAGIC_INT32 */
#define FT_VERSION 12               /* newest file format fastText writes and reads */
#define LOSS_HS 1                   /* fastText's loss_name: hs=1, ns, softmax, ova */
#define MODEL_SUP 3                 /* fastText's model_name: cbow=1, sg, sup */
#define KSUB 256                    /* centroids per sub-quantizer (ProductQuantizer::ksub_) */
#define MAX_DIM 4096                /* no released model comes close; bounds the scratch vectors */
#define MAX_TREE_DEPTH 1000         /* the label tree's walk recurses once per level */
#define MAX_DENSE_FLOATS ((int64_t)1 << 28)   /* 1 GiB of expanded rows: refuse larger models */
#define CACHE_MAX_KEY 64            /* longer tokens (URLs, unspaced scripts) rarely repeat: not cached */
#define DEFAULT_CACHED_WORDS (1 << 18)   /* ~27 MB full at dim 16; the 25,833 CC3M + LAION captions hold 40k */

static const char EOS[] = "</s>";
#define EOS_LEN 4
static const char LABEL_PREFIX[] = "__label__";   /* Args::label's default; the file does not store it */
#define LABEL_PREFIX_LEN 9

static unsigned char is_sep[256];   /* Dictionary::readWord's separators */

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif

static inline uint32_t fnv_step(uint32_t h, unsigned char c)
{
    return (h ^ (uint32_t)(int32_t)(int8_t)c) * 16777619u;   /* uint32_t(int8_t(c)): fastText's hash */
}

static inline uint32_t fnv(const unsigned char *s, Py_ssize_t n)
{
    uint32_t h = 2166136261u;
    for (Py_ssize_t i = 0; i < n; i++)
        h = fnv_step(h, s[i]);
    return h;
}

static inline uint32_t mix(uint32_t h) { return h * 2654435761u; }   /* spreads FNV's low bits for tables */

#define MAX_TABLE_ENTRIES ((int64_t)1 << 29)   /* table_size() stays a uint32; a damaged header cannot loop it */

static uint32_t table_size(int64_t n)   /* a power of two >= 2n, n <= MAX_TABLE_ENTRIES */
{
    uint32_t s = 16;
    while (s < 2 * n)
        s *= 2;
    return s;
}

/* ---------------------------------------------------------------------------------------------- */
/* The model.                                                                                       */

#define INLINE_KEY 16                  /* keys up to this long sit in the cache record itself */

typedef struct {
    uint32_t hash, key_len;
    int32_t nrows;      /* rows summed into the record's vector; 0 for tokens that add nothing */
    int32_t is_word;    /* enters word n-grams (type word) */
    union {
        unsigned char bytes[INLINE_KEY];
        uint32_t off;   /* longer keys: offset in cache_keys */
    } key;
} CacheHead;            /* 32 bytes, followed by the token's dim floats */

typedef struct {
    const unsigned char *p;
    Py_ssize_t len;
    uint32_t hash;
} Token;

typedef struct {
    PyObject_HEAD
    /* Args */
    int32_t version, dim, word_ngrams, loss, model, bucket, minn, maxn;
    /* Dictionary */
    int32_t size, nwords, nlabels;
    unsigned char *word_bytes;
    uint32_t *word_off, *word_len;
    int8_t *word_type;              /* 0 word, 1 label */
    int32_t *vocab;                 /* open addressing: word id or -1 */
    uint32_t vocab_mask;
    int64_t pruneidx_size;          /* -1: not pruned; >= 0: bucket -> row index through prune_* */
    int32_t *prune_key, *prune_val;
    uint32_t prune_mask;
    /* matrices, as float rows */
    float *input;
    int64_t input_rows;
    float *output;                  /* rows of the internal tree nodes */
    float *output_norm;             /* quantized output: the row's norm factor; NULL for a dense output */
    int64_t output_rows;
    int quantized_input, quantized_output;
    /* hierarchical softmax tree: nodes 0..nlabels-1 are the leaves (labels), the root is 2 nlabels - 2 */
    int32_t *left, *right;
    PyObject *labels;               /* tuple of label names without the "__label__" prefix */
    PyObject *path;                 /* the file, for pickling (a worker reloads it) */
    /* per-call scratch, used under `lock` */
    float *hidden, *word_sum;
    int32_t *rows;
    Py_ssize_t rows_cap;
    uint32_t *hashes;               /* word-token hashes of the line, for word n-grams */
    Py_ssize_t hashes_cap;
    unsigned char *ngram_buf;       /* "<" + token + ">" */
    Py_ssize_t ngram_cap;
    /* the word cache */
    Token *toks;                    /* the tokens of the line */
    Py_ssize_t toks_cap;
    /* the word cache */
    Py_ssize_t cache_cap, cache_n, cache_alloc;
    size_t cache_stride;            /* bytes a record: CacheHead + dim floats */
    uint32_t *cache_slots, cache_mask;  /* record number + 1, 0 empty */
    unsigned char *cache;           /* the records */
    unsigned char *cache_keys;
    size_t cache_keys_n, cache_keys_cap;
    long long cache_hits, cache_misses, cache_clears;
    PyThread_type_lock lock;
} Model;

/* ---------------------------------------------------------------------------------------------- */
/* Reading the file: every read is bounds-checked; a short file is an error, not a crash.            */

typedef struct {
    const unsigned char *p;
    size_t n, off;
} Reader;

static int take(Reader *r, void *dst, size_t k)
{
    if (r->n - r->off < k)
        return -1;
    memcpy(dst, r->p + r->off, k);
    r->off += k;
    return 0;
}

static const unsigned char *skip(Reader *r, size_t k)
{
    if (r->n - r->off < k)
        return NULL;
    const unsigned char *at = r->p + r->off;
    r->off += k;
    return at;
}

static int bad_model(PyObject *path, const char *what)
{
    PyErr_Format(PyExc_ValueError, "%S: %s", path, what);
    return -1;
}

#define TRUNCATED "truncated fastText model file"

/* Product quantizer header + centroids; fills nsubq, dsub, lastdsub and returns the centroids. */
typedef struct {
    int32_t dim, nsubq, dsub, lastdsub;
    const float *centroids;         /* dim * KSUB floats (unaligned reads through memcpy) */
} PQ;

static int read_pq(Reader *r, PQ *pq, PyObject *path)
{
    int32_t h[4];
    if (take(r, h, sizeof h) < 0)
        return bad_model(path, TRUNCATED);
    pq->dim = h[0], pq->nsubq = h[1], pq->dsub = h[2], pq->lastdsub = h[3];
    if (pq->dim < 1 || pq->dim > MAX_DIM || pq->nsubq < 1 || pq->dsub < 1 || pq->lastdsub < 1 ||
        (int64_t)(pq->nsubq - 1) * pq->dsub + pq->lastdsub != pq->dim)
        return bad_model(path, "inconsistent product quantizer");
    if (!(pq->centroids = (const float *)skip(r, (size_t)pq->dim * KSUB * sizeof(float))))
        return bad_model(path, TRUNCATED);
    return 0;
}

/* ProductQuantizer::get_centroids: where centroid `code` of sub-quantizer m starts. */
static inline size_t pq_at(const PQ *pq, int32_t m, uint8_t code)
{
    if (m == pq->nsubq - 1)
        return (size_t)m * KSUB * pq->dsub + (size_t)code * pq->lastdsub;
    return ((size_t)m * KSUB + code) * pq->dsub;
}

static inline float pq_value(const PQ *pq, size_t at)
{
    float v;
    memcpy(&v, pq->centroids + at, sizeof v);
    return v;
}

/* A matrix as fastText saves it (DenseMatrix or QuantMatrix), expanded to float rows. For a quantized one,
 * `norm_out` NULL multiplies each value by the row's norm (QuantMatrix::addRowToVector: alpha * c, one float
 * product); otherwise the values are the bare centroids and the norms go to *norm_out (QuantMatrix::dotRow:
 * the dot product of the centroids, times the norm). */
static int read_matrix(Reader *r, int quantized, int64_t dim, float **rows_out, int64_t *m_out,
                       float **norm_out, PyObject *path)
{
    int64_t m, n;
    if (!quantized) {
        if (take(r, &m, 8) < 0 || take(r, &n, 8) < 0)
            return bad_model(path, TRUNCATED);
        if (n != dim || n <= 0 || m < 0 || m > MAX_DENSE_FLOATS / n)   /* m * n could overflow */
            return bad_model(path, "dense matrix of unexpected shape");
        const unsigned char *data = skip(r, (size_t)(m * n) * sizeof(float));
        if (!data)
            return bad_model(path, TRUNCATED);
        float *rows = PyMem_RawMalloc((size_t)(m * n + 1) * sizeof(float));
        if (!rows) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(rows, data, (size_t)(m * n) * sizeof(float));
        *rows_out = rows, *m_out = m;
        return 0;
    }
    uint8_t qnorm;
    int32_t codesize;
    PQ pq, npq;
    if (take(r, &qnorm, 1) < 0 || take(r, &m, 8) < 0 || take(r, &n, 8) < 0 || take(r, &codesize, 4) < 0)
        return bad_model(path, TRUNCATED);
    if (n != dim || n <= 0 || m < 0 || m > MAX_DENSE_FLOATS / n)
        return bad_model(path, "quantized matrix of unexpected shape");
    const uint8_t *codes = skip(r, (size_t)(codesize < 0 ? 0 : codesize));
    if (!codes)
        return bad_model(path, TRUNCATED);
    if (read_pq(r, &pq, path) < 0)
        return -1;
    if (pq.dim != dim || (int64_t)codesize != m * pq.nsubq)
        return bad_model(path, "quantized matrix of unexpected shape");
    const uint8_t *norm_codes = NULL;
    if (qnorm) {
        if (!(norm_codes = skip(r, (size_t)m)))
            return bad_model(path, TRUNCATED);
        if (read_pq(r, &npq, path) < 0)
            return -1;
        if (npq.dim != 1)
            return bad_model(path, "inconsistent norm quantizer");
    }
    float *rows = PyMem_RawMalloc((size_t)(m * n + 1) * sizeof(float));
    float *norms = norm_out ? PyMem_RawMalloc((size_t)(m + 1) * sizeof(float)) : NULL;
    if (!rows || (norm_out && !norms)) {
        PyMem_RawFree(rows);
        PyMem_RawFree(norms);
        PyErr_NoMemory();
        return -1;
    }
    for (int64_t i = 0; i < m; i++) {
        float norm = qnorm ? pq_value(&npq, pq_at(&npq, 0, norm_codes[i])) : 1.0f;
        const uint8_t *code = codes + i * pq.nsubq;
        for (int32_t s = 0; s < pq.nsubq; s++) {
            int32_t d = s == pq.nsubq - 1 ? pq.lastdsub : pq.dsub;
            size_t at = pq_at(&pq, s, code[s]);
            for (int32_t k = 0; k < d; k++) {
                float c = pq_value(&pq, at + k);
                rows[i * n + (int64_t)s * pq.dsub + k] = norms ? c : norm * c;
            }
        }
        if (norms)
            norms[i] = norm;
    }
    *rows_out = rows, *m_out = m;
    if (norm_out)
        *norm_out = norms;
    return 0;
}

static int read_dictionary(Model *M, Reader *r, PyObject *path)
{
    int64_t ntokens;
    if (take(r, &M->size, 4) < 0 || take(r, &M->nwords, 4) < 0 || take(r, &M->nlabels, 4) < 0 ||
        take(r, &ntokens, 8) < 0 || take(r, &M->pruneidx_size, 8) < 0)
        return bad_model(path, TRUNCATED);
    if (M->size < 0 || M->nwords < 0 || M->nlabels < 1 || (int64_t)M->nwords + M->nlabels != M->size ||
        M->pruneidx_size < -1 || M->pruneidx_size > MAX_TABLE_ENTRIES || M->size > MAX_TABLE_ENTRIES)
        return bad_model(path, "inconsistent dictionary sizes");
    /* Words are NUL-terminated, each followed by its count (int64) and type (int8). */
    const unsigned char *start = r->p + r->off;
    size_t bytes = 0;
    for (int32_t i = 0; i < M->size; i++) {
        const unsigned char *z = memchr(r->p + r->off, 0, r->n - r->off);
        if (!z || (size_t)(r->n - (z - r->p)) < 1 + 8 + 1)
            return bad_model(path, TRUNCATED);
        bytes += (size_t)(z - (r->p + r->off));
        r->off = (size_t)(z - r->p) + 1 + 8 + 1;
    }
    M->word_bytes = PyMem_RawMalloc(bytes + 1);
    M->word_off = PyMem_RawMalloc(((size_t)M->size + 1) * sizeof(uint32_t));
    M->word_len = PyMem_RawMalloc(((size_t)M->size + 1) * sizeof(uint32_t));
    M->word_type = PyMem_RawMalloc((size_t)M->size + 1);
    int64_t *counts = PyMem_RawMalloc(((size_t)M->nlabels + 1) * sizeof(int64_t));
    M->vocab_mask = table_size(M->size) - 1;
    M->vocab = PyMem_RawMalloc(((size_t)M->vocab_mask + 1) * sizeof(int32_t));
    if (!M->word_bytes || !M->word_off || !M->word_len || !M->word_type || !counts || !M->vocab) {
        PyMem_RawFree(counts);
        PyErr_NoMemory();
        return -1;
    }
    memset(M->vocab, 0xff, ((size_t)M->vocab_mask + 1) * sizeof(int32_t));
    const unsigned char *q = start;
    size_t off = 0;
    int ok = 1;
    for (int32_t i = 0; i < M->size; i++) {
        size_t len = strlen((const char *)q);
        memcpy(M->word_bytes + off, q, len);
        M->word_off[i] = (uint32_t)off, M->word_len[i] = (uint32_t)len;
        off += len;
        int64_t count;
        memcpy(&count, q + len + 1, 8);
        int8_t type = (int8_t)q[len + 9];
        M->word_type[i] = type;
        q += len + 10;
        /* fastText sorts words before labels: ids nwords.. are the labels, in the order of their counts */
        if (type != (i >= M->nwords))
            ok = 0;
        if (i >= M->nwords)
            counts[i - M->nwords] = count;
        uint32_t s = mix(fnv(M->word_bytes + M->word_off[i], len)) & M->vocab_mask;
        while (M->vocab[s] >= 0)
            s = (s + 1) & M->vocab_mask;
        M->vocab[s] = i;
    }
    if (!ok) {
        PyMem_RawFree(counts);
        return bad_model(path, "dictionary entries out of order (words, then labels)");
    }
    if (M->pruneidx_size > 0) {
        M->prune_mask = table_size(M->pruneidx_size) - 1;
        M->prune_key = PyMem_RawMalloc(((size_t)M->prune_mask + 1) * sizeof(int32_t));
        M->prune_val = PyMem_RawMalloc(((size_t)M->prune_mask + 1) * sizeof(int32_t));
        if (!M->prune_key || !M->prune_val) {
            PyMem_RawFree(counts);
            PyErr_NoMemory();
            return -1;
        }
        memset(M->prune_key, 0xff, ((size_t)M->prune_mask + 1) * sizeof(int32_t));
        for (int64_t i = 0; i < M->pruneidx_size; i++) {
            int32_t kv[2];
            if (take(r, kv, sizeof kv) < 0) {
                PyMem_RawFree(counts);
                return bad_model(path, TRUNCATED);
            }
            if (kv[0] < 0 || kv[1] < 0) {
                PyMem_RawFree(counts);
                return bad_model(path, "negative pruned-bucket index");
            }
            uint32_t s = mix((uint32_t)kv[0]) & M->prune_mask;
            while (M->prune_key[s] >= 0 && M->prune_key[s] != kv[0])
                s = (s + 1) & M->prune_mask;
            M->prune_key[s] = kv[0], M->prune_val[s] = kv[1];   /* a repeated key: the last one wins, as in a map */
        }
    }
    /* The Huffman tree of HierarchicalSoftmaxLoss::buildTree over the label counts. */
    int32_t osz = M->nlabels, nodes = 2 * osz - 1;
    int64_t *tcount = PyMem_RawMalloc((size_t)nodes * sizeof(int64_t));
    M->left = PyMem_RawMalloc((size_t)nodes * sizeof(int32_t));
    M->right = PyMem_RawMalloc((size_t)nodes * sizeof(int32_t));
    if (!tcount || !M->left || !M->right) {
        PyMem_RawFree(counts);
        PyMem_RawFree(tcount);
        PyErr_NoMemory();
        return -1;
    }
    for (int32_t i = 0; i < nodes; i++) {
        M->left[i] = M->right[i] = -1;
        tcount[i] = i < osz ? counts[i] : (int64_t)1e15;
    }
    int32_t leaf = osz - 1, node = osz;
    int tree_ok = 1;
    for (int32_t i = osz; i < nodes && tree_ok; i++) {
        int32_t mini[2] = {0, 0};
        for (int j = 0; j < 2 && tree_ok; j++) {
            int take_leaf = leaf >= 0 && tcount[leaf] < tcount[node];
            tree_ok = take_leaf || node < i;   /* else node i would be its own child (counts >= 1e15) */
            mini[j] = take_leaf ? leaf-- : node++;
        }
        M->left[i] = mini[0], M->right[i] = mini[1];
        tcount[i] = tcount[mini[0]] + tcount[mini[1]];
    }
    /* The walk recurses once per level: bound the depth (sorted counts give a Huffman tree, ~log(labels)
     * deep; only a damaged file could ask for more). Children come before parents; tcount[] now holds depths. */
    for (int32_t i = 0; i < nodes && tree_ok; i++) {
        int64_t l = i < osz ? -1 : tcount[M->left[i]], r = i < osz ? -1 : tcount[M->right[i]];
        tcount[i] = 1 + (l > r ? l : r);
        tree_ok &= tcount[i] <= MAX_TREE_DEPTH;
    }
    PyMem_RawFree(tcount);
    PyMem_RawFree(counts);
    return tree_ok ? 0 : bad_model(path, "cannot build the label tree (damaged label counts?)");
}

static int check_rows(Model *M, PyObject *path)
{
    int64_t needed = M->nwords;
    if (M->maxn > 0 || M->word_ngrams > 1)
        needed += M->pruneidx_size >= 0 ? 0 : M->bucket;
    if (M->pruneidx_size > 0)
        for (uint32_t s = 0; s <= M->prune_mask; s++)
            if (M->prune_key[s] >= 0 && (int64_t)M->nwords + M->prune_val[s] >= M->input_rows)
                return bad_model(path, "pruned-bucket index past the input matrix");
    if (M->input_rows < needed || M->input_rows < M->size - M->nlabels)
        return bad_model(path, "input matrix has fewer rows than the dictionary needs");
    if (M->output_rows < M->nlabels - 1)
        return bad_model(path, "output matrix has fewer rows than the label tree needs");
    return 0;
}

static int load_model(Model *M, PyObject *path, const unsigned char *p, size_t n)
{
    Reader r = {p, n, 0};
    int32_t magic, args[12];
    double t;
    if (take(&r, &magic, 4) < 0 || magic != FT_MAGIC)
        return bad_model(path, "not a fastText model file (wrong magic number)");
    if (take(&r, &M->version, 4) < 0)
        return bad_model(path, TRUNCATED);
    if (M->version > FT_VERSION || M->version < 11)
        return bad_model(path, "unsupported fastText file format version");
    /* Args::load: dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate t */
    if (take(&r, args, sizeof args) < 0 || take(&r, &t, sizeof t) < 0)
        return bad_model(path, TRUNCATED);
    M->dim = args[0], M->word_ngrams = args[5], M->loss = args[6], M->model = args[7];
    M->bucket = args[8], M->minn = args[9], M->maxn = args[10];
    if (M->model != MODEL_SUP)
        return bad_model(path, "not a supervised (classification) model: nothing to predict");
    if (M->loss != LOSS_HS)
        return bad_model(path, "only hierarchical softmax models (loss 'hs', as lid.176) are supported");
    if (M->version == 11)
        M->maxn = 0;   /* FastText::loadModel: old supervised models have no character n-grams */
    if (M->dim < 1 || M->dim > MAX_DIM || ((M->maxn > 0 || M->word_ngrams > 1) && M->bucket <= 0))
        return bad_model(path, "invalid model arguments (dim, bucket)");
    if (read_dictionary(M, &r, path) < 0)
        return -1;
    uint8_t quant_input, qout;
    if (take(&r, &quant_input, 1) < 0)
        return bad_model(path, TRUNCATED);
    if (!quant_input && M->pruneidx_size >= 0)
        return bad_model(path, "pruned dictionary with a dense input matrix (an invalid fastText model)");
    if (read_matrix(&r, quant_input, M->dim, &M->input, &M->input_rows, NULL, path) < 0)
        return -1;
    if (take(&r, &qout, 1) < 0)
        return bad_model(path, TRUNCATED);
    M->quantized_input = quant_input != 0;
    M->quantized_output = quant_input && qout;
    if (read_matrix(&r, M->quantized_output, M->dim, &M->output, &M->output_rows,
                    M->quantized_output ? &M->output_norm : NULL, path) < 0)
        return -1;
    if (r.off != r.n)
        return bad_model(path, "unexpected bytes after the output matrix");
    return check_rows(M, path);
}

static int make_labels(Model *M)
{
    M->labels = PyTuple_New(M->nlabels);
    if (!M->labels)
        return -1;
    for (int32_t i = 0; i < M->nlabels; i++) {
        const char *w = (const char *)M->word_bytes + M->word_off[M->nwords + i];
        Py_ssize_t len = M->word_len[M->nwords + i];
        if (len >= LABEL_PREFIX_LEN && memcmp(w, LABEL_PREFIX, LABEL_PREFIX_LEN) == 0)
            w += LABEL_PREFIX_LEN, len -= LABEL_PREFIX_LEN;
        PyObject *s = PyUnicode_DecodeUTF8(w, len, "replace");
        if (!s)
            return -1;
        PyUnicode_InternInPlace(&s);
        PyTuple_SET_ITEM(M->labels, i, s);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Inference (no GIL: only PyMem_Raw* allocations; a failed one returns -1).                         */

static int grow(void **p, Py_ssize_t *cap, Py_ssize_t need, size_t item)
{
    if (need <= *cap)
        return 0;
    Py_ssize_t c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    void *q = PyMem_RawRealloc(*p, (size_t)c * item);
    if (!q)
        return -1;
    *p = q, *cap = c;
    return 0;
}

static int32_t vocab_id(const Model *M, const unsigned char *tok, Py_ssize_t len, uint32_t h)
{
    for (uint32_t s = mix(h) & M->vocab_mask;; s = (s + 1) & M->vocab_mask) {
        int32_t id = M->vocab[s];
        if (id < 0)
            return -1;
        if (M->word_len[id] == (uint32_t)len && memcmp(M->word_bytes + M->word_off[id], tok, (size_t)len) == 0)
            return id;
    }
}

/* Dictionary::pushHash: the input row of bucket `id`, or -1 when pruning dropped it. */
static inline int32_t bucket_row(const Model *M, int32_t id)
{
    if (M->pruneidx_size == 0)
        return -1;
    if (M->pruneidx_size > 0) {
        uint32_t s = mix((uint32_t)id) & M->prune_mask;
        while (M->prune_key[s] != id) {
            if (M->prune_key[s] < 0)
                return -1;
            s = (s + 1) & M->prune_mask;
        }
        id = M->prune_val[s];
    }
    return M->nwords + id;
}

static inline int push_row(Model *M, Py_ssize_t *n, int32_t row)
{
    if (row < 0)
        return 0;
    if (grow((void **)&M->rows, &M->rows_cap, *n + 1, sizeof(int32_t)) < 0)
        return -1;
    M->rows[(*n)++] = row;
    return 0;
}

/* Dictionary::computeSubwords on "<" + token + ">": UTF-8 characters, minn..maxn of them, never a lone
 * boundary. The FNV hash of each n-gram extends the one of the n-gram one character shorter. */
static int subword_rows(Model *M, const unsigned char *tok, Py_ssize_t len, Py_ssize_t *n)
{
    if (grow((void **)&M->ngram_buf, &M->ngram_cap, len + 2, 1) < 0)
        return -1;
    unsigned char *w = M->ngram_buf;
    Py_ssize_t L = len + 2;
    w[0] = '<';
    memcpy(w + 1, tok, (size_t)len);
    w[L - 1] = '>';
    for (Py_ssize_t i = 0; i < L; i++) {
        if ((w[i] & 0xC0) == 0x80)
            continue;
        uint32_t h = 2166136261u;
        Py_ssize_t j = i;
        for (int32_t chars = 1; j < L && chars <= M->maxn; chars++) {
            h = fnv_step(h, w[j++]);
            while (j < L && (w[j] & 0xC0) == 0x80)
                h = fnv_step(h, w[j++]);
            if (chars >= M->minn && !(chars == 1 && (i == 0 || j == L)))
                if (push_row(M, n, bucket_row(M, (int32_t)(h % (uint32_t)M->bucket))) < 0)
                    return -1;
        }
    }
    return 0;
}

/* Dictionary::getLine's work for one token: appends its rows to M->rows[*n..]; *is_word says whether its
 * hash enters word n-grams (tokens of type word, EOS included). */
static int token_rows(Model *M, const unsigned char *tok, Py_ssize_t len, uint32_t h, Py_ssize_t *n,
                      int *is_word)
{
    int32_t wid = vocab_id(M, tok, len, h);
    int label = wid >= 0 ? M->word_type[wid] == 1
                         : len >= LABEL_PREFIX_LEN && memcmp(tok, LABEL_PREFIX, LABEL_PREFIX_LEN) == 0;
    *is_word = !label;
    if (label)
        return 0;   /* a label in the text is not an input of prediction */
    if (wid >= 0 && push_row(M, n, wid) < 0)
        return -1;
    int eos = len == EOS_LEN && memcmp(tok, EOS, EOS_LEN) == 0;
    if (M->maxn > 0 && !eos)
        return subword_rows(M, tok, len, n);
    return 0;
}

static inline void add_row(float *restrict v, const float *restrict row, int32_t dim)
{
    for (int32_t j = 0; j < dim; j++)
        v[j] += row[j];
}

/* The cache: records of a CacheHead and the token's `dim` floats, one after the other (a hit reads one
 * record, not three arrays), in an array that grows to max_cached_words records; an open-addressing table of
 * record numbers + 1 that grows with them (kept at most half full). */
static inline CacheHead *cache_rec(const Model *M, uint32_t e)
{
    return (CacheHead *)(M->cache + (size_t)e * M->cache_stride);
}

static inline float *cache_sum(CacheHead *c) { return (float *)(c + 1); }

static void cache_clear(Model *M)
{
    if (M->cache_slots)
        memset(M->cache_slots, 0, ((size_t)M->cache_mask + 1) * sizeof(uint32_t));
    M->cache_n = 0;
    M->cache_keys_n = 0;
}

static inline const unsigned char *cache_key(const Model *M, const CacheHead *c)
{
    return c->key_len <= INLINE_KEY ? c->key.bytes : M->cache_keys + c->key.off;
}

static inline int same_bytes(const unsigned char *a, const unsigned char *b, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)   /* words are short: a loop beats a call to memcmp */
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* The cached record of a token, or NULL with *slot where it would go. */
static CacheHead *cache_find(Model *M, const Token *t, uint32_t *slot)
{
    if (!M->cache_slots)
        return NULL;
    uint32_t s = mix(t->hash) & M->cache_mask;
    for (;; s = (s + 1) & M->cache_mask) {
        uint32_t e = M->cache_slots[s];
        if (!e)
            break;
        CacheHead *c = cache_rec(M, e - 1);
        if (c->hash == t->hash && c->key_len == (uint32_t)t->len && same_bytes(cache_key(M, c), t->p, t->len))
            return c;
    }
    *slot = s;
    return NULL;
}

/* Doubles the table, or allocates the first one. */
static int cache_grow_table(Model *M)
{
    uint32_t size = M->cache_slots ? 2 * (M->cache_mask + 1) : 8192;
    uint32_t *slots = PyMem_RawCalloc(size, sizeof(uint32_t));
    if (!slots)
        return -1;
    for (Py_ssize_t e = 0; e < M->cache_n; e++) {
        uint32_t s = mix(cache_rec(M, (uint32_t)e)->hash) & (size - 1);
        while (slots[s])
            s = (s + 1) & (size - 1);
        slots[s] = (uint32_t)e + 1;
    }
    PyMem_RawFree(M->cache_slots);
    M->cache_slots = slots, M->cache_mask = size - 1;
    return 0;
}

/* A new record for the token (`slot` from a failed cache_find), or NULL when it cannot be cached. */
static CacheHead *cache_insert(Model *M, const Token *t, uint32_t slot)
{
    if (t->len > CACHE_MAX_KEY || M->cache_cap == 0)
        return NULL;
    if (M->cache_n == M->cache_cap) {   /* full: start afresh (bounded memory; Zipf refills it quickly) */
        cache_clear(M);
        M->cache_clears++;
        slot = mix(t->hash) & M->cache_mask;
    }
    if (!M->cache_slots || (M->cache_n + 1) * 2 > (Py_ssize_t)M->cache_mask + 1) {
        if (cache_grow_table(M) < 0)   /* never past table_size(max_cached_words): at most cap records */
            return NULL;
        slot = mix(t->hash) & M->cache_mask;
        while (M->cache_slots[slot])
            slot = (slot + 1) & M->cache_mask;
    }
    if (M->cache_n == M->cache_alloc) {
        Py_ssize_t c = M->cache_alloc ? 2 * M->cache_alloc : 4096;
        if (c > M->cache_cap)
            c = M->cache_cap;
        unsigned char *recs = PyMem_RawRealloc(M->cache, (size_t)c * M->cache_stride);
        if (!recs)
            return NULL;
        M->cache = recs, M->cache_alloc = c;
    }
    CacheHead *c = cache_rec(M, (uint32_t)M->cache_n);
    memset(c, 0, sizeof *c);
    c->hash = t->hash, c->key_len = (uint32_t)t->len;
    if (t->len <= INLINE_KEY) {
        memcpy(c->key.bytes, t->p, (size_t)t->len);
    }
    else {
        if (M->cache_keys_n + (size_t)t->len > M->cache_keys_cap) {
            size_t cap = M->cache_keys_cap ? 2 * M->cache_keys_cap : 65536;
            unsigned char *k = PyMem_RawRealloc(M->cache_keys, cap);
            if (!k)
                return NULL;
            M->cache_keys = k, M->cache_keys_cap = cap;
        }
        c->key.off = (uint32_t)M->cache_keys_n;
        memcpy(M->cache_keys + M->cache_keys_n, t->p, (size_t)t->len);
        M->cache_keys_n += (size_t)t->len;
    }
    M->cache_slots[slot] = (uint32_t)++M->cache_n;
    return c;
}

/* One token into the line: hidden += its rows (through the cache, or row by row into M->rows when the
 * cache is off, to be summed in fastText's order at the end). */
static int add_token(Model *M, const Token *t, Py_ssize_t *nrows, Py_ssize_t *nrows_total, Py_ssize_t *nhashes)
{
    int is_word;
    uint32_t slot = 0;
    CacheHead *c = NULL;
    if (M->cache_cap == 0) {
        if (token_rows(M, t->p, t->len, t->hash, nrows, &is_word) < 0)
            return -1;
    }
    else if ((c = cache_find(M, t, &slot))) {
        M->cache_hits++;
        add_row(M->hidden, cache_sum(c), M->dim);
        *nrows_total += c->nrows;
        is_word = c->is_word;
    }
    else {
        M->cache_misses++;
        Py_ssize_t n = 0;
        if (token_rows(M, t->p, t->len, t->hash, &n, &is_word) < 0)
            return -1;
        float *sum = M->word_sum;
        memset(sum, 0, (size_t)M->dim * sizeof(float));
        for (Py_ssize_t i = 0; i < n; i++)
            add_row(sum, M->input + (int64_t)M->rows[i] * M->dim, M->dim);
        if ((c = cache_insert(M, t, slot))) {
            c->nrows = (int32_t)n, c->is_word = is_word;
            memcpy(cache_sum(c), sum, (size_t)M->dim * sizeof(float));
        }
        add_row(M->hidden, sum, M->dim);
        *nrows_total += n;
    }
    if (M->word_ngrams > 1 && is_word) {
        if (grow((void **)&M->hashes, &M->hashes_cap, *nhashes + 1, sizeof(uint32_t)) < 0)
            return -1;
        M->hashes[(*nhashes)++] = t->hash;
    }
    return 0;
}

static inline float std_log(float x) { return (float)log((double)x + 1e-5); }   /* loss.cc std_log */

static inline float node_dot(const Model *M, const float *hidden, int32_t row)
{
    const float *w = M->output + (int64_t)row * M->dim;
    float d = 0.0f;
    for (int32_t j = 0; j < M->dim; j++)   /* in order: the same float sum as fastText's dotRow / mulcode */
        d += w[j] * hidden[j];
    return M->output_norm ? d * M->output_norm[row] : d;
}

typedef struct {
    float min_score, best;
    int32_t best_leaf;
} Walk;

/* HierarchicalSoftmaxLoss::dfs with k = 1. */
static void dfs(const Model *M, const float *hidden, int32_t node, float score, Walk *w)
{
    if (score < w->min_score)
        return;
    if (w->best_leaf >= 0 && score < w->best)
        return;
    if (M->left[node] == -1 && M->right[node] == -1) {
        w->best = score, w->best_leaf = node;   /* a tie goes to the later leaf, as fastText's heap does */
        return;
    }
    float f = node_dot(M, hidden, node - M->nlabels);
    f = (float)(1.0 / (double)(1.0f + expf(-f)));
    dfs(M, hidden, M->left[node], score + std_log((float)(1.0 - (double)f)), w);
    dfs(M, hidden, M->right[node], score + std_log(f), w);
}

/* One text: its top label (or -1) and that label's probability. */
static int predict_one(Model *M, const unsigned char *s, Py_ssize_t n, float min_score, int32_t *label,
                       float *prob)
{
    Py_ssize_t nrows = 0, nrows_total = 0, nhashes = 0, ntoks = 0, i = 0;
    memset(M->hidden, 0, (size_t)M->dim * sizeof(float));
    /* The tokens first, their cache slots prefetched: the lookups then overlap instead of waiting in turn. */
    for (int stop = 0; !stop;) {
        while (i < n && is_sep[s[i]])
            i++;
        Token t = {(const unsigned char *)EOS, EOS_LEN, 0};
        if (i < n) {
            Py_ssize_t start = i;
            while (i < n && !is_sep[s[i]])
                i++;
            t.p = s + start, t.len = i - start;
        }
        stop = t.len == EOS_LEN && memcmp(t.p, EOS, EOS_LEN) == 0;   /* fastText stops at "</s>", even typed */
        t.hash = fnv(t.p, t.len);
        if (M->cache_slots)
            PREFETCH(M->cache_slots + (mix(t.hash) & M->cache_mask));
        if (grow((void **)&M->toks, &M->toks_cap, ntoks + 1, sizeof(Token)) < 0)
            return -1;
        M->toks[ntoks++] = t;
    }
    if (M->cache_slots)
        for (Py_ssize_t k = 0; k < ntoks; k++) {
            uint32_t e = M->cache_slots[mix(M->toks[k].hash) & M->cache_mask];
            if (e)
                PREFETCH(cache_rec(M, e - 1));
        }
    for (Py_ssize_t k = 0; k < ntoks; k++)
        if (add_token(M, &M->toks[k], &nrows, &nrows_total, &nhashes) < 0)
            return -1;
    /* Dictionary::addWordNgrams: the hashes enter as int32, widened with their sign. */
    for (Py_ssize_t a = 0; a < nhashes; a++) {
        uint64_t h = (uint64_t)(int64_t)(int32_t)M->hashes[a];
        for (Py_ssize_t b = a + 1; b < nhashes && b < a + M->word_ngrams; b++) {
            h = h * 116049371u + (uint64_t)(int64_t)(int32_t)M->hashes[b];
            int32_t row = bucket_row(M, (int32_t)(h % (uint64_t)M->bucket));
            if (M->cache_cap == 0) {   /* after all token rows, as fastText adds them */
                if (push_row(M, &nrows, row) < 0)
                    return -1;
            }
            else if (row >= 0) {
                add_row(M->hidden, M->input + (int64_t)row * M->dim, M->dim);
                nrows_total++;
            }
        }
    }
    if (M->cache_cap == 0) {
        for (Py_ssize_t k = 0; k < nrows; k++)
            add_row(M->hidden, M->input + (int64_t)M->rows[k] * M->dim, M->dim);
        nrows_total = nrows;
    }
    *label = -1, *prob = 0.0f;
    if (nrows_total == 0)
        return 0;   /* FastText::predict: no input rows, no prediction */
    float scale = (float)(1.0 / (double)nrows_total);   /* Vector::mul(1.0 / input.size()) */
    for (int32_t j = 0; j < M->dim; j++)
        M->hidden[j] *= scale;
    Walk w = {min_score, 0.0f, -1};
    dfs(M, M->hidden, 2 * M->nlabels - 2, 0.0f, &w);
    if (w.best_leaf >= 0)
        *label = w.best_leaf, *prob = expf(w.best);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* The Python type.                                                                                 */

static void Model_free_arrays(Model *M)
{
    void *arrays[] = {M->word_bytes, M->word_off, M->word_len, M->word_type, M->vocab, M->prune_key,
                      M->prune_val, M->input, M->output, M->output_norm, M->left, M->right, M->hidden,
                      M->word_sum, M->rows, M->hashes, M->ngram_buf, M->toks, M->cache_slots, M->cache,
                      M->cache_keys};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        PyMem_RawFree(arrays[i]);
}

static void Model_dealloc(Model *M)
{
    Model_free_arrays(M);
    Py_XDECREF(M->labels);
    Py_XDECREF(M->path);
    if (M->lock)
        PyThread_free_lock(M->lock);
    Py_TYPE(M)->tp_free((PyObject *)M);
}

static PyObject *Model_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path", "max_cached_words", NULL};
    PyObject *path = NULL;
    Py_ssize_t cap = DEFAULT_CACHED_WORDS;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|n:Model", kwlist, PyUnicode_FSDecoder, &path, &cap))
        return NULL;   /* `path`: a str, for messages; `fspath`: its bytes, for fopen */
    if (cap < 0 || cap > (1 << 26)) {
        Py_DECREF(path);
        PyErr_SetString(PyExc_ValueError, "max_cached_words must be in [0, 2**26]");
        return NULL;
    }
    Model *M = (Model *)type->tp_alloc(type, 0);
    unsigned char *data = NULL;
    PyObject *fspath = NULL;
    if (!M || !(fspath = PyUnicode_EncodeFSDefault(path)))
        goto fail;
    M->cache_cap = cap;
    M->cache_stride = sizeof(CacheHead);   /* + dim floats, once the file says dim */
    FILE *f = fopen(PyBytes_AS_STRING(fspath), "rb");
    if (!f) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        goto fail;
    }
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0 || !(data = PyMem_RawMalloc((size_t)size + 1)) ||
        fread(data, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        if (!PyErr_Occurred())
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        goto fail;
    }
    fclose(f);
    if (load_model(M, path, data, (size_t)size) < 0 || make_labels(M) < 0)
        goto fail;
    PyMem_RawFree(data);
    data = NULL;
    M->cache_stride += (size_t)M->dim * sizeof(float);
    M->hidden = PyMem_RawMalloc((size_t)M->dim * sizeof(float));
    M->word_sum = PyMem_RawMalloc((size_t)M->dim * sizeof(float));
    M->lock = PyThread_allocate_lock();
    if (!M->hidden || !M->word_sum || !M->lock) {
        PyErr_NoMemory();
        goto fail;
    }
    M->path = path;   /* the reference the argument parser made */
    Py_DECREF(fspath);
    return (PyObject *)M;
fail:
    PyMem_RawFree(data);
    Py_XDECREF(path);
    Py_XDECREF(fspath);
    Py_XDECREF(M);
    return NULL;
}

/* Runs the batch: label and probability per text. Returns the number of texts, or -1 with an exception. */
static Py_ssize_t run_batch(Model *M, PyObject *args, PyObject *kwds, int32_t **labels_out, float **probs_out)
{
    static char *kwlist[] = {"texts", "threshold", NULL};
    PyObject *texts;
    double threshold = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|d", kwlist, &texts, &threshold))
        return -1;
    /* A tuple holds its own references: another thread cannot free the texts while the GIL is released. */
    PyObject *items = PySequence_Tuple(texts), *keep = NULL;
    if (!items)
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(items), done = -1;
    const unsigned char **ptr = PyMem_Malloc((size_t)(n + 1) * sizeof(*ptr));
    Py_ssize_t *len = PyMem_Malloc((size_t)(n + 1) * sizeof(*len));
    int32_t *labels = PyMem_Malloc((size_t)(n + 1) * sizeof(*labels));
    float *probs = PyMem_Malloc((size_t)(n + 1) * sizeof(*probs));
    if (!ptr || !len || !labels || !probs) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyTuple_GET_ITEM(items, i);
        if (PyUnicode_Check(t)) {
            ptr[i] = (const unsigned char *)PyUnicode_AsUTF8AndSize(t, &len[i]);
            if (!ptr[i]) {
                /* Lone surrogates have no UTF-8: their 3-byte form ('surrogatepass') is a token like any
                 * other unknown character, so that one odd caption cannot stop the stage. */
                if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
                    goto out;
                PyErr_Clear();
                PyObject *b = PyUnicode_AsEncodedString(t, "utf-8", "surrogatepass");
                if (!b || ((keep || (keep = PyList_New(0))) && PyList_Append(keep, b) < 0)) {
                    Py_XDECREF(b);
                    goto out;
                }
                Py_DECREF(b);   /* `keep` holds it */
                ptr[i] = (const unsigned char *)PyBytes_AS_STRING(b), len[i] = PyBytes_GET_SIZE(b);
            }
        }
        else if (PyBytes_Check(t)) {   /* raw UTF-8 (or any bytes), as fastText reads a file */
            ptr[i] = (const unsigned char *)PyBytes_AS_STRING(t), len[i] = PyBytes_GET_SIZE(t);
        }
        else {
            PyErr_Format(PyExc_TypeError, "texts must be str or bytes, not %.100s", Py_TYPE(t)->tp_name);
            goto out;
        }
    }
    /* fastText takes the threshold as a float and compares log-probabilities with log(threshold + 1e-5). */
    float min_score = std_log((float)threshold);
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(M->lock, WAIT_LOCK);
    for (Py_ssize_t i = 0; i < n && !failed; i++)
        failed = predict_one(M, ptr[i], len[i], min_score, &labels[i], &probs[i]) < 0;
    PyThread_release_lock(M->lock);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto out;
    }
    *labels_out = labels, *probs_out = probs;
    labels = NULL, probs = NULL;
    done = n;
out:
    PyMem_Free(ptr);
    PyMem_Free(len);
    PyMem_Free(labels);
    PyMem_Free(probs);
    Py_XDECREF(keep);
    Py_DECREF(items);
    return done;
}

/* run_batch's answers as a list: (label index, probability) pairs, or label strings (None: below threshold). */
static PyObject *batch_results(Model *M, PyObject *args, PyObject *kwds, int as_labels)
{
    int32_t *labels;
    float *probs;
    Py_ssize_t n = run_batch(M, args, kwds, &labels, &probs);
    if (n < 0)
        return NULL;
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *v;
        if (as_labels)
            v = Py_NewRef(labels[i] >= 0 ? PyTuple_GET_ITEM(M->labels, labels[i]) : Py_None);
        else if (!(v = Py_BuildValue("(id)", (int)labels[i], (double)probs[i])))
            Py_CLEAR(out);
        if (out)
            PyList_SET_ITEM(out, i, v);
    }
    PyMem_Free(labels);
    PyMem_Free(probs);
    return out;
}

static PyObject *Model_predict(Model *M, PyObject *args, PyObject *kwds)
{
    return batch_results(M, args, kwds, 0);
}

static PyObject *Model_top_labels(Model *M, PyObject *args, PyObject *kwds)
{
    return batch_results(M, args, kwds, 1);
}

static PyObject *Model_clear_cache(Model *M, PyObject *Py_UNUSED(ignored))
{
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(M->lock, WAIT_LOCK);
    cache_clear(M);
    M->cache_hits = M->cache_misses = 0;
    PyThread_release_lock(M->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Model_reduce(Model *M, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(O(On))", Py_TYPE(M), M->path, M->cache_cap);   /* a fresh model, empty cache */
}

static PyObject *Model_get_labels(Model *M, void *Py_UNUSED(closure)) { return Py_NewRef(M->labels); }

static PyObject *Model_get_info(Model *M, void *Py_UNUSED(closure))
{
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:s,s:L,s:O,s:O}", "version", M->version, "dim", M->dim,
                         "words", M->nwords, "labels", M->nlabels, "minn", M->minn, "maxn", M->maxn, "bucket",
                         M->bucket, "word_ngrams", M->word_ngrams, "loss", "hs", "pruned_buckets",
                         (long long)M->pruneidx_size, "quantized_input", M->quantized_input ? Py_True : Py_False,
                         "quantized_output", M->quantized_output ? Py_True : Py_False);
}

static PyObject *Model_get_cache_stats(Model *M, void *Py_UNUSED(closure))
{
    return Py_BuildValue("{s:n,s:n,s:L,s:L,s:L}", "words", M->cache_n, "max_words", M->cache_cap, "hits",
                         M->cache_hits, "misses", M->cache_misses, "clears", M->cache_clears);
}

static PyMethodDef Model_methods[] = {
    {"predict", (PyCFunction)(void (*)(void))Model_predict, METH_VARARGS | METH_KEYWORDS,
     "predict(texts, threshold=0.0) -> [(label index, probability)] per text; (-1, 0.0) where fastText "
     "reports no label (none at or above the threshold). A text is one line: newlines separate words."},
    {"top_labels", (PyCFunction)(void (*)(void))Model_top_labels, METH_VARARGS | METH_KEYWORDS,
     "top_labels(texts, threshold=0.0) -> [label name or None] per text (labels[i] of predict's index)."},
    {"clear_cache", (PyCFunction)Model_clear_cache, METH_NOARGS, "Empty the word cache (for measurements)."},
    {"__reduce__", (PyCFunction)Model_reduce, METH_NOARGS, "Pickled as its file path: unpickling reloads it."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Model_getset[] = {
    {"labels", (getter)Model_get_labels, NULL, "label names, '__label__' prefix removed, by label index", NULL},
    {"info", (getter)Model_get_info, NULL, "the model's arguments and shape", NULL},
    {"cache_stats", (getter)Model_get_cache_stats, NULL, "{'words', 'max_words', 'hits', 'misses', 'clears'}",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pipeline.match._lidcore.Model",
    .tp_doc = "Model(path, max_cached_words=262144): a supervised fastText model (hierarchical softmax) "
              "loaded from a .ftz/.bin file, for top-1 prediction. max_cached_words=0: no word cache, "
              "probabilities bit-identical to fastText's.",
    .tp_basicsize = sizeof(Model),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Model_new,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
};

static struct PyModuleDef lidcore_module = {
    PyModuleDef_HEAD_INIT, "pipeline.match._lidcore",
    "fastText inference in C for the language filter (see pipeline/match/lid.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__lidcore(void)
{
    const char seps[] = {' ', '\n', '\r', '\t', '\v', '\f', '\0'};
    for (size_t i = 0; i < sizeof seps; i++)
        is_sep[(unsigned char)seps[i]] = 1;
    if (PyType_Ready(&ModelType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&lidcore_module);
    if (!m)
        return NULL;
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0 ||
        PyModule_AddIntConstant(m, "DEFAULT_CACHED_WORDS", DEFAULT_CACHED_WORDS) < 0) {
        Py_DECREF(&ModelType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
