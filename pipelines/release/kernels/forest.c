/* Scores a tree ensemble of scikit-learn's DecisionTrees (RandomForest / ExtraTrees, one output;
 * GradientBoosting) whose trees are embedded in this library as flat arrays
 * (release/forest_kernel.py `forest_blob` writes them; the assembler's .incbin puts them here, so
 * the library's digest covers the trees too).
 *
 * Layout (little-endian, every section padded to 8 bytes):
 *   header   char magic[8] "SKFOREST"; int32 version, kind, n_trees, n_features, n_outputs,
 *            width; int64 n_nodes
 *   int64    first node of each tree                 [n_trees]
 *   int32    iterations of each tree (its depth)     [n_trees]
 *   int32    first output column of each tree        [n_trees]
 *   float64  scale of each tree's values             [n_trees]
 *   node     {float32 threshold; int32 feature; int32 left}  [n_nodes]
 *   float64  the node's values                       [n_nodes * width]
 * kind 0 (forest): width n_outputs, column 0, scale 1; kind 1 (gradient boosting): width 1, the
 * tree's class column, scale the learning rate. The caller starts and finishes the sums (kind 0:
 * zeros, then / n_trees; kind 1: scikit-learn's initial raw predictions, then its link).
 *
 * Nodes are in breadth-first order per tree, a node's children side by side: the walk goes to
 * `left + !(x[feature] <= threshold)`, with no branch. A leaf points at itself with an infinite
 * threshold, so every row takes exactly `depth` steps and stops at its leaf. Thresholds are the
 * largest float32 not above scikit-learn's float64 one: for a float32 x that compares the same.
 * NaN is not handled here (scikit-learn sends it by the node's missing_go_to_left); the caller
 * never passes it.
 *
 * Each row's outputs get `scale * value` added in tree order, in double (scale 1 is exact):
 * scikit-learn does the same sums (its forest from zero, then / n_trees; its gradient boosting
 * `out[i, k] += scale * value`, stage by stage), so the answers are bit for bit scikit-learn's.
 * Built without FMA contraction (-ffp-contract=off), as scikit-learn's multiply-then-add.
 *
 * Rows are scored a block at a time, tree by tree, so a tree stays in cache while it sees the
 * whole block; LANES rows walk a tree together, so their independent loads overlap.
 */
#include <stdint.h>
#include <string.h>

#define FOREST_VERSION 1
#ifndef LANES
#define LANES 8 /* rows walking a tree together */
#endif
#define EXPORT __attribute__((visibility("default")))

typedef struct {
    float threshold;
    int32_t feature;
    int32_t left;
} node_t;

typedef struct {
    char magic[8];
    int32_t version, kind, n_trees, n_features, n_outputs, width;
    int64_t n_nodes;
} header_t;

extern const unsigned char forest_blob[] __attribute__((visibility("hidden")));
__asm__(
    ".section .rodata\n"
    ".balign 64\n"
    ".globl forest_blob\n"
    ".hidden forest_blob\n"
    ".type forest_blob, @object\n"
    "forest_blob:\n"
    ".incbin \"forest.bin\"\n"
    ".previous\n");

static size_t padded(size_t bytes) { return (bytes + 7) & ~(size_t)7; }

typedef struct {
    const header_t *head;
    const int64_t *first;
    const int32_t *depth;
    const int32_t *column;
    const double *scale;
    const node_t *nodes;
    const double *values;
} forest_t;

static forest_t forest(void) {
    forest_t f;
    const unsigned char *at = forest_blob;
    f.head = (const header_t *)at;
    at += padded(sizeof(header_t));
    f.first = (const int64_t *)at;
    at += padded(sizeof(int64_t) * (size_t)f.head->n_trees);
    f.depth = (const int32_t *)at;
    at += padded(sizeof(int32_t) * (size_t)f.head->n_trees);
    f.column = (const int32_t *)at;
    at += padded(sizeof(int32_t) * (size_t)f.head->n_trees);
    f.scale = (const double *)at;
    at += padded(sizeof(double) * (size_t)f.head->n_trees);
    f.nodes = (const node_t *)at;
    at += padded(sizeof(node_t) * (size_t)f.head->n_nodes);
    f.values = (const double *)at;
    return f;
}

/* version, kind, n_trees, n_features, n_outputs into shape[0..4]; 0, or -1 if the data is not
 * ours. */
EXPORT int forest_kernel_shape(int32_t *shape) {
    const header_t *head = (const header_t *)forest_blob;
    if (memcmp(head->magic, "SKFOREST", 8) != 0) return -1;
    shape[0] = head->version;
    shape[1] = head->kind;
    shape[2] = head->n_trees;
    shape[3] = head->n_features;
    shape[4] = head->n_outputs;
    return head->version == FOREST_VERSION ? 0 : -1;
}

static void walk_lanes(const node_t *nodes, const double *values, int32_t depth, int32_t width,
                       double scale, const float *x, int64_t n_features, double *out, int32_t k) {
    int32_t at[LANES] = {0};
    for (int32_t d = 0; d < depth; d++) {
#pragma GCC unroll 16
        for (int l = 0; l < LANES; l++) {
            const node_t *nd = nodes + at[l];
            at[l] = nd->left + !(x[l * n_features + nd->feature] <= nd->threshold);
        }
    }
    for (int l = 0; l < LANES; l++) {
        const double *v = values + (int64_t)at[l] * width;
        double *o = out + (int64_t)l * k;
        for (int32_t c = 0; c < width; c++) o[c] += scale * v[c];
    }
}

static void walk_one(const node_t *nodes, const double *values, int32_t depth, int32_t width,
                     double scale, const float *x, double *out) {
    int32_t at = 0;
    for (int32_t d = 0; d < depth; d++) {
        const node_t *nd = nodes + at;
        at = nd->left + !(x[nd->feature] <= nd->threshold);
    }
    const double *v = values + (int64_t)at * width;
    for (int32_t c = 0; c < width; c++) out[c] += scale * v[c];
}

/* Adds each row's per-tree outputs, in tree order, to out (n_rows * n_outputs doubles, which the
 * caller starts). x is n_rows * n_features float32, row-major. block_rows: rows per block (0:
 * a default). 0, or -1 if n_features is not the forest's. */
EXPORT int forest_kernel_score(const float *x, int64_t n_rows, int32_t n_features, double *out,
                        int64_t block_rows) {
    forest_t f = forest();
    const int32_t k = f.head->n_outputs, width = f.head->width;
    if (n_features != f.head->n_features) return -1;
    if (block_rows <= 0) block_rows = 512;
    for (int64_t start = 0; start < n_rows; start += block_rows) {
        int64_t rows = n_rows - start < block_rows ? n_rows - start : block_rows;
        const float *xb = x + start * n_features;
        double *ob = out + start * k;
        for (int32_t t = 0; t < f.head->n_trees; t++) {
            const node_t *nodes = f.nodes + f.first[t];
            const double *values = f.values + f.first[t] * width;
            const int32_t depth = f.depth[t];
            const double scale = f.scale[t];
            double *oc = ob + f.column[t];
            int64_t r = 0;
            for (; r + LANES <= rows; r += LANES)
                walk_lanes(nodes, values, depth, width, scale, xb + r * n_features, n_features,
                           oc + r * k, k);
            for (; r < rows; r++)
                walk_one(nodes, values, depth, width, scale, xb + r * n_features, oc + r * k);
        }
    }
    return 0;
}
