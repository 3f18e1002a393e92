/* bitconv_reader.c: see bitconv_reader.h. C99, nothing but the C standard library.
 *
 * Layout of this file: a minimal JSON parser (what safetensors headers need: objects, arrays, strings
 * with every escape, integers and numbers, true/false/null), then the safetensors container (header,
 * stored tensors, bounds checks), then the bitconv metadata (packed weight entries and the stored tensors
 * each one owns), then the decoders, which follow formats/SPEC.md "Decoding, per scheme" line by line.
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
#define bcr_fseek _fseeki64
#else
#define bcr_fseek fseeko
#endif

/* A header bigger than this is not a safetensors header but a corrupt length (the Python reader agrees). */
#define MAX_HEADER_BYTES 100000000ULL
#define MAX_JSON_DEPTH 64

static void set_err(char *err, size_t err_len, const char *fmt, ...) {
    va_list ap;
    if (!err || !err_len) return;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------------------------------ JSON */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jval {
    jtype type;
    int boolean;
    int is_int;       /* J_NUM written as an integer that fits int64 */
    int64_t i;
    double d;
    char *str;        /* J_STR: NUL-terminated UTF-8 (a string holding \u0000 ends early, never in our keys) */
    size_t n;         /* J_ARR / J_OBJ: number of items */
    char **keys;      /* J_OBJ: keys[i] names items[i] */
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

/* Parses a string starting at the opening quote; the decoded text is never longer than the source. */
static int jparse_string(jparser *ps, char **out) {
    const char *s = ps->p + 1;
    const char *q = s;
    char *buf, *o;
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
            }
            o += put_utf8(o, cp);
            break;
        }
        default: free(buf); return jfail(ps, "unknown escape in string");
        }
    }
    *o = '\0';
    ps->p = q + 1;
    *out = buf;
    return 0;
}

static int jparse_number(jparser *ps, jval *v) {
    const char *s = ps->p;
    const char *q = s;
    int integral = 1;
    char tmp[64];
    if (q < ps->end && *q == '-') q++;
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
    if ((size_t)(q - s) >= sizeof(tmp)) return jfail(ps, "number too long");
    memcpy(tmp, s, (size_t)(q - s));
    tmp[q - s] = '\0';
    v->type = J_NUM;
    v->d = strtod(tmp, NULL);
    if (integral && (q - s) <= 18) { /* 18 digits always fit int64; offsets and shapes are integers */
        v->is_int = 1;
        v->i = strtoll(tmp, NULL, 10);
    }
    ps->p = q;
    return 0;
}

static int jparse_value(jparser *ps, jval *v, int depth);

static int jappend(jval *v, size_t *cap, char *key) {
    if (v->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        jval *items = (jval *)realloc(v->items, ncap * sizeof(jval));
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
            if (jparse_string(ps, &key)) return -1;
            jskip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') { free(key); return jfail(ps, "expected ':'"); }
            ps->p++;
        }
        if (jappend(v, &cap, key)) { free(key); return jfail(ps, "out of memory"); }
        if (jparse_value(ps, &v->items[v->n - 1], depth + 1)) return -1;
        jskip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == close) { ps->p++; return 0; }
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
    case '"': v->type = J_STR; return jparse_string(ps, &v->str);
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

/* ------------------------------------------------------------------------------------- the container */

typedef struct {
    const char *name;  /* points into the header tree */
    const char *dtype;
    int ndim;
    int64_t shape[BCR_MAX_DIMS];
    uint64_t begin, end; /* data offsets relative to the data start */
} stored_t;

/* Suffixes of the stored tensors of one packed weight (format.py SUFFIX_*). */
enum { PART_CODES, PART_SCALE, PART_ZERO, PART_OIDX, PART_OVAL, N_PARTS };
static const char *const PART_SUFFIX[N_PARTS] = {".qcodes", ".qscale", ".qzero", ".outlier_idx", ".outlier_val"};

typedef struct {
    const char *name; /* logical name, points into the metadata tree */
    const char *scheme, *packing, *granularity, *layout, *dtype;
    int64_t out, in, group_size, n_groups, n_outliers;
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

static int64_t numel(const int64_t *shape, int ndim) {
    int64_t n = 1;
    int k;
    for (k = 0; k < ndim; k++) n *= shape[k];
    return n;
}

static long find_stored(const bcr_file *f, const char *name) {
    size_t k;
    for (k = 0; k < f->n_stored; k++)
        if (!strcmp(f->stored[k].name, name)) return (long)k;
    return -1;
}

static int read_shape(const jval *arr, int64_t *shape, int *ndim) {
    size_t k;
    if (!arr || arr->type != J_ARR || arr->n > BCR_MAX_DIMS) return -1;
    for (k = 0; k < arr->n; k++) {
        if (arr->items[k].type != J_NUM || !arr->items[k].is_int || arr->items[k].i < 0) return -1;
        shape[k] = arr->items[k].i;
    }
    *ndim = (int)arr->n;
    return 0;
}

static int parse_stored(bcr_file *f, char *err, size_t err_len) {
    const jval *h = &f->header;
    size_t k;
    f->stored = (stored_t *)calloc(h->n ? h->n : 1, sizeof(stored_t));
    if (!f->stored) { set_err(err, err_len, "%s: out of memory", f->path); return -1; }
    for (k = 0; k < h->n; k++) {
        const jval *e = &h->items[k];
        const jval *offs;
        stored_t *t;
        int size;
        if (!strcmp(h->keys[k], "__metadata__")) continue;
        t = &f->stored[f->n_stored];
        t->name = h->keys[k];
        t->dtype = jget_str(e, "dtype");
        offs = jget(e, "data_offsets");
        if (!t->dtype || read_shape(jget(e, "shape"), t->shape, &t->ndim) || !offs || offs->type != J_ARR ||
            offs->n != 2 || !offs->items[0].is_int || !offs->items[1].is_int || offs->items[0].i < 0 ||
            offs->items[1].i < offs->items[0].i) {
            set_err(err, err_len, "%s: tensor '%s' has a malformed header entry; the file is corrupt", f->path, t->name);
            return -1;
        }
        size = dtype_size(t->dtype);
        if (!size) {
            set_err(err, err_len, "%s: tensor '%s' has unsupported dtype %s", f->path, t->name, t->dtype);
            return -1;
        }
        t->begin = (uint64_t)offs->items[0].i;
        t->end = (uint64_t)offs->items[1].i;
        if (t->end > f->data_size) {
            set_err(err, err_len, "%s: truncated (tensor '%s' ends at data byte %llu of %llu); re-download or re-convert it",
                    f->path, t->name, (unsigned long long)t->end, (unsigned long long)f->data_size);
            return -1;
        }
        if ((uint64_t)numel(t->shape, t->ndim) * (uint64_t)size != t->end - t->begin) {
            set_err(err, err_len, "%s: tensor '%s' is %llu bytes, its dtype and shape need %llu; the file is corrupt",
                    f->path, t->name, (unsigned long long)(t->end - t->begin),
                    (unsigned long long)numel(t->shape, t->ndim) * (unsigned long long)size);
            return -1;
        }
        f->n_stored++;
    }
    return 0;
}

/* ----------------------------------------------------------------------------------- bitconv metadata */

static int one_of(const char *s, const char *const *options, size_t n) {
    size_t k;
    if (!s) return 0;
    for (k = 0; k < n; k++)
        if (!strcmp(s, options[k])) return 1;
    return 0;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Bytes per row of the codes tensor, as SPEC.md's table says. */
static int64_t code_row_bytes(const packed_t *p) {
    if (!strcmp(p->scheme, "ternary")) return !strcmp(p->packing, "base3") ? ceil_div(p->in, 5) : ceil_div(p->in, 4);
    if (!strcmp(p->scheme, "binary")) return ceil_div(p->in, 8);
    if (!strcmp(p->scheme, "int8")) return p->in;
    if (!strcmp(p->scheme, "uint4")) return ceil_div(p->in, 2);
    return ceil_div(p->in, 4); /* uint2 */
}

static int check_part(bcr_file *f, packed_t *p, int part, const char *dtype, int ndim, const int64_t *shape,
                      char *err, size_t err_len) {
    char name[1024];
    long idx;
    const stored_t *t;
    int k, same;
    snprintf(name, sizeof(name), "%s%s", p->name, PART_SUFFIX[part]);
    idx = find_stored(f, name);
    if (idx < 0) {
        set_err(err, err_len, "%s: tensor '%s' is missing (needed by packed weight '%s'); the file is corrupt",
                f->path, name, p->name);
        return -1;
    }
    t = &f->stored[idx];
    same = !strcmp(t->dtype, dtype) && t->ndim == ndim;
    for (k = 0; same && k < ndim; k++) same = t->shape[k] == shape[k];
    if (!same) {
        set_err(err, err_len, "%s: tensor '%s' has dtype %s and the wrong shape or dtype for its spec (needs %s); the file is corrupt",
                f->path, name, t->dtype, dtype);
        return -1;
    }
    p->part[part] = idx;
    return 0;
}

static int parse_packed_entry(bcr_file *f, packed_t *p, const char *name, const jval *e, char *err, size_t err_len) {
    static const char *const schemes[] = {"ternary", "binary", "int8", "uint4", "uint2"};
    static const char *const grans[] = {"tensor", "channel", "group"};
    static const char *const packings[] = {"2bit", "base3"};
    int64_t shape[BCR_MAX_DIMS];
    int ndim, k;
    const jval *gs, *no;
    int64_t dims[2];
    const char *codes_dtype;

    p->name = name;
    for (k = 0; k < N_PARTS; k++) p->part[k] = -1;
    p->scheme = jget_str(e, "scheme");
    p->packing = jget_str(e, "packing");
    p->granularity = jget_str(e, "granularity");
    p->layout = jget_str(e, "layout");
    p->dtype = jget_str(e, "dtype");
    if (!p->packing) p->packing = "2bit";
    if (!p->layout) p->layout = "linear";
    if (!p->dtype) p->dtype = "float32";
    if (!one_of(p->scheme, schemes, 5)) {
        set_err(err, err_len, "%s: tensor '%s': unknown scheme '%s' (this reader knows ternary, binary, int8, uint4, uint2)",
                f->path, name, p->scheme ? p->scheme : "(missing)");
        return -1;
    }
    if (!one_of(p->granularity, grans, 3) || !one_of(p->packing, packings, 2)) {
        set_err(err, err_len, "%s: tensor '%s': unknown granularity or packing in its bitconv.tensors entry", f->path, name);
        return -1;
    }
    if (read_shape(jget(e, "shape"), shape, &ndim) || ndim != 2) {
        set_err(err, err_len, "%s: tensor '%s': its bitconv.tensors entry needs a 2-D shape [out, in]", f->path, name);
        return -1;
    }
    p->out = shape[0];
    p->in = shape[1];
    gs = jget(e, "group_size");
    p->group_size = gs && gs->type == J_NUM && gs->is_int ? gs->i : 0;
    if (!strcmp(p->granularity, "group") && p->group_size < 1) {
        set_err(err, err_len, "%s: tensor '%s': group granularity without a positive group_size", f->path, name);
        return -1;
    }
    p->n_groups = !strcmp(p->granularity, "group") ? ceil_div(p->in, p->group_size) : 1;
    no = jget(e, "n_outliers");
    p->n_outliers = no && no->type == J_NUM && no->is_int ? no->i : 0;
    if (p->n_outliers < 0 || p->n_outliers > p->out * p->in) {
        set_err(err, err_len, "%s: tensor '%s': n_outliers %lld is out of range", f->path, name, (long long)p->n_outliers);
        return -1;
    }

    codes_dtype = !strcmp(p->scheme, "int8") ? "I8" : "U8";
    dims[0] = p->out;
    dims[1] = code_row_bytes(p);
    if (check_part(f, p, PART_CODES, codes_dtype, 2, dims, err, err_len)) return -1;
    if (!strcmp(p->granularity, "tensor")) {
        dims[0] = 1;
        if (check_part(f, p, PART_SCALE, "F32", 1, dims, err, err_len)) return -1;
    } else if (!strcmp(p->granularity, "channel")) {
        dims[0] = p->out;
        if (check_part(f, p, PART_SCALE, "F32", 1, dims, err, err_len)) return -1;
    } else {
        dims[0] = p->out;
        dims[1] = p->n_groups;
        if (check_part(f, p, PART_SCALE, "F32", 2, dims, err, err_len)) return -1;
    }
    if (!strcmp(p->scheme, "uint4") || !strcmp(p->scheme, "uint2")) {
        dims[0] = p->out;
        dims[1] = p->n_groups;
        if (check_part(f, p, PART_ZERO, "U8", 2, dims, err, err_len)) return -1;
    }
    if (p->n_outliers) {
        dims[0] = p->n_outliers;
        if (check_part(f, p, PART_OIDX, "I64", 1, dims, err, err_len)) return -1;
        if (check_part(f, p, PART_OVAL, "F16", 1, dims, err, err_len)) return -1;
    }
    return 0;
}

static int parse_bitconv_metadata(bcr_file *f, char *err, size_t err_len) {
    const jval *meta = jget(&f->header, "__metadata__");
    const char *fmt = jget_str(meta, "bitconv.format");
    const char *ver = jget_str(meta, "bitconv.format_version");
    const char *tensors = jget_str(meta, "bitconv.tensors");
    char sub[BCR_ERR_LEN];
    size_t k;
    if (!fmt || strcmp(fmt, BCR_FORMAT_NAME)) {
        set_err(err, err_len, "%s: not a bitconv packed file (no 'bitconv.format' metadata)", f->path);
        return -1;
    }
    if (!ver || atoi(ver) != BCR_FORMAT_VERSION) {
        set_err(err, err_len, "%s: format version %s, this reader reads version %d; use a newer reader",
                f->path, ver ? ver : "(missing)", BCR_FORMAT_VERSION);
        return -1;
    }
    if (jparse(tensors ? tensors : "{}", tensors ? strlen(tensors) : 2, &f->tensors_meta, sub, sizeof(sub)) ||
        f->tensors_meta.type != J_OBJ) {
        set_err(err, err_len, "%s: the 'bitconv.tensors' metadata is not a JSON object (%s); the file is corrupt",
                f->path, tensors ? sub : "missing");
        return -1;
    }
    f->packed = (packed_t *)calloc(f->tensors_meta.n ? f->tensors_meta.n : 1, sizeof(packed_t));
    if (!f->packed) { set_err(err, err_len, "%s: out of memory", f->path); return -1; }
    for (k = 0; k < f->tensors_meta.n; k++) {
        if (parse_packed_entry(f, &f->packed[k], f->tensors_meta.keys[k], &f->tensors_meta.items[k], err, err_len)) return -1;
        f->n_packed++;
    }
    return 0;
}

/* The logical list: each packed weight once, at the position of its first stored part, and plain tensors. */
static int build_logical(bcr_file *f, char *err, size_t err_len) {
    size_t k, j;
    int part;
    unsigned char *seen = (unsigned char *)calloc(f->n_packed ? f->n_packed : 1, 1);
    f->logical = (logical_t *)calloc(f->n_stored ? f->n_stored : 1, sizeof(logical_t));
    if (!seen || !f->logical) { free(seen); set_err(err, err_len, "%s: out of memory", f->path); return -1; }
    for (k = 0; k < f->n_stored; k++) {
        long owner = -1;
        for (j = 0; j < f->n_packed && owner < 0; j++)
            for (part = 0; part < N_PARTS; part++)
                if (f->packed[j].part[part] == (long)k) { owner = (long)j; break; }
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

int bcr_open(const char *path, bcr_file **out, char *err, size_t err_len) {
    bcr_file *f;
    unsigned char len_bytes[8];
    uint64_t header_len = 0, file_size;
    char *text = NULL;
    char sub[BCR_ERR_LEN];
    int k;

    *out = NULL;
    f = (bcr_file *)calloc(1, sizeof(bcr_file));
    if (!f) { set_err(err, err_len, "%s: out of memory", path); return -1; }
    f->path = (char *)malloc(strlen(path) + 1);
    if (!f->path) { free(f); set_err(err, err_len, "%s: out of memory", path); return -1; }
    strcpy(f->path, path);
    f->fp = fopen(path, "rb");
    if (!f->fp) { set_err(err, err_len, "%s: cannot open the file; check the path", path); goto fail; }
    if (bcr_fseek(f->fp, 0, SEEK_END)) { set_err(err, err_len, "%s: cannot seek in the file", path); goto fail; }
#if defined(_WIN32)
    file_size = (uint64_t)_ftelli64(f->fp);
#else
    file_size = (uint64_t)ftello(f->fp);
#endif
    rewind(f->fp);
    if (fread(len_bytes, 1, 8, f->fp) != 8) {
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
    if (jparse(text, (size_t)header_len, &f->header, sub, sizeof(sub)) || f->header.type != J_OBJ) {
        set_err(err, err_len, "%s: corrupt safetensors header (%s); re-download or re-convert it", path,
                f->header.type == J_OBJ ? "not a JSON object" : sub);
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

/* Reads the raw bytes of stored tensor `idx` into a new buffer. */
static unsigned char *read_stored(bcr_file *f, size_t idx, char *err, size_t err_len) {
    const stored_t *t = &f->stored[idx];
    size_t n = (size_t)(t->end - t->begin);
    unsigned char *buf = (unsigned char *)malloc(n ? n : 1);
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
    int64_t n = numel(t->shape, t->ndim), k;
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

static int decode_packed(bcr_file *f, const packed_t *p, float *out, char *err, size_t err_len) {
    unsigned char *codes = NULL, *scale_b = NULL, *zero = NULL, *oidx = NULL, *oval = NULL;
    int64_t row_bytes = code_row_bytes(p), r, c, k;
    int is_group = !strcmp(p->granularity, "group"), is_channel = !strcmp(p->granularity, "channel");
    int asym = !strcmp(p->scheme, "uint4") || !strcmp(p->scheme, "uint2");
    int rc = -1;

    codes = read_stored(f, (size_t)p->part[PART_CODES], err, err_len);
    scale_b = codes ? read_stored(f, (size_t)p->part[PART_SCALE], err, err_len) : NULL;
    if (!scale_b) goto done;
    if (asym && !(zero = read_stored(f, (size_t)p->part[PART_ZERO], err, err_len))) goto done;
    for (r = 0; r < p->out; r++) {
        const unsigned char *row = codes + r * row_bytes;
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
    if (p->n_outliers) {
        if (!(oidx = read_stored(f, (size_t)p->part[PART_OIDX], err, err_len)) ||
            !(oval = read_stored(f, (size_t)p->part[PART_OVAL], err, err_len)))
            goto done;
        for (k = 0; k < p->n_outliers; k++) {
            int64_t at = (int64_t)le64(oidx + 8 * k);
            if (at < 0 || at >= p->out * p->in) {
                set_err(err, err_len, "%s: tensor '%s': outlier index %lld falls outside the weight; the file is corrupt",
                        f->path, p->name, (long long)at);
                goto done;
            }
            out[at] = bcr_half_to_float(le16(oval + 2 * k)); /* outliers replace the decoded value */
        }
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
    int64_t n;
    float *out;
    int rc;
    *values = NULL;
    *n_out = 0;
    if (!l) {
        set_err(err, err_len, "%s: no tensor named '%s' (list the tensors by running the reader on the file alone)", f->path, name);
        return -1;
    }
    if (l->kind == BCR_PLAIN) n = numel(f->stored[l->index].shape, f->stored[l->index].ndim);
    else n = f->packed[l->index].out * f->packed[l->index].in;
    out = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!out) { set_err(err, err_len, "%s: out of memory decoding '%s'", f->path, name); return -1; }
    rc = l->kind == BCR_PLAIN ? decode_plain(f, l->index, out, err, err_len)
                              : decode_packed(f, &f->packed[l->index], out, err, err_len);
    if (rc) { free(out); return -1; }
    *values = out;
    *n_out = (size_t)n;
    return 0;
}
