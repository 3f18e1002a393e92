/* bitconv-read: a tiny command line over bitconv_reader.
 *
 *   bitconv-read FILE                     list the tensors (name, kind, shape, scheme)
 *   bitconv-read FILE TENSOR              print the shape, then every value on its own line (%.9g: exact float32)
 *   bitconv-read FILE TENSOR -o OUT.f32   write the values as raw little-endian float32
 *
 * Build: cc -O2 -std=c99 -o bitconv-read bitconv_read.c bitconv_reader.c
 * Exit codes: 0 success, 1 a problem with the file or tensor (one line on stderr), 2 usage.
 */
#include "bitconv_reader.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_shape(FILE *out, const bcr_info *info) {
    int k;
    fputc('[', out);
    for (k = 0; k < info->ndim; k++) fprintf(out, k ? ", %lld" : "%lld", (long long)info->shape[k]);
    fputc(']', out);
}

static int list_tensors(bcr_file *f) {
    size_t k;
    for (k = 0; k < bcr_count(f); k++) {
        bcr_info info;
        bcr_info_at(f, k, &info);
        printf("%s\t%s\t", info.name, info.kind == BCR_PACKED ? "packed" : "plain");
        print_shape(stdout, &info);
        if (info.kind == BCR_PACKED) {
            printf("\t%s %s %s", info.scheme, info.packing, info.granularity);
            if (info.group_size) printf(":%lld", (long long)info.group_size);
            if (info.n_outliers) printf(" outliers=%lld", (long long)info.n_outliers);
            if (strcmp(info.layout, "linear")) printf(" layout=%s", info.layout);
        } else {
            printf("\t%s", info.dtype);
        }
        putchar('\n');
    }
    return 0;
}

static int write_f32(const char *path, const float *v, size_t n) {
    FILE *out = fopen(path, "wb");
    size_t k;
    if (!out) return -1;
    for (k = 0; k < n; k++) { /* explicit little-endian bytes, whatever the host */
        unsigned char b[4];
        unsigned long bits;
        unsigned int u;
        memcpy(&u, &v[k], 4);
        bits = u;
        b[0] = (unsigned char)(bits & 0xFF);
        b[1] = (unsigned char)((bits >> 8) & 0xFF);
        b[2] = (unsigned char)((bits >> 16) & 0xFF);
        b[3] = (unsigned char)((bits >> 24) & 0xFF);
        if (fwrite(b, 1, 4, out) != 4) { fclose(out); return -1; }
    }
    return fclose(out) ? -1 : 0;
}

int main(int argc, char **argv) {
    char err[BCR_ERR_LEN];
    bcr_file *f;
    bcr_info info;
    float *values;
    size_t n, k;
    const char *out_path = NULL;
    int rc = 0;

    if (argc == 5 && !strcmp(argv[3], "-o")) out_path = argv[4];
    if (argc < 2 || argc == 4 || argc > 5 || (argc == 5 && !out_path) || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(stderr, "usage: bitconv-read FILE [TENSOR [-o OUT.f32]]\n"
                        "  FILE alone lists the tensors; with TENSOR prints its shape and values, or writes them\n"
                        "  to OUT.f32 as raw little-endian float32.\n");
        return 2;
    }
    if (bcr_open(argv[1], &f, err, sizeof(err))) {
        fprintf(stderr, "bitconv-read: %s\n", err);
        return 1;
    }
    if (argc == 2) {
        rc = list_tensors(f);
        bcr_close(f);
        return rc;
    }
    if (bcr_find(f, argv[2], &info, err, sizeof(err)) || bcr_decode(f, argv[2], &values, &n, err, sizeof(err))) {
        fprintf(stderr, "bitconv-read: %s\n", err);
        bcr_close(f);
        return 1;
    }
    if (out_path) {
        if (write_f32(out_path, values, n)) {
            fprintf(stderr, "bitconv-read: cannot write %s; check the folder exists and is writable\n", out_path);
            rc = 1;
        }
    } else {
        printf("%s ", info.name);
        print_shape(stdout, &info);
        putchar('\n');
        for (k = 0; k < n; k++) printf("%.9g\n", (double)values[k]);
    }
    free(values);
    bcr_close(f);
    return rc;
}
