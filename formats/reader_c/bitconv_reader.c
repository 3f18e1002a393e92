/* bitconv_reader.c: see bitconv_reader.h. C99, the C standard library and (outside Windows) POSIX open/fstat.
 *
 * Layout of this file: checked arithmetic, a minimal JSON parser (what safetensors headers need: objects, arrays,
 * strings with every escape, integers and numbers, true/false/null), then the safetensors container (header,
 * stored tensors, offsets that tile the data), then the bitconv metadata (packed weight entries and the stored
 * tensors each one owns), then the decoders, which follow formats/SPEC.md "Decoding, per scheme" line by line.
 *
 * Files are untrusted input. Every rule of formats/SPEC.md "Validation (what every reader must refuse)" is
 * checked here, each where the data it needs is first available: the header when the file is opened, stored
 * values (codes, scales, zero points, outlier indices) when the tensor is decoded. Every size computed from a
 * header goes through the checked helpers below, so no product or sum ever wraps around.
 */
#define _FILE_OFFSET_BITS 64
#if !defined(_WIN32)
#define _POSIX_C_SOURCE 200809L
#endif

#include "bitconv_reader.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#include <sys/stat.h>
#include <sys/types.h>
#define bcr_fseek _fseeki64
#else
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#define bcr_fseek fseeko
#endif

/* A header bigger than this is not a safetensors header but a corrupt length (the safetensors crate agrees). */
#define MAX_HEADER_BYTES 100000000ULL
#define MAX_JSON_DEPTH 64

static void set_err(char *err, size_t err_len, const char *fmt, ...) {
    va_list ap;
    if (!err || !err_len) return;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

/* A header string value quoted into an error message: at most 40 bytes, control characters as '?', so a hostile
 * value can neither break the message over several lines nor bury it. (Keys cannot hold control characters:
 * the JSON parser refuses them, so names are printed as they are.) */
#define SHOW_LEN 48
static const char *show(const char *v, char *buf) {
    size_t k, n = v ? strlen(v) : 0;
    if (!v) return "(missing)";
    for (k = 0; k < n && k < 40; k++) buf[k] = (unsigned char)v[k] < 0x20 || v[k] == 0x7F ? '?' : v[k];
    strcpy(buf + k, n > 40 ? "..." : "");
    return buf;
}

/* -------------------------------------------------------------------------------------- checked arithmetic */

/* Products of header values: fail (-1) instead of wrapping modulo 2^64. */
static int mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (a && b > UINT64_MAX / a) return -1;
    *out = a * b;
    return 0;
}

/* ceil(a / b) for a >= 0, b > 0, without the (a + b - 1) that overflows when a or b is near INT64_MAX. */
static int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

/* The exact element count of a shape (entries >= 0); -1 if it does not fit 64 bits. A shape with a zero entry
 * has no elements whatever its other entries, so the result does not depend on the order of the entries. */
static int shape_numel(const int64_t *shape, int ndim, uint64_t *n) {
    uint64_t prod = 1;
    int k;
    for (k = 0; k < ndim; k++)
        if (shape[k] == 0) { *n = 0; return 0; }
    for (k = 0; k < ndim; k++)
        if (mul_u64(prod, (uint64_t)shape[k], &prod)) return -1;
    *n = prod;
    return 0;
}

/* ------------------------------------------------------------------------------------------------ JSON */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jval {
    jtype type;
    int boolean;
    int is_int;       /* J_NUM written as an integer (no fraction, no exponent) that fits int64 */
    int64_t i;
    char *str;        /* J_STR: NUL-terminated UTF-8; strings holding \u0000 are refused, so nothing is cut short */
    size_t n;         /* J_ARR / J_OBJ: number of items */
    char **keys;      /* J_OBJ: keys[i] names items[i]; keys are unique (duplicates are refused) */
    struct jval *items;
} jval;

typedef struct {
    const char *p;
    const char *end;
    char *err;
    size_t err_len;
} jparser;

static void jfree(jval *v) {
    size_t k;
    if (!v) return;
    if (v->type == J_STR) free(v->str);
    if (v->type == J_ARR || v->type == J_OBJ) {
        for (k = 0; k < v->n; k++) {
            jfree(&v->items[k]);
            if (v->keys) free(v->keys[k]);
        }
        free(v->items);
        free(v->keys);
    }
    memset(v, 0, sizeof(*v));
}

static void jskip_ws(jparser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int jfail(jparser *ps, const char *what) {
    set_err(ps->err, ps->err_len, "malformed JSON: %s", what);
    return -1;
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    int k;
    for (k = 0; k < 4; k++) {
        char c = s[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the well-formed UTF-8 sequence at s (at most n bytes), 0 if it is not one. JSON text is UTF-8. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    size_t len, k;
    unsigned cp;
    if (s[0] < 0x80) return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF) { len = 2; cp = s[0] & 0x1Fu; }
    else if (s[0] >= 0xE0 && s[0] <= 0xEF) { len = 3; cp = s[0] & 0x0Fu; }
    else if (s[0] >= 0xF0 && s[0] <= 0xF4) { len = 4; cp = s[0] & 0x07u; }
    else return 0;
    if (len > n) return 0;
    for (k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[k] & 0x3Fu);
    }
    /* overlong forms, surrogates and code points above U+10FFFF are not UTF-8 */
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* Parses a string starting at the opening quote; the decoded text is never longer than the source.
 * Refuses U+0000 anywhere (C strings would silently end there, so "F32\u0000x" would read as "F32") and, in
 * keys, every control character (names are printed in one-line error messages). */
static int jparse_string(jparser *ps, char **out, int is_key) {
    const char *s = ps->p + 1;
    const char *q = s;
    char *buf, *o, *k;
    while (q < ps->end && *q != '"') {
        if (*q == '\\') q++;
        q++;
    }
    if (q >= ps->end) return jfail(ps, "unterminated string");
    buf = (char *)malloc((size_t)(q - s) + 1);
    if (!buf) return jfail(ps, "out of memory");
    o = buf;
    while (s < q) {
        unsigned char c = (unsigned char)*s++;
        if (c < 0x20) { free(buf); return jfail(ps, "control character in string"); }
        if (c >= 0x80) {
            size_t len = utf8_len((const unsigned char *)s - 1, (size_t)(q - s) + 1);
            if (!len) { free(buf); return jfail(ps, "invalid UTF-8 in string"); }
            memcpy(o, s - 1, len);
            o += len;
            s += len - 1;
            continue;
        }
        if (c != '\\') { *o++ = (char)c; continue; }
        c = (unsigned char)*s++;
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (q - s < 4 || hex4(s, &cp)) { free(buf); return jfail(ps, "bad \\u escape"); }
            s += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair encodes one code point above U+FFFF */
                if (q - s < 6 || s[0] != '\\' || s[1] != 'u' || hex4(s + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    free(buf);
                    return jfail(ps, "unpaired surrogate in \\u escape");
                }
                s += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                free(buf);
                return jfail(ps, "unpaired surrogate in \\u escape");
            } else if (cp == 0) {
                free(buf);
                return jfail(ps, "\\u0000 in string");
            }
            o += put_utf8(o, cp);
            break;
        }
        default: free(buf); return jfail(ps, "unknown escape in string");
        }
    }
    *o = '\0';
    if (is_key)
        for (k = buf; k < o; k++)
            if ((unsigned char)*k < 0x20 || *k == 0x7F) { free(buf); return jfail(ps, "control character in a key"); }
    ps->p = q + 1;
    *out = buf;
    return 0;
}

/* Numbers: the header only needs integers (shapes, offsets, counts), so a number is recorded as an exact int64
 * when it is written as one and fits, and otherwise only as "a number that is not such an integer". */
static int jparse_number(jparser *ps, jval *v) {
    const char *s = ps->p;
    const char *q = s;
    int integral = 1, neg = 0;
    if (q < ps->end && *q == '-') { q++; neg = 1; }
    if (q >= ps->end || *q < '0' || *q > '9') return jfail(ps, "bad number");
    if (*q == '0') q++;
    else while (q < ps->end && *q >= '0' && *q <= '9') q++;
    if (q < ps->end && *q == '.') {
        integral = 0;
        q++;
        if (q >= ps->end || *q < '0' || *q > '9') return jfail(ps, "bad number");
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        integral = 0;
        q++;
        if (q < ps->end && (*q == '+' || *q == '-')) q++;
        if (q >= ps->end || *q < '0' || *q > '9') return jfail(ps, "bad number");
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    v->type = J_NUM;
    if (integral) {
        const uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        uint64_t mag = 0;
        const char *d;
        int fits = 1;
        for (d = s + neg; d < q && fits; d++) {
            unsigned digit = (unsigned)(*d - '0');
            if (mag > (limit - digit) / 10) fits = 0;
            else mag = mag * 10 + digit;
        }
        if (fits) {
            v->is_int = 1;
            /* -(mag - 1) - 1 reaches INT64_MIN without negating an out-of-range value */
            v->i = neg ? (mag ? -(int64_t)(mag - 1) - 1 : 0) : (int64_t)mag;
        }
    }
    ps->p = q;
    return 0;
}

static int jparse_value(jparser *ps, jval *v, int depth);

static int jappend(jval *v, size_t *cap, char *key) {
    if (v->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        jval *items;
        if (ncap > ((size_t)-1) / sizeof(jval)) return -1;
        items = (jval *)realloc(v->items, ncap * sizeof(jval));
        if (!items) return -1;
        v->items = items;
        if (v->type == J_OBJ) {
            char **keys = (char **)realloc(v->keys, ncap * sizeof(char *));
            if (!keys) return -1;
            v->keys = keys;
        }
        *cap = ncap;
    }
    memset(&v->items[v->n], 0, sizeof(jval));
    if (v->type == J_OBJ) v->keys[v->n] = key;
    v->n++;
    return 0;
}

static int cmp_key(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* A key that appears twice in one object is refused: JSON leaves its meaning open (Python keeps the last value,
 * this parser found the first), so two readers would decode the same file differently. Sorting a copy of the
 * keys keeps this O(n log n) for headers with many tensors. */
static int jcheck_unique_keys(jparser *ps, const jval *v) {
    char **sorted;
    size_t k;
    if (v->n < 2) return 0;
    sorted = (char **)malloc(v->n * sizeof(char *));
    if (!sorted) return jfail(ps, "out of memory");
    memcpy(sorted, v->keys, v->n * sizeof(char *));
    qsort(sorted, v->n, sizeof(char *), cmp_key);
    for (k = 1; k < v->n; k++) {
        if (!strcmp(sorted[k - 1], sorted[k])) {
            set_err(ps->err, ps->err_len, "malformed JSON: duplicate key '%.200s'", sorted[k]);
            free(sorted);
            return -1;
        }
    }
    free(sorted);
    return 0;
}

static int jparse_container(jparser *ps, jval *v, int depth) {
    char close = *ps->p == '{' ? '}' : ']';
    size_t cap = 0;
    v->type = close == '}' ? J_OBJ : J_ARR;
    ps->p++;
    jskip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) { ps->p++; return 0; }
    for (;;) {
        char *key = NULL;
        jskip_ws(ps);
        if (v->type == J_OBJ) {
            if (ps->p >= ps->end || *ps->p != '"') return jfail(ps, "expected a string key");
            if (jparse_string(ps, &key, 1)) return -1;
            jskip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') { free(key); return jfail(ps, "expected ':'"); }
            ps->p++;
        }
        if (jappend(v, &cap, key)) { free(key); return jfail(ps, "out of memory"); }
        if (jparse_value(ps, &v->items[v->n - 1], depth + 1)) return -1;
        jskip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return v->type == J_OBJ ? jcheck_unique_keys(ps, v) : 0;
        }
        return jfail(ps, v->type == J_OBJ ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int jparse_value(jparser *ps, jval *v, int depth) {
    if (depth > MAX_JSON_DEPTH) return jfail(ps, "nested too deeply");
    jskip_ws(ps);
    if (ps->p >= ps->end) return jfail(ps, "unexpected end");
    switch (*ps->p) {
    case '{':
    case '[': return jparse_container(ps, v, depth);
    case '"': v->type = J_STR; return jparse_string(ps, &v->str, 0);
    case 't':
        if (ps->end - ps->p >= 4 && !memcmp(ps->p, "true", 4)) { v->type = J_BOOL; v->boolean = 1; ps->p += 4; return 0; }
        return jfail(ps, "bad literal");
    case 'f':
        if (ps->end - ps->p >= 5 && !memcmp(ps->p, "false", 5)) { v->type = J_BOOL; ps->p += 5; return 0; }
        return jfail(ps, "bad literal");
    case 'n':
        if (ps->end - ps->p >= 4 && !memcmp(ps->p, "null", 4)) { v->type = J_NULL; ps->p += 4; return 0; }
        return jfail(ps, "bad literal");
    default: return jparse_number(ps, v);
    }
}

static int jparse(const char *text, size_t len, jval *out, char *err, size_t err_len) {
    jparser ps;
    ps.p = text;
    ps.end = text + len;
    ps.err = err;
    ps.err_len = err_len;
    memset(out, 0, sizeof(*out));
    if (jparse_value(&ps, out, 0)) { jfree(out); return -1; }
    jskip_ws(&ps);
    if (ps.p != ps.end) { jfree(out); return jfail(&ps, "trailing characters after the value"); }
    return 0;
}

static const jval *jget(const jval *obj, const char *key) {
    size_t k;
    if (!obj || obj->type != J_OBJ) return NULL;
    for (k = 0; k < obj->n; k++)
        if (!strcmp(obj->keys[k], key)) return &obj->items[k];
    return NULL;
}

static const char *jget_str(const jval *obj, const char *key) {
    const jval *v = jget(obj, key);
    return v && v->type == J_STR ? v->str : NULL;
}

/* A JSON integer in [0, 2^63 - 1]: the only kind of number shapes, offsets and counts may be. */
static int jnonneg_int(const jval *v, int64_t *out) {
    if (!v || v->type != J_NUM || !v->is_int || v->i < 0) return -1;
    *out = v->i;
    return 0;
}

/* ------------------------------------------------------------------------------------- the container */

typedef struct {
    const char *name;  /* points into the header tree */
    const char *dtype;
    int ndim;
    int64_t shape[BCR_MAX_DIMS];
    uint64_t begin, end; /* data offsets relative to the data start; end - begin is exactly the tensor's bytes */
    uint64_t numel;
    long owner;          /* index of the packed weight this tensor is a part of, -1 for a plain tensor */
} stored_t;

/* Suffixes of the stored tensors of one packed weight (format.py SUFFIX_*). */
enum { PART_CODES, PART_SCALE, PART_ZERO, PART_OIDX, PART_OVAL, N_PARTS };
static const char *const PART_SUFFIX[N_PARTS] = {".qcodes", ".qscale", ".qzero", ".outlier_idx", ".outlier_val"};

typedef struct {
    const char *name; /* logical name, points into the metadata tree */
    const char *scheme, *packing, *granularity, *layout, *dtype;
    int64_t out, in, group_size, n_groups, n_outliers, row_bytes;
    uint64_t numel;     /* out * in, checked */
    long part[N_PARTS]; /* index into stored, -1 when the scheme has no such part */
} packed_t;

typedef struct {
    bcr_kind kind;
    size_t index; /* into packed or stored */
} logical_t;

struct bcr_file {
    FILE *fp;
    char *path;
    uint64_t data_start, data_size;
    jval header, tensors_meta;
    stored_t *stored;
    size_t n_stored;
    const stored_t **by_name; /* stored, sorted by name, for bsearch */
    packed_t *packed;
    size_t n_packed;
    logical_t *logical;
    size_t n_logical;
};

static int dtype_size(const char *dtype) {
    static const char *const names[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"};
    static const int sizes[] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1};
    size_t k;
    for (k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++)
        if (!strcmp(dtype, names[k])) return sizes[k];
    return 0;
}

static int cmp_stored_name(const void *a, const void *b) {
    return strcmp((*(const stored_t *const *)a)->name, (*(const stored_t *const *)b)->name);
}

static long find_stored(const bcr_file *f, const char *name) {
    stored_t key;
    const stored_t *kp = &key;
    const stored_t **hit;
    if (!f->by_name) return -1;
    key.name = name;
    hit = (const stored_t **)bsearch(&kp, f->by_name, f->n_stored, sizeof(*f->by_name), cmp_stored_name);
    return hit ? (long)(*hit - f->stored) : -1;
}

/* A list of at most BCR_MAX_DIMS integers in [0, 2^63 - 1]. */
static int read_shape(const jval *arr, int64_t *shape, int *ndim) {
    size_t k;
    if (!arr || arr->type != J_ARR || arr->n > BCR_MAX_DIMS) return -1;
    for (k = 0; k < arr->n; k++)
        if (jnonneg_int(&arr->items[k], &shape[k])) return -1;
    *ndim = (int)arr->n;
    return 0;
}

static int parse_one_stored(bcr_file *f, stored_t *t, const jval *e, char *err, size_t err_len) {
    const jval *offs = jget(e, "data_offsets");
    int64_t begin, end;
    uint64_t nbytes;
    int size;
    char buf[SHOW_LEN];
    if (e->type != J_OBJ) {
        set_err(err, err_len, "%s: tensor '%s': its header entry is not a JSON object; the file is corrupt", f->path, t->name);
        return -1;
    }
    t->dtype = jget_str(e, "dtype");
    if (!t->dtype) {
        set_err(err, err_len, "%s: tensor '%s': its header entry has no 'dtype' string; the file is corrupt", f->path, t->name);
        return -1;
    }
    if (read_shape(jget(e, "shape"), t->shape, &t->ndim)) {
        set_err(err, err_len, "%s: tensor '%s': 'shape' must be a list of at most %d integers from 0 to 2^63-1; the file is corrupt",
                f->path, t->name, BCR_MAX_DIMS);
        return -1;
    }
    if (!offs || offs->type != J_ARR || offs->n != 2 || jnonneg_int(&offs->items[0], &begin) ||
        jnonneg_int(&offs->items[1], &end) || end < begin) {
        set_err(err, err_len, "%s: tensor '%s': 'data_offsets' must be two integers [begin, end] with 0 <= begin <= end; the file is corrupt",
                f->path, t->name);
        return -1;
    }
    size = dtype_size(t->dtype);
    if (!size) {
        set_err(err, err_len, "%s: tensor '%s' has unsupported dtype '%s' (this reader knows F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)",
                f->path, t->name, show(t->dtype, buf));
        return -1;
    }
    t->begin = (uint64_t)begin;
    t->end = (uint64_t)end;
    if (t->end > f->data_size) {
        set_err(err, err_len, "%s: truncated (tensor '%s' ends at data byte %llu of %llu); re-download or re-convert it",
                f->path, t->name, (unsigned long long)t->end, (unsigned long long)f->data_size);
        return -1;
    }
    /* exact: a product too big for 64 bits cannot equal the byte length of any file */
    if (shape_numel(t->shape, t->ndim, &t->numel) || mul_u64(t->numel, (uint64_t)size, &nbytes) ||
        nbytes != t->end - t->begin) {
        set_err(err, err_len, "%s: tensor '%s' is %llu bytes, which is not what its dtype %s and shape need; the file is corrupt",
                f->path, t->name, (unsigned long long)(t->end - t->begin), t->dtype);
        return -1;
    }
    /* SPEC.md: the non-zero entries times the largest dtype size fit int64, an empty tensor included (no reader
     * could make such an array, so it is refused here rather than wherever it is used) */
    uint64_t span = 8;
    int k;
    for (k = 0; k < t->ndim; k++)
        if (t->shape[k] && mul_u64(span, (uint64_t)t->shape[k], &span)) span = UINT64_MAX;
    if (span > (uint64_t)INT64_MAX) {
        set_err(err, err_len, "%s: tensor '%s' has a shape too large for an array of any dtype even with a 0 dimension; "
                "the file is corrupt", f->path, t->name);
        return -1;
    }
    return 0;
}

typedef struct {
    uint64_t begin, end;
    size_t idx;
} span_t;

static int cmp_span(const void *a, const void *b) {
    const span_t *x = (const span_t *)a, *y = (const span_t *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* As the safetensors crate: taken in order of their offsets, the tensors cover the data buffer exactly, the
 * first starting at 0, each where the previous ends, the last at the end of the file. A gap would hide bytes,
 * an overlap would let two tensors (or a tensor and the header) share bytes. */
static int check_tiling(bcr_file *f, char *err, size_t err_len) {
    span_t *spans = (span_t *)malloc((f->n_stored ? f->n_stored : 1) * sizeof(span_t));
    uint64_t at = 0;
    size_t k;
    if (!spans) { set_err(err, err_len, "%s: out of memory", f->path); return -1; }
    for (k = 0; k < f->n_stored; k++) {
        spans[k].begin = f->stored[k].begin;
        spans[k].end = f->stored[k].end;
        spans[k].idx = k;
    }
    qsort(spans, f->n_stored, sizeof(span_t), cmp_span);
    for (k = 0; k < f->n_stored; k++) {
        if (spans[k].begin != at) {
            set_err(err, err_len, "%s: tensor '%s' starts at data byte %llu, but the tensors before it end at %llu (%s); "
                    "tensors must tile the data without gaps or overlaps; the file is corrupt",
                    f->path, f->stored[spans[k].idx].name, (unsigned long long)spans[k].begin, (unsigned long long)at,
                    spans[k].begin > at ? "a gap" : "an overlap");
            free(spans);
            return -1;
        }
        at = spans[k].end;
    }
    free(spans);
    if (at != f->data_size) {
        set_err(err, err_len, "%s: %llu bytes after the last tensor (data ends at %llu, the file at %llu); the file is corrupt",
                f->path, (unsigned long long)(f->data_size - at), (unsigned long long)at, (unsigned long long)f->data_size);
        return -1;
    }
    return 0;
}

static int parse_stored(bcr_file *f, char *err, size_t err_len) {
    const jval *h = &f->header;
    size_t k;
    f->stored = (stored_t *)calloc(h->n ? h->n : 1, sizeof(stored_t));
    f->by_name = (const stored_t **)calloc(h->n ? h->n : 1, sizeof(*f->by_name));
    if (!f->stored || !f->by_name) { set_err(err, err_len, "%s: out of memory", f->path); return -1; }
    for (k = 0; k < h->n; k++) {
        stored_t *t;
        if (!strcmp(h->keys[k], "__metadata__")) {
            const jval *m = &h->items[k];
            size_t j;
            int ok = m->type == J_OBJ;
            for (j = 0; ok && j < m->n; j++) ok = m->items[j].type == J_STR;
            if (!ok) {
                set_err(err, err_len, "%s: '__metadata__' must be a JSON object of strings; the file is corrupt", f->path);
                return -1;
            }
            continue;
        }
        t = &f->stored[f->n_stored];
        t->name = h->keys[k];
        t->owner = -1;
        if (parse_one_stored(f, t, &h->items[k], err, err_len)) return -1;
        f->by_name[f->n_stored] = t;
        f->n_stored++;
    }
    qsort(f->by_name, f->n_stored, sizeof(*f->by_name), cmp_stored_name);
    return check_tiling(f, err, err_len);
}

/* ----------------------------------------------------------------------------------- bitconv metadata */

static int one_of(const char *s, const char *const *options, size_t n) {
    size_t k;
    if (!s) return 0;
    for (k = 0; k < n; k++)
        if (!strcmp(s, options[k])) return 1;
    return 0;
}

/* Bytes per row of the codes tensor, as SPEC.md's table says (overflow-free for any in >= 0). */
static int64_t code_row_bytes(const packed_t *p) {
    if (!strcmp(p->scheme, "ternary")) return !strcmp(p->packing, "base3") ? ceil_div(p->in, 5) : ceil_div(p->in, 4);
    if (!strcmp(p->scheme, "binary")) return ceil_div(p->in, 8);
    if (!strcmp(p->scheme, "int8")) return p->in;
    if (!strcmp(p->scheme, "uint4")) return ceil_div(p->in, 2);
    return ceil_div(p->in, 4); /* uint2 */
}

static int check_part(bcr_file *f, packed_t *p, long packed_index, int part, const char *dtype, int ndim,
                      const int64_t *shape, char *err, size_t err_len) {
    char *name;
    long idx;
    stored_t *t;
    int k, same;
    char want[64];
    size_t n = strlen(p->name), s = strlen(PART_SUFFIX[part]);
    /* on the heap: a fixed buffer would cut a long name short, and the cut name could find another tensor */
    name = (char *)malloc(n + s + 1);
    if (!name) { set_err(err, err_len, "%s: out of memory", f->path); return -1; }
    memcpy(name, p->name, n);
    memcpy(name + n, PART_SUFFIX[part], s + 1);
    idx = find_stored(f, name);
    if (idx < 0) {
        set_err(err, err_len, "%s: tensor '%s' is missing (needed by packed weight '%s'); the file is corrupt",
                f->path, name, p->name);
        free(name);
        return -1;
    }
    t = &f->stored[idx];
    same = !strcmp(t->dtype, dtype) && t->ndim == ndim;
    for (k = 0; same && k < ndim; k++) same = t->shape[k] == shape[k];
    if (!same) {
        if (ndim == 1) snprintf(want, sizeof(want), "%s [%lld]", dtype, (long long)shape[0]);
        else snprintf(want, sizeof(want), "%s [%lld, %lld]", dtype, (long long)shape[0], (long long)shape[1]);
        set_err(err, err_len, "%s: tensor '%s' has dtype %s and the wrong shape or dtype for its spec (needs %s); the file is corrupt",
                f->path, name, t->dtype, want);
        free(name);
        return -1;
    }
    if (t->owner >= 0) { /* cannot happen with unique keys, kept so a part is never decoded for two weights */
        set_err(err, err_len, "%s: tensor '%s' is claimed by two packed weights; the file is corrupt", f->path, name);
        free(name);
        return -1;
    }
    t->owner = packed_index;
    p->part[part] = idx;
    free(name);
    return 0;
}

/* Reads one required string member of a bitconv.tensors entry that must be one of `options`. */
static int entry_choice(bcr_file *f, const char *name, const jval *e, const char *key, const char *const *options,
                        size_t n, const char *known, const char **out, char *err, size_t err_len) {
    const jval *v = jget(e, key);
    char buf[SHOW_LEN];
    if (!v || v->type != J_STR) {
        set_err(err, err_len, "%s: tensor '%s': its bitconv.tensors entry has no '%s' string (one of %s); the file is corrupt",
                f->path, name, key, known);
        return -1;
    }
    if (!one_of(v->str, options, n)) {
        set_err(err, err_len, "%s: tensor '%s': unknown %s '%s' (this reader knows %s)", f->path, name, key,
                show(v->str, buf), known);
        return -1;
    }
    *out = v->str;
    return 0;
}

static int parse_packed_entry(bcr_file *f, long index, const char *name, const jval *e, char *err, size_t err_len) {
    static const char *const schemes[] = {"ternary", "binary", "int8", "uint4", "uint2"};
    static const char *const grans[] = {"tensor", "channel", "group"};
    static const char *const packings[] = {"2bit", "base3"};
    static const char *const layouts[] = {"linear", "conv1d"};
    packed_t *p = &f->packed[index];
    const jval *gs, *no, *v;
    int64_t shape[BCR_MAX_DIMS], dims[2];
    int ndim, k;
    const char *codes_dtype;
    int asym;

    p->name = name;
    for (k = 0; k < N_PARTS; k++) p->part[k] = -1;
    if (e->type != J_OBJ) {
        set_err(err, err_len, "%s: tensor '%s': its bitconv.tensors entry is not a JSON object; the file is corrupt", f->path, name);
        return -1;
    }
    if (entry_choice(f, name, e, "scheme", schemes, 5, "ternary, binary, int8, uint4, uint2", &p->scheme, err, err_len) ||
        entry_choice(f, name, e, "packing", packings, 2, "2bit, base3", &p->packing, err, err_len) ||
        entry_choice(f, name, e, "granularity", grans, 3, "tensor, channel, group", &p->granularity, err, err_len) ||
        entry_choice(f, name, e, "layout", layouts, 2, "linear, conv1d", &p->layout, err, err_len))
        return -1;
    if (!strcmp(p->packing, "base3") && strcmp(p->scheme, "ternary")) {
        set_err(err, err_len, "%s: tensor '%s': packing base3 is defined for ternary only, not %s", f->path, name, p->scheme);
        return -1;
    }
    /* informative members: strings when present */
    v = jget(e, "dtype");
    if ((v && v->type != J_STR) || ((v = jget(e, "scale_method")) && v->type != J_STR)) {
        set_err(err, err_len, "%s: tensor '%s': 'dtype' and 'scale_method' in its bitconv.tensors entry must be strings", f->path, name);
        return -1;
    }
    p->dtype = jget_str(e, "dtype") ? jget_str(e, "dtype") : "float32";
    if (read_shape(jget(e, "shape"), shape, &ndim) || ndim != 2) {
        set_err(err, err_len, "%s: tensor '%s': its bitconv.tensors entry needs a shape [out, in] of two integers from 0 to 2^63-1",
                f->path, name);
        return -1;
    }
    p->out = shape[0];
    p->in = shape[1];
    gs = jget(e, "group_size");
    if (!strcmp(p->granularity, "group") ? jnonneg_int(gs, &p->group_size) || p->group_size < 1
                                         : !gs || gs->type != J_NULL) {
        set_err(err, err_len, "%s: tensor '%s': group_size must be %s; the file is corrupt", f->path, name,
                !strcmp(p->granularity, "group") ? "a positive integer for group granularity"
                                                 : "null unless the granularity is group");
        return -1;
    }
    p->n_groups = !strcmp(p->granularity, "group") ? ceil_div(p->in, p->group_size) : 1;
    no = jget(e, "n_outliers");
    if (jnonneg_int(no, &p->n_outliers)) {
        set_err(err, err_len, "%s: tensor '%s': n_outliers must be an integer >= 0; the file is corrupt", f->path, name);
        return -1;
    }
    if (find_stored(f, name) >= 0) {
        set_err(err, err_len, "%s: '%s' is both a packed weight and a stored tensor; the file is corrupt", f->path, name);
        return -1;
    }

    /* the parts; matching their stored shapes also bounds out and in by the file's size */
    asym = !strcmp(p->scheme, "uint4") || !strcmp(p->scheme, "uint2");
    codes_dtype = !strcmp(p->scheme, "int8") ? "I8" : "U8";
    p->row_bytes = code_row_bytes(p);
    dims[0] = p->out;
    dims[1] = p->row_bytes;
    if (check_part(f, p, index, PART_CODES, codes_dtype, 2, dims, err, err_len)) return -1;
    if (!strcmp(p->granularity, "tensor")) {
        dims[0] = 1;
        if (check_part(f, p, index, PART_SCALE, "F32", 1, dims, err, err_len)) return -1;
    } else if (!strcmp(p->granularity, "channel")) {
        dims[0] = p->out;
        if (check_part(f, p, index, PART_SCALE, "F32", 1, dims, err, err_len)) return -1;
    } else {
        dims[0] = p->out;
        dims[1] = p->n_groups;
        if (check_part(f, p, index, PART_SCALE, "F32", 2, dims, err, err_len)) return -1;
    }
    if (asym) {
        dims[0] = p->out;
        dims[1] = p->n_groups;
        if (check_part(f, p, index, PART_ZERO, "U8", 2, dims, err, err_len)) return -1;
    }
    if (mul_u64((uint64_t)p->out, (uint64_t)p->in, &p->numel) || p->numel > (uint64_t)INT64_MAX) {
        set_err(err, err_len, "%s: tensor '%s': shape [%lld, %lld] is too large; the file is corrupt", f->path, name,
                (long long)p->out, (long long)p->in);
        return -1;
    }
    if ((uint64_t)p->n_outliers > p->numel) {
        set_err(err, err_len, "%s: tensor '%s': n_outliers %lld is more than its %llu weights; the file is corrupt",
                f->path, name, (long long)p->n_outliers, (unsigned long long)p->numel);
        return -1;
    }
    if (p->n_outliers) {
        dims[0] = p->n_outliers;
        if (check_part(f, p, index, PART_OIDX, "I64", 1, dims, err, err_len)) return -1;
        if (check_part(f, p, index, PART_OVAL, "F16", 1, dims, err, err_len)) return -1;
    }
    return 0;
}

/* Names ending in a part suffix are reserved for parts: a `.qzero` the entry does not use, or the parts of an
 * entry missing from bitconv.tensors, would be plain tensors to one reader and ignored by another. */
static int check_orphan_parts(bcr_file *f, char *err, size_t err_len) {
    size_t k, n;
    int part;
    for (k = 0; k < f->n_stored; k++) {
        const stored_t *t = &f->stored[k];
        if (t->owner >= 0) continue;
        n = strlen(t->name);
        for (part = 0; part < N_PARTS; part++) {
            size_t s = strlen(PART_SUFFIX[part]);
            if (n >= s && !strcmp(t->name + n - s, PART_SUFFIX[part])) {
                set_err(err, err_len, "%s: tensor '%s' is named as a part (%s) of packed weight '%.*s', whose bitconv.tensors entry is missing or has no such part; the file is corrupt",
                        f->path, t->name, PART_SUFFIX[part], (int)(n - s), t->name);
                return -1;
            }
        }
    }
    return 0;
}

static int parse_bitconv_metadata(bcr_file *f, char *err, size_t err_len) {
    const jval *meta = jget(&f->header, "__metadata__");
    const char *fmt = jget_str(meta, "bitconv.format");
    const char *ver = jget_str(meta, "bitconv.format_version");
    const char *tensors = jget_str(meta, "bitconv.tensors");
    char sub[BCR_ERR_LEN], buf[SHOW_LEN];
    size_t k;
    if (!fmt || strcmp(fmt, BCR_FORMAT_NAME)) {
        set_err(err, err_len, "%s: not a bitconv packed file (no 'bitconv.format' metadata)", f->path);
        return -1;
    }
    /* exactly the string "1": " 1", "01" or "1.0" would be read as 1 by some parsers and refused by others */
    if (!ver || strcmp(ver, "1")) {
        set_err(err, err_len, "%s: format version %s, this reader reads version %d; use a newer reader",
                f->path, show(ver, buf), BCR_FORMAT_VERSION);
        return -1;
    }
    if (!tensors) {
        set_err(err, err_len, "%s: no 'bitconv.tensors' metadata; the file is corrupt", f->path);
        return -1;
    }
    sub[0] = '\0';
    if (jparse(tensors, strlen(tensors), &f->tensors_meta, sub, sizeof(sub)) || f->tensors_meta.type != J_OBJ) {
        set_err(err, err_len, "%s: the 'bitconv.tensors' metadata is not a JSON object (%s); the file is corrupt",
                f->path, sub[0] ? sub : "another JSON value");
        return -1;
    }
    f->packed = (packed_t *)calloc(f->tensors_meta.n ? f->tensors_meta.n : 1, sizeof(packed_t));
    if (!f->packed) { set_err(err, err_len, "%s: out of memory", f->path); return -1; }
    for (k = 0; k < f->tensors_meta.n; k++) {
        if (parse_packed_entry(f, (long)k, f->tensors_meta.keys[k], &f->tensors_meta.items[k], err, err_len)) return -1;
        f->n_packed++;
    }
    return check_orphan_parts(f, err, err_len);
}

/* The logical list: each packed weight once, at the position of its first stored part, and plain tensors. */
static int build_logical(bcr_file *f, char *err, size_t err_len) {
    size_t k;
    unsigned char *seen = (unsigned char *)calloc(f->n_packed ? f->n_packed : 1, 1);
    f->logical = (logical_t *)calloc(f->n_stored ? f->n_stored : 1, sizeof(logical_t));
    if (!seen || !f->logical) { free(seen); set_err(err, err_len, "%s: out of memory", f->path); return -1; }
    for (k = 0; k < f->n_stored; k++) {
        long owner = f->stored[k].owner;
        if (owner < 0) {
            f->logical[f->n_logical].kind = BCR_PLAIN;
            f->logical[f->n_logical++].index = k;
        } else if (!seen[owner]) {
            seen[owner] = 1;
            f->logical[f->n_logical].kind = BCR_PACKED;
            f->logical[f->n_logical++].index = (size_t)owner;
        }
    }
    free(seen);
    return 0;
}

/* Opens `path` for reading and returns its size, refusing anything but a regular file: a FIFO would block the
 * open (and every read) forever, a device or a folder is not a model. */
static FILE *open_regular(const char *path, uint64_t *size, char *err, size_t err_len) {
#if defined(_WIN32)
    struct _stat64 st;
    FILE *fp = fopen(path, "rb");
    if (!fp) { set_err(err, err_len, "%s: cannot open the file; check the path", path); return NULL; }
    if (_fstat64(_fileno(fp), &st) || (st.st_mode & _S_IFMT) != _S_IFREG) {
        fclose(fp);
        set_err(err, err_len, "%s: not a regular file (a folder or a device); give the path of a .safetensors file", path);
        return NULL;
    }
    *size = (uint64_t)st.st_size;
    return fp;
#else
    struct stat st;
    FILE *fp;
    /* O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting for one */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) { set_err(err, err_len, "%s: cannot open the file; check the path", path); return NULL; }
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        set_err(err, err_len, "%s: not a regular file (a FIFO, a device or a folder); give the path of a .safetensors file", path);
        return NULL;
    }
    fp = fdopen(fd, "rb");
    if (!fp) {
        close(fd);
        set_err(err, err_len, "%s: cannot open the file; check the path", path);
        return NULL;
    }
    *size = (uint64_t)st.st_size;
    return fp;
#endif
}

int bcr_open(const char *path, bcr_file **out, char *err, size_t err_len) {
    bcr_file *f;
    unsigned char len_bytes[8];
    uint64_t header_len = 0, file_size = 0;
    char *text = NULL;
    char sub[BCR_ERR_LEN];
    int k;

    *out = NULL;
    f = (bcr_file *)calloc(1, sizeof(bcr_file));
    if (!f) { set_err(err, err_len, "%s: out of memory", path); return -1; }
    f->path = (char *)malloc(strlen(path) + 1);
    if (!f->path) { free(f); set_err(err, err_len, "%s: out of memory", path); return -1; }
    strcpy(f->path, path);
    f->fp = open_regular(path, &file_size, err, err_len);
    if (!f->fp) goto fail;
    if (file_size < 8 || fread(len_bytes, 1, 8, f->fp) != 8) {
        set_err(err, err_len, "%s: not a safetensors file (shorter than 8 bytes); re-download or re-convert it", path);
        goto fail;
    }
    for (k = 7; k >= 0; k--) header_len = (header_len << 8) | len_bytes[k];
    if (header_len > file_size - 8 || header_len > MAX_HEADER_BYTES) {
        set_err(err, err_len, "%s: corrupt safetensors header (length %llu for a %llu-byte file); re-download it",
                path, (unsigned long long)header_len, (unsigned long long)file_size);
        goto fail;
    }
    text = (char *)malloc((size_t)header_len + 1);
    if (!text) { set_err(err, err_len, "%s: out of memory", path); goto fail; }
    if (fread(text, 1, (size_t)header_len, f->fp) != (size_t)header_len) {
        set_err(err, err_len, "%s: cannot read the header", path);
        goto fail;
    }
    /* as the safetensors crate: the header is one JSON object starting at its first byte (padding after it) */
    sub[0] = '\0';
    if (header_len == 0 || text[0] != '{' || jparse(text, (size_t)header_len, &f->header, sub, sizeof(sub))) {
        set_err(err, err_len, "%s: corrupt safetensors header (%s); re-download or re-convert it", path,
                sub[0] ? sub : "it does not start with '{'");
        goto fail;
    }
    free(text);
    text = NULL;
    f->data_start = 8 + header_len;
    f->data_size = file_size - f->data_start;
    if (parse_stored(f, err, err_len) || parse_bitconv_metadata(f, err, err_len) || build_logical(f, err, err_len)) goto fail;
    *out = f;
    return 0;
fail:
    free(text);
    bcr_close(f);
    return -1;
}

void bcr_close(bcr_file *f) {
    if (!f) return;
    if (f->fp) fclose(f->fp);
    jfree(&f->header);
    jfree(&f->tensors_meta);
    free(f->stored);
    free(f->by_name);
    free(f->packed);
    free(f->logical);
    free(f->path);
    free(f);
}

size_t bcr_count(const bcr_file *f) { return f->n_logical; }

static void fill_info(const bcr_file *f, const logical_t *l, bcr_info *info) {
    memset(info, 0, sizeof(*info));
    info->kind = l->kind;
    if (l->kind == BCR_PLAIN) {
        const stored_t *t = &f->stored[l->index];
        info->name = t->name;
        info->ndim = t->ndim;
        memcpy(info->shape, t->shape, sizeof(t->shape));
        info->dtype = t->dtype;
    } else {
        const packed_t *p = &f->packed[l->index];
        info->name = p->name;
        info->ndim = 2;
        info->shape[0] = p->out;
        info->shape[1] = p->in;
        info->dtype = p->dtype;
        info->scheme = p->scheme;
        info->packing = p->packing;
        info->granularity = p->granularity;
        info->group_size = !strcmp(p->granularity, "group") ? p->group_size : 0;
        info->n_outliers = p->n_outliers;
        info->layout = p->layout;
    }
}

int bcr_info_at(const bcr_file *f, size_t i, bcr_info *info) {
    if (i >= f->n_logical) return -1;
    fill_info(f, &f->logical[i], info);
    return 0;
}

static const logical_t *find_logical(const bcr_file *f, const char *name) {
    size_t k;
    for (k = 0; k < f->n_logical; k++) {
        const logical_t *l = &f->logical[k];
        const char *n = l->kind == BCR_PLAIN ? f->stored[l->index].name : f->packed[l->index].name;
        if (!strcmp(n, name)) return l;
    }
    return NULL;
}

int bcr_find(const bcr_file *f, const char *name, bcr_info *info, char *err, size_t err_len) {
    const logical_t *l = find_logical(f, name);
    if (!l) {
        set_err(err, err_len, "%s: no tensor named '%s' (list the tensors by running the reader on the file alone)", f->path, name);
        return -1;
    }
    fill_info(f, l, info);
    return 0;
}

/* -------------------------------------------------------------------------------------------- decoding */

float bcr_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t mant = h & 0x3FFu;
    uint32_t bits;
    float out;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal half: normalise into a float exponent */
            uint32_t e = 113;
            while (!(mant & 0x400u)) { mant <<= 1; e--; }
            bits = sign | (e << 23) | ((mant & 0x3FFu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    memcpy(&out, &bits, sizeof(out));
    return out;
}

static uint16_t le16(const unsigned char *b) { return (uint16_t)(b[0] | (b[1] << 8)); }
static uint32_t le32(const unsigned char *b) {
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}
static uint64_t le64(const unsigned char *b) { return (uint64_t)le32(b) | ((uint64_t)le32(b + 4) << 32); }
static float f32_of(uint32_t bits) {
    float v;
    memcpy(&v, &bits, sizeof(v));
    return v;
}

/* Reads the raw bytes of stored tensor `idx` into a new buffer. Its offsets were checked against the file's size
 * when it was opened; a read that comes up short means the file changed since. */
static unsigned char *read_stored(bcr_file *f, size_t idx, char *err, size_t err_len) {
    const stored_t *t = &f->stored[idx];
    size_t n = (size_t)(t->end - t->begin);
    unsigned char *buf;
    if ((uint64_t)n != t->end - t->begin) {
        set_err(err, err_len, "%s: tensor '%s' does not fit this machine's memory", f->path, t->name);
        return NULL;
    }
    buf = (unsigned char *)malloc(n ? n : 1);
    if (!buf) { set_err(err, err_len, "%s: out of memory reading '%s'", f->path, t->name); return NULL; }
    if (bcr_fseek(f->fp, (long long)(f->data_start + t->begin), SEEK_SET) || fread(buf, 1, n, f->fp) != n) {
        free(buf);
        set_err(err, err_len, "%s: cannot read tensor '%s'; the file may be truncated", f->path, t->name);
        return NULL;
    }
    return buf;
}

static int decode_plain(bcr_file *f, size_t idx, float *out, char *err, size_t err_len) {
    const stored_t *t = &f->stored[idx];
    uint64_t n = t->numel, k;
    unsigned char *b = read_stored(f, idx, err, err_len);
    const char *d = t->dtype;
    if (!b) return -1;
    for (k = 0; k < n; k++) {
        if (!strcmp(d, "F32")) out[k] = f32_of(le32(b + 4 * k));
        else if (!strcmp(d, "F16")) out[k] = bcr_half_to_float(le16(b + 2 * k));
        else if (!strcmp(d, "BF16")) out[k] = f32_of((uint32_t)le16(b + 2 * k) << 16);
        else if (!strcmp(d, "F64")) {
            uint64_t bits = le64(b + 8 * k);
            double v;
            memcpy(&v, &bits, sizeof(v));
            out[k] = (float)v;
        } else if (!strcmp(d, "I64")) out[k] = (float)(int64_t)le64(b + 8 * k);
        else if (!strcmp(d, "I32")) out[k] = (float)(int32_t)le32(b + 4 * k);
        else if (!strcmp(d, "I16")) out[k] = (float)(int16_t)le16(b + 2 * k);
        else if (!strcmp(d, "I8")) out[k] = (float)(signed char)b[k];
        else out[k] = (float)b[k]; /* U8, BOOL */
    }
    free(b);
    return 0;
}

/* One element's integer level before scaling, per SPEC.md's table; -1000 marks a reserved/corrupt code. */
static int level_of(const packed_t *p, const unsigned char *row, int64_t c) {
    const char *s = p->scheme;
    if (!strcmp(s, "ternary")) {
        if (!strcmp(p->packing, "base3")) {
            static const int pow3[5] = {1, 3, 9, 27, 81};
            unsigned byte = row[c / 5];
            if (byte > 242) return -1000;
            return (int)((byte / (unsigned)pow3[c % 5]) % 3u) - 1;
        } else {
            int code = (row[c / 4] >> (2 * (c % 4))) & 3;
            return code == 0 ? -1000 : code - 2;
        }
    }
    if (!strcmp(s, "binary")) return ((row[c / 8] >> (c % 8)) & 1) ? 1 : -1;
    if (!strcmp(s, "int8")) return (signed char)row[c];
    if (!strcmp(s, "uint4")) return (row[c / 2] >> (4 * (c % 2))) & 15;
    return (row[c / 4] >> (2 * (c % 4))) & 3; /* uint2 */
}

/* The stored values every decoded element depends on, checked before any is used: finite scales, zero points
 * within the scheme's levels, outlier indices inside the weight and strictly increasing. */
static int check_values(bcr_file *f, const packed_t *p, const unsigned char *scale_b, const unsigned char *zero,
                        const unsigned char *oidx, char *err, size_t err_len) {
    const stored_t *s = &f->stored[p->part[PART_SCALE]];
    uint64_t k;
    for (k = 0; k < s->numel; k++) {
        if ((le32(scale_b + 4 * k) & 0x7F800000u) == 0x7F800000u) {
            set_err(err, err_len, "%s: tensor '%s': scale %llu is NaN or infinite; the file is corrupt",
                    f->path, p->name, (unsigned long long)k);
            return -1;
        }
    }
    if (zero) {
        const unsigned max_zero = !strcmp(p->scheme, "uint4") ? 15u : 3u;
        for (k = 0; k < f->stored[p->part[PART_ZERO]].numel; k++) {
            if (zero[k] > max_zero) {
                set_err(err, err_len, "%s: tensor '%s': zero point %llu is %u, above the %s maximum %u; the file is corrupt",
                        f->path, p->name, (unsigned long long)k, zero[k], p->scheme, max_zero);
                return -1;
            }
        }
    }
    for (k = 0; k < (uint64_t)p->n_outliers; k++) {
        int64_t at = (int64_t)le64(oidx + 8 * k);
        if (at < 0 || (uint64_t)at >= p->numel) {
            set_err(err, err_len, "%s: tensor '%s': outlier index %lld falls outside the weight; the file is corrupt",
                    f->path, p->name, (long long)at);
            return -1;
        }
        if (k && at <= (int64_t)le64(oidx + 8 * (k - 1))) {
            set_err(err, err_len, "%s: tensor '%s': outlier indices must increase strictly, but index %llu is %lld after %lld; the file is corrupt",
                    f->path, p->name, (unsigned long long)k, (long long)at, (long long)le64(oidx + 8 * (k - 1)));
            return -1;
        }
    }
    return 0;
}

static int decode_packed(bcr_file *f, const packed_t *p, float *out, char *err, size_t err_len) {
    unsigned char *codes = NULL, *scale_b = NULL, *zero = NULL, *oidx = NULL, *oval = NULL;
    int64_t r, c, k;
    int is_group = !strcmp(p->granularity, "group"), is_channel = !strcmp(p->granularity, "channel");
    int asym = !strcmp(p->scheme, "uint4") || !strcmp(p->scheme, "uint2");
    int ternary = !strcmp(p->scheme, "ternary");
    int rc = -1;

    /* every index below is bounded by the part shapes checked against the spec when the file was opened */
    codes = read_stored(f, (size_t)p->part[PART_CODES], err, err_len);
    scale_b = codes ? read_stored(f, (size_t)p->part[PART_SCALE], err, err_len) : NULL;
    if (!scale_b) goto done;
    if (asym && !(zero = read_stored(f, (size_t)p->part[PART_ZERO], err, err_len))) goto done;
    if (p->n_outliers && (!(oidx = read_stored(f, (size_t)p->part[PART_OIDX], err, err_len)) ||
                          !(oval = read_stored(f, (size_t)p->part[PART_OVAL], err, err_len))))
        goto done;
    if (check_values(f, p, scale_b, zero, oidx, err, err_len)) goto done;
    for (r = 0; r < p->out; r++) {
        const unsigned char *row = codes + r * p->row_bytes;
        for (c = 0; c < p->in; c++) {
            int64_t g = is_group ? c / p->group_size : 0;
            int64_t si = is_group ? r * p->n_groups + g : (is_channel ? r : 0);
            float scale = f32_of(le32(scale_b + 4 * si));
            int level = level_of(p, row, c);
            float v;
            if (level == -1000) {
                set_err(err, err_len, "%s: tensor '%s': reserved code at row %lld column %lld; the file is corrupt",
                        f->path, p->name, (long long)r, (long long)c);
                goto done;
            }
            /* float32 throughout, in the reference's order: (level - zero) * scale */
            v = (float)level;
            if (asym) v = v - (float)zero[r * p->n_groups + g];
            out[r * p->in + c] = v * scale;
        }
    }
    for (k = 0; k < p->n_outliers; k++) {
        int64_t at = (int64_t)le64(oidx + 8 * k);
        /* ternary stores a zero trit under each outlier, so "replace" and "add as a sparse correction" (both
         * allowed by the spec) agree; anything else would decode differently in different readers */
        if (ternary && level_of(p, codes + (at / p->in) * p->row_bytes, at % p->in) != 0) {
            set_err(err, err_len, "%s: tensor '%s': a nonzero code under outlier %lld (row %lld, column %lld); the file is corrupt",
                    f->path, p->name, (long long)k, (long long)(at / p->in), (long long)(at % p->in));
            goto done;
        }
        out[at] = bcr_half_to_float(le16(oval + 2 * k)); /* outliers replace the decoded value */
    }
    rc = 0;
done:
    free(codes);
    free(scale_b);
    free(zero);
    free(oidx);
    free(oval);
    return rc;
}

int bcr_decode(bcr_file *f, const char *name, float **values, size_t *n_out, char *err, size_t err_len) {
    const logical_t *l = find_logical(f, name);
    uint64_t n;
    float *out;
    int rc;
    *values = NULL;
    *n_out = 0;
    if (!l) {
        set_err(err, err_len, "%s: no tensor named '%s' (list the tensors by running the reader on the file alone)", f->path, name);
        return -1;
    }
    n = l->kind == BCR_PLAIN ? f->stored[l->index].numel : f->packed[l->index].numel;
    if (n > ((size_t)-1) / sizeof(float)) {
        set_err(err, err_len, "%s: tensor '%s' is too large to decode on this machine", f->path, name);
        return -1;
    }
    out = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!out) { set_err(err, err_len, "%s: out of memory decoding '%s'", f->path, name); return -1; }
    rc = l->kind == BCR_PLAIN ? decode_plain(f, l->index, out, err, err_len)
                              : decode_packed(f, &f->packed[l->index], out, err, err_len);
    if (rc) { free(out); return -1; }
    *values = out;
    *n_out = (size_t)n;
    return 0;
}
