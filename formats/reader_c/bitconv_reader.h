/* bitconv_reader: a dependency-free C99 reader for bitconv packed safetensors files (formats/SPEC.md, v1).
 *
 * It opens one .safetensors file, parses the header (a small JSON parser of its own, enough for
 * safetensors headers and the `bitconv.tensors` metadata string), and decodes any tensor to float32:
 * quantized weights by their logical name ("X.weight"; ternary 2bit / base3, binary, int8, uint4, uint2,
 * tensor / channel / group scales, fp16 outliers) and plain tensors (F32, F16, BF16, F64, I8..I64, U8, BOOL)
 * by their stored name. Decoding follows the spec's formulas in float32, so the result equals the Python
 * reference (bitconv.schemes.dequantize) bit for bit.
 *
 * Every function that can fail returns 0 on success or -1 with a one-line message in `err`. Files are untrusted:
 * bcr_open refuses any header that breaks formats/SPEC.md "Validation (what every reader must refuse)", and
 * bcr_decode refuses stored values that break it (NaN scales, reserved codes, bad outlier indices, ...).
 * The file is read with stdio; tensors are read on demand, so large files are not loaded whole.
 */
#ifndef BITCONV_READER_H
#define BITCONV_READER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BCR_FORMAT_NAME "bitconv-packed"
#define BCR_FORMAT_VERSION 1
#define BCR_MAX_DIMS 8
#define BCR_ERR_LEN 512

typedef struct bcr_file bcr_file;

typedef enum { BCR_PLAIN = 0, BCR_PACKED = 1 } bcr_kind;

/* What a tensor is, without decoding it. For packed tensors the strings are the spec entry's values. */
typedef struct {
    const char *name;        /* logical name (packed) or stored name (plain) */
    bcr_kind kind;
    int ndim;
    int64_t shape[BCR_MAX_DIMS];
    const char *dtype;       /* plain: stored safetensors dtype; packed: the source dtype, for information */
    const char *scheme;      /* packed only: ternary, binary, int8, uint4, uint2 */
    const char *packing;     /* packed only: 2bit or base3 */
    const char *granularity; /* packed only: tensor, channel or group */
    int64_t group_size;      /* packed + group only, else 0 */
    int64_t n_outliers;      /* packed only */
    const char *layout;      /* packed only: linear or conv1d */
} bcr_info;

/* Opens `path`, reads and checks the header and the bitconv metadata (format name and version). */
int bcr_open(const char *path, bcr_file **out, char *err, size_t err_len);
void bcr_close(bcr_file *f);

/* Logical tensors: every packed weight once (not its .qcodes/.qscale parts) plus every plain tensor,
 * in header order of their first stored part. */
size_t bcr_count(const bcr_file *f);
int bcr_info_at(const bcr_file *f, size_t i, bcr_info *info);
int bcr_find(const bcr_file *f, const char *name, bcr_info *info, char *err, size_t err_len);

/* Decodes tensor `name` into a newly malloc'ed float32 array (row-major, *n_out elements); free() it. */
int bcr_decode(bcr_file *f, const char *name, float **values, size_t *n_out, char *err, size_t err_len);

/* IEEE half -> float, exact (subnormals, infinities and NaN included). */
float bcr_half_to_float(uint16_t h);

#ifdef __cplusplus
}
#endif

#endif
