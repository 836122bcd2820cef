/* Fused multi-step spiking-neuron kernels for CPU tensors (snnconvert, backend "native").
 *
 * The C twin of runtime/kernels/neurons.py (Triton): one call runs all T steps of one neuron layer. The N neurons
 * of a step are cut into blocks of BLOCK; each block keeps its state (membrane m and cumulative output C, or the
 * running means R_in and R_out) and its per-element θ / b in stack arrays that stay in the L1 cache, reads its
 * input column x[t, block] once per step and writes the emitted value once. Blocks are spread over OpenMP threads.
 *
 * The arithmetic is the reference neurons' (convert/coding/neurons.py: mt_fire, if_fire, _rate_step, _diff_step),
 * operation by operation and in the same order, so results are bit-identical to the torch twins on the CPU:
 *   - levels θ·2^-i (exact power-of-two scaling), cut-offs 0.75·level, walked from the smallest level to the
 *     largest with overwriting selects, never log2;
 *   - divisions by t are IEEE divisions (torch divides by a Python int on the CPU), not reciprocal multiplies;
 *   - built with -ffp-contract=off (no fused multiply-add) and without -ffast-math (signed zeros and NaN kept).
 * The level loop is unrolled for n = 1..8 (one specialised block function per (n, signed, constrained) combination,
 * so the compiler vectorises the element loop); larger n run a generic loop with the same arithmetic.
 *
 * Event counts: when `events` [T] (int64) is given, the number of non-zero emitted values of each step is added to
 * it (the same count as out[t].ne(0).sum(), computed in the loop instead of another pass over out).
 *
 * Pointers: x, out [T, N] contiguous fp32 (the caller converts other dtypes); th_tab [th_k], b_tab [b_k] compact
 * per-element tables: element e reads tab[(e / inner) % k] (see runtime/kernels/common.py, Table); state arrays [N]
 * fp32, read when has_state, written when store_state (never aliased with x or out).
 */
#include <stdint.h>
#include <stdlib.h>

#define BLOCK 512
#define MAX_UNROLLED_LEVELS 8

#define INLINE static inline __attribute__((always_inline))

typedef struct {
    const float *x;      /* [T, N] input */
    float *out;          /* [T, N] emitted values */
    const float *th;     /* [th_k] threshold table */
    int64_t th_inner, th_k;
    const float *b;      /* [b_k] captured-bias table (differential only) */
    int64_t b_inner, b_k;
    const float *s0_in;  /* [N] m (rate) or R_in (differential) at entry */
    const float *s1_in;  /* [N] C (rate) or R_out (differential) at entry */
    float *s0_out;       /* [N] the same after the last step */
    float *s1_out;
    int64_t T, t0, N;
    int n_levels, has_state, store_state;
} Args;

/* tab[(e / inner) % k] for e = start .. start + len - 1, without a division per element */
INLINE void gather(float *restrict dst, const float *restrict tab, int64_t inner, int64_t k, int64_t start,
                   int64_t len) {
    int64_t idx = (start / inner) % k, rem = start % inner;
    for (int64_t j = 0; j < len; ++j) {
        dst[j] = tab[idx];
        if (++rem == inner) {
            rem = 0;
            if (++idx == k) idx = 0;
        }
    }
}

/* mt_fire: at most one event ±θ·2^-i; smallest level first, overwrite (the last write is the largest level) */
INLINE float mt_fire(float m, float c, float th, const int n, const int sgn, const int need_c) {
    float out = 0.0f;
    for (int j = 0; j < n; ++j) {
        const int i = n - 1 - j;
        const float level = th * (1.0f / (float)(1u << (i < 31 ? i : 31)));
        const float cut = level * 0.75f;
        out = (m >= cut) ? level : out;
        if (sgn) {
            int neg = m <= -cut;
            if (need_c) neg = neg & (c >= level);
            out = neg ? -level : out;
        }
    }
    return out;
}

/* if_fire: θ·[m ≥ θ], overwritten by −θ where m ≤ 0 (and C ≥ θ under the constraint) */
INLINE float if_fire(float m, float c, float th, const int sgn, const int need_c) {
    float out = (m >= th) ? th : 0.0f;
    if (sgn) {
        int neg = m <= 0.0f;
        if (need_c) neg = neg & (c >= th);
        out = neg ? -th : out;
    }
    return out;
}

/* _rate_step over T steps: m ← m + x_t; s = fire(m, C); m ← m − s; C ← C + s */
INLINE void rate_block(const Args *a, int64_t start, int64_t len, int64_t *events, const int is_if, const int n,
                       const int sgn, const int need_c) {
    float th[BLOCK], m[BLOCK], c[BLOCK];
    gather(th, a->th, a->th_inner, a->th_k, start, len);
    for (int64_t j = 0; j < len; ++j) {
        if (a->has_state) {
            m[j] = a->s0_in[start + j];
            c[j] = need_c ? a->s1_in[start + j] : 0.0f;
        } else {
            m[j] = is_if ? 0.0f + th[j] * 0.5f : 0.0f;
            c[j] = 0.0f;
        }
    }
    for (int64_t t = 0; t < a->T; ++t) {
        const float *restrict xt = a->x + t * a->N + start;
        float *restrict ot = a->out + t * a->N + start;
        int32_t nonzero = 0;
        for (int64_t j = 0; j < len; ++j) {
            const float mm = m[j] + xt[j];
            const float s = is_if ? if_fire(mm, c[j], th[j], sgn, need_c) : mt_fire(mm, c[j], th[j], n, sgn, need_c);
            m[j] = mm - s;
            if (need_c) c[j] = c[j] + s;
            ot[j] = s;
            nonzero += s != 0.0f;
        }
        if (events) events[t] += nonzero;
    }
    if (a->store_state) {
        for (int64_t j = 0; j < len; ++j) {
            a->s0_out[start + j] = m[j];
            if (need_c) a->s1_out[start + j] = c[j];
        }
    }
}

/* _diff_step over T steps (t = t0+1 … t0+T): u = x − b; R_in' = R_in + u/t; m = t·(R_in' − R_out) (+ θ/2 for
 * IF); C = t·R_out; d = fire(m, C); R_out ← R_out + d/t; R_in ← R_in' */
INLINE void diff_block(const Args *a, int64_t start, int64_t len, int64_t *events, const int is_if, const int n,
                       const int rc) {
    float th[BLOCK], b[BLOCK], r_in[BLOCK], r_out[BLOCK];
    gather(th, a->th, a->th_inner, a->th_k, start, len);
    gather(b, a->b, a->b_inner, a->b_k, start, len);
    for (int64_t j = 0; j < len; ++j) {
        if (a->has_state) {
            r_in[j] = a->s0_in[start + j];
            r_out[j] = a->s1_in[start + j];
        } else {
            r_out[j] = 0.0f;
            r_in[j] = 0.0f + b[j];
        }
    }
    for (int64_t k = 0; k < a->T; ++k) {
        const float t = (float)(a->t0 + k + 1);
        const float *restrict xt = a->x + k * a->N + start;
        float *restrict ot = a->out + k * a->N + start;
        int32_t nonzero = 0;
        for (int64_t j = 0; j < len; ++j) {
            const float u = xt[j] - b[j];
            const float r_in_new = r_in[j] + u / t;
            float m = t * (r_in_new - r_out[j]);
            const float c = t * r_out[j];
            float d;
            if (is_if) {
                m = m + th[j] * 0.5f;
                d = if_fire(m, c, th[j], 1, rc);
            } else {
                d = mt_fire(m, c, th[j], n, 1, rc);
            }
            r_out[j] = r_out[j] + d / t;
            r_in[j] = r_in_new;
            ot[j] = d;
            nonzero += d != 0.0f;
        }
        if (events) events[k] += nonzero;
    }
    if (a->store_state) {
        for (int64_t j = 0; j < len; ++j) {
            a->s0_out[start + j] = r_in[j];
            a->s1_out[start + j] = r_out[j];
        }
    }
}

/* ---- specialisations: constant (n, flags) so that the level loop unrolls and the element loop vectorises ---- */

typedef void (*block_fn)(const Args *, int64_t, int64_t, int64_t *);

#define RATE_FN(NAME, IS_IF, N, SGN, NC) \
    static void NAME(const Args *a, int64_t s, int64_t l, int64_t *e) { rate_block(a, s, l, e, IS_IF, N, SGN, NC); }
#define DIFF_FN(NAME, IS_IF, N, RC) \
    static void NAME(const Args *a, int64_t s, int64_t l, int64_t *e) { diff_block(a, s, l, e, IS_IF, N, RC); }
#define MT_VARIANTS(N)                        \
    RATE_FN(rate_mt##N##_u, 0, N, 0, 0)       \
    RATE_FN(rate_mt##N##_s, 0, N, 1, 0)       \
    RATE_FN(rate_mt##N##_sc, 0, N, 1, 1)      \
    DIFF_FN(diff_mt##N##_id, 0, N, 0)         \
    DIFF_FN(diff_mt##N##_rc, 0, N, 1)

RATE_FN(rate_if_u, 1, 1, 0, 0)
RATE_FN(rate_if_s, 1, 1, 1, 0)
RATE_FN(rate_if_sc, 1, 1, 1, 1)
DIFF_FN(diff_if_id, 1, 1, 0)
DIFF_FN(diff_if_rc, 1, 1, 1)
MT_VARIANTS(1)
MT_VARIANTS(2)
MT_VARIANTS(3)
MT_VARIANTS(4)
MT_VARIANTS(5)
MT_VARIANTS(6)
MT_VARIANTS(7)
MT_VARIANTS(8)
/* n > 8: the same block code with a run-time n */
static void rate_mtn_u(const Args *a, int64_t s, int64_t l, int64_t *e) {
    rate_block(a, s, l, e, 0, a->n_levels, 0, 0);
}
static void rate_mtn_s(const Args *a, int64_t s, int64_t l, int64_t *e) {
    rate_block(a, s, l, e, 0, a->n_levels, 1, 0);
}
static void rate_mtn_sc(const Args *a, int64_t s, int64_t l, int64_t *e) {
    rate_block(a, s, l, e, 0, a->n_levels, 1, 1);
}
static void diff_mtn_id(const Args *a, int64_t s, int64_t l, int64_t *e) {
    diff_block(a, s, l, e, 0, a->n_levels, 0);
}
static void diff_mtn_rc(const Args *a, int64_t s, int64_t l, int64_t *e) {
    diff_block(a, s, l, e, 0, a->n_levels, 1);
}

#define ROW(N) {rate_mt##N##_u, rate_mt##N##_s, rate_mt##N##_sc, diff_mt##N##_id, diff_mt##N##_rc}
/* [n][rate unsigned, rate signed, rate signed+constrained, diff identity, diff constrained]; row 0: n > 8 */
static const block_fn MT_TABLE[MAX_UNROLLED_LEVELS + 1][5] = {
    {rate_mtn_u, rate_mtn_s, rate_mtn_sc, diff_mtn_id, diff_mtn_rc},
    ROW(1), ROW(2), ROW(3), ROW(4), ROW(5), ROW(6), ROW(7), ROW(8),
};
static const block_fn IF_TABLE[5] = {rate_if_u, rate_if_s, rate_if_sc, diff_if_id, diff_if_rc};

/* events [T] (may be NULL): number of non-zero emitted values per step, added to what it holds. Each thread counts
 * into its own array and adds it once at the end. Returns -1 if that array cannot be allocated. */
static int run_blocks(block_fn fn, const Args *a, int64_t *events, int nthreads) {
    const int64_t nblocks = (a->N + BLOCK - 1) / BLOCK;
    int failed = 0;
    if (nthreads < 1) nthreads = 1;
#pragma omp parallel num_threads(nthreads) if (nblocks > 1 && nthreads > 1)
    {
        int64_t *local = events ? (int64_t *)calloc((size_t)(a->T > 0 ? a->T : 1), sizeof(int64_t)) : NULL;
        if (events && !local) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblocks; ++blk) {
            const int64_t start = blk * BLOCK;
            const int64_t len = a->N - start < BLOCK ? a->N - start : BLOCK;
            fn(a, start, len, local);
        }
        if (local) {
#pragma omp critical
            for (int64_t t = 0; t < a->T; ++t) events[t] += local[t];
            free(local);
        }
    }
    return failed ? -1 : 0;
}

static block_fn pick(int is_if, int n_levels, int column) {
    if (is_if) return IF_TABLE[column];
    return MT_TABLE[n_levels <= MAX_UNROLLED_LEVELS ? n_levels : 0][column];
}

/* Rate neuron (IF or MT) over T steps. Returns 0, or -1 for invalid arguments (checked by the Python wrapper) or a
 * failed allocation of the per-thread event counts. */
int snn_rate_run(const float *x, float *out, const float *th, int64_t th_inner, int64_t th_k, const float *m_in,
                 const float *c_in, float *m_out, float *c_out, int64_t T, int64_t N, int is_if, int n_levels,
                 int sgn, int need_c, int has_state, int store_state, int64_t *events, int nthreads) {
    if (T < 0 || N < 0 || th_inner < 1 || th_k < 1 || n_levels < 1 || (need_c && !sgn)) return -1;
    Args a = {x, out, th, th_inner, th_k, 0, 1, 1, m_in, c_in, m_out, c_out, T, 0, N, n_levels, has_state,
              store_state};
    return run_blocks(pick(is_if, n_levels, sgn ? (need_c ? 2 : 1) : 0), &a, events, nthreads);
}

/* Differential neuron (MT or IF, always signed) over T steps t0+1 … t0+T. Returns 0 or -1 (as snn_rate_run). */
int snn_diff_run(const float *x, float *out, const float *th, int64_t th_inner, int64_t th_k, const float *b,
                 int64_t b_inner, int64_t b_k, const float *r_in_in, const float *r_out_in, float *r_in_out,
                 float *r_out_out, int64_t T, int64_t t0, int64_t N, int is_if, int n_levels, int relu_constrained,
                 int has_state, int store_state, int64_t *events, int nthreads) {
    if (T < 0 || t0 < 0 || N < 0 || th_inner < 1 || th_k < 1 || b_inner < 1 || b_k < 1 || n_levels < 1) return -1;
    Args a = {x, out, th, th_inner, th_k, b, b_inner, b_k, r_in_in, r_out_in, r_in_out, r_out_out, T, t0, N,
              n_levels, has_state, store_state};
    return run_blocks(pick(is_if, n_levels, relu_constrained ? 4 : 3), &a, events, nthreads);
}
