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
 * snn_pair_run runs a decomposed bounded ReLU y = r − hi(r − a), r = lo(x) (runtime/fuse.py): both neurons and both
 * subtractions per element and step, so the intermediate tensors never reach memory.
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
    /* bounded-ReLU pairs only: the upper neuron's tables and state, and the ceiling a */
    const float *th2;
    int64_t th2_inner, th2_k;
    const float *b2;
    int64_t b2_inner, b2_k;
    const float *s2_in, *s3_in;
    float *s2_out, *s3_out;
    float ceiling;
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

/* One neuron's state for a block of elements, in stack arrays that stay in L1: θ, the captured bias b (differential
 * only) and two state values (rate: m and C; differential: R_in and R_out). */
typedef struct {
    float th[BLOCK], b[BLOCK], s0[BLOCK], s1[BLOCK];
} Lane;

/* Load a lane: θ (and b) from the compact tables, the state from s0_in/s1_in or the initial state (rate: m = θ/2 for
 * IF, else 0, and C = 0; differential: R_in = b, R_out = 0). */
INLINE void lane_load(Lane *restrict L, const float *th, int64_t th_inner, int64_t th_k, const float *b,
                      int64_t b_inner, int64_t b_k, const float *s0_in, const float *s1_in, int has_state,
                      int64_t start, int64_t len, const int diff, const int is_if, const int need_c) {
    gather(L->th, th, th_inner, th_k, start, len);
    if (diff) gather(L->b, b, b_inner, b_k, start, len);
    for (int64_t j = 0; j < len; ++j) {
        if (has_state) {
            L->s0[j] = s0_in[start + j];
            L->s1[j] = (diff || need_c) ? s1_in[start + j] : 0.0f;
        } else if (diff) {
            L->s1[j] = 0.0f;
            L->s0[j] = 0.0f + L->b[j];
        } else {
            L->s0[j] = is_if ? 0.0f + L->th[j] * 0.5f : 0.0f;
            L->s1[j] = 0.0f;
        }
    }
}

INLINE void lane_store(const Lane *restrict L, float *s0_out, float *s1_out, int64_t start, int64_t len,
                       const int diff, const int need_c) {
    for (int64_t j = 0; j < len; ++j) {
        s0_out[start + j] = L->s0[j];
        if (diff || need_c) s1_out[start + j] = L->s1[j];
    }
}

/* One step of element j of a lane; returns the emitted value.
 * rate (_rate_step): m ← m + x; s = fire(m, C); m ← m − s; C ← C + s.
 * differential (_diff_step, always signed): u = x − b; R_in' = R_in + u/t; m = t·(R_in' − R_out) (+ θ/2 for IF);
 * C = t·R_out; d = fire(m, C); R_out ← R_out + d/t; R_in ← R_in'. */
INLINE float lane_step(Lane *restrict L, int64_t j, float x, float t, const int diff, const int is_if, const int n,
                       const int sgn, const int need_c) {
    const float th = L->th[j];
    if (!diff) {
        const float mm = L->s0[j] + x;
        const float c = L->s1[j];
        const float s = is_if ? if_fire(mm, c, th, sgn, need_c) : mt_fire(mm, c, th, n, sgn, need_c);
        L->s0[j] = mm - s;
        if (need_c) L->s1[j] = c + s;
        return s;
    }
    const float u = x - L->b[j];
    const float r_in_new = L->s0[j] + u / t;
    const float r_out = L->s1[j];
    float m = t * (r_in_new - r_out);
    const float c = t * r_out;
    float d;
    if (is_if) {
        m = m + th * 0.5f;
        d = if_fire(m, c, th, 1, need_c);
    } else {
        d = mt_fire(m, c, th, n, 1, need_c);
    }
    L->s1[j] = r_out + d / t;
    L->s0[j] = r_in_new;
    return d;
}

/* One neuron layer over T steps (steps t0+1 … t0+T) for the elements start … start+len−1. */
INLINE void single_block(const Args *a, int64_t start, int64_t len, int64_t *events, const int diff, const int is_if,
                         const int n, const int sgn, const int need_c) {
    Lane L;
    lane_load(&L, a->th, a->th_inner, a->th_k, a->b, a->b_inner, a->b_k, a->s0_in, a->s1_in, a->has_state, start, len,
              diff, is_if, need_c);
    for (int64_t k = 0; k < a->T; ++k) {
        const float t = (float)(a->t0 + k + 1);
        const float *restrict xt = a->x + k * a->N + start;
        float *restrict ot = a->out + k * a->N + start;
        int32_t nonzero = 0;
        for (int64_t j = 0; j < len; ++j) {
            const float o = lane_step(&L, j, xt[j], t, diff, is_if, n, sgn, need_c);
            ot[j] = o;
            nonzero += o != 0.0f;
        }
        if (events) events[k] += nonzero;
    }
    if (a->store_state) lane_store(&L, a->s0_out, a->s1_out, start, len, diff, need_c);
}

/* A bounded ReLU y = r − hi(r − a) with r = lo(x) (the decomposed ReLU6 / clamp(0, a) of
 * convert/passes/normalize.py) over T steps: both neurons and both subtractions per element, in the graph's order
 * and precision (fp32), so y is bit-identical to the four separate operations. Events: lo's counts go to
 * events[0 … T−1], hi's to events[T … 2T−1]. */
INLINE void pair_block(const Args *a, int64_t start, int64_t len, int64_t *events, const int diff, const int is_if,
                       const int n, const int sgn, const int need_c) {
    Lane lo, hi;
    lane_load(&lo, a->th, a->th_inner, a->th_k, a->b, a->b_inner, a->b_k, a->s0_in, a->s1_in, a->has_state, start,
              len, diff, is_if, need_c);
    lane_load(&hi, a->th2, a->th2_inner, a->th2_k, a->b2, a->b2_inner, a->b2_k, a->s2_in, a->s3_in, a->has_state,
              start, len, diff, is_if, need_c);
    const float ceiling = a->ceiling;
    for (int64_t k = 0; k < a->T; ++k) {
        const float t = (float)(a->t0 + k + 1);
        const float *restrict xt = a->x + k * a->N + start;
        float *restrict ot = a->out + k * a->N + start;
        int32_t nz_lo = 0, nz_hi = 0;
        for (int64_t j = 0; j < len; ++j) {
            const float r = lane_step(&lo, j, xt[j], t, diff, is_if, n, sgn, need_c);
            const float h = lane_step(&hi, j, r - ceiling, t, diff, is_if, n, sgn, need_c);
            ot[j] = r - h;
            nz_lo += r != 0.0f;
            nz_hi += h != 0.0f;
        }
        if (events) {
            events[k] += nz_lo;
            events[a->T + k] += nz_hi;
        }
    }
    if (a->store_state) {
        lane_store(&lo, a->s0_out, a->s1_out, start, len, diff, need_c);
        lane_store(&hi, a->s2_out, a->s3_out, start, len, diff, need_c);
    }
}

/* ---- specialisations: constant (n, flags) so that the level loop unrolls and the element loop vectorises ---- */

typedef void (*block_fn)(const Args *, int64_t, int64_t, int64_t *);

/* columns of the tables: rate unsigned, rate signed, rate signed + constrained, differential identity,
 * differential ReLU-constrained (differential neurons are always signed) */
#define BLOCK_FN(NAME, KIND, DIFF, IS_IF, N, SGN, NC)                                                               \
    static void NAME(const Args *a, int64_t s, int64_t l, int64_t *e) {                                          \
        KIND##_block(a, s, l, e, DIFF, IS_IF, N, SGN, NC);                                                         \
    }
#define COLUMNS(KIND, P, IS_IF, N)                                                                                 \
    BLOCK_FN(KIND##_##P##_u, KIND, 0, IS_IF, N, 0, 0)                                                              \
    BLOCK_FN(KIND##_##P##_s, KIND, 0, IS_IF, N, 1, 0)                                                              \
    BLOCK_FN(KIND##_##P##_sc, KIND, 0, IS_IF, N, 1, 1)                                                             \
    BLOCK_FN(KIND##_##P##_id, KIND, 1, IS_IF, N, 1, 0)                                                             \
    BLOCK_FN(KIND##_##P##_rc, KIND, 1, IS_IF, N, 1, 1)
#define ROW(KIND, P) {KIND##_##P##_u, KIND##_##P##_s, KIND##_##P##_sc, KIND##_##P##_id, KIND##_##P##_rc}
/* per kind: IF, MT with n = 1 … 8 unrolled, MT with a run-time n (> 8; the same block code) */
#define KIND_TABLES(KIND)                                                                                          \
    COLUMNS(KIND, if, 1, 1)                                                                                        \
    COLUMNS(KIND, mt1, 0, 1)                                                                                       \
    COLUMNS(KIND, mt2, 0, 2)                                                                                       \
    COLUMNS(KIND, mt3, 0, 3)                                                                                       \
    COLUMNS(KIND, mt4, 0, 4)                                                                                       \
    COLUMNS(KIND, mt5, 0, 5)                                                                                       \
    COLUMNS(KIND, mt6, 0, 6)                                                                                       \
    COLUMNS(KIND, mt7, 0, 7)                                                                                       \
    COLUMNS(KIND, mt8, 0, 8)                                                                                       \
    COLUMNS(KIND, mtn, 0, a->n_levels)                                                                             \
    static const block_fn KIND##_IF[5] = ROW(KIND, if);                                                            \
    static const block_fn KIND##_MT[MAX_UNROLLED_LEVELS + 1][5] = {                                                \
        ROW(KIND, mtn), ROW(KIND, mt1), ROW(KIND, mt2), ROW(KIND, mt3), ROW(KIND, mt4),                            \
        ROW(KIND, mt5), ROW(KIND, mt6), ROW(KIND, mt7), ROW(KIND, mt8),                                            \
    };

KIND_TABLES(single)
KIND_TABLES(pair)

/* events (may be NULL): n_events counters (one per step, two per step for a pair), added to what they hold. Each
 * thread counts into its own array and adds it once at the end. Returns -1 if that array cannot be allocated. */
static int run_blocks(block_fn fn, const Args *a, int64_t *events, int64_t n_events, int nthreads) {
    const int64_t nblocks = (a->N + BLOCK - 1) / BLOCK;
    int failed = 0;
    if (nthreads < 1) nthreads = 1;
#pragma omp parallel num_threads(nthreads) if (nblocks > 1 && nthreads > 1)
    {
        int64_t *local = events ? (int64_t *)calloc((size_t)(n_events > 0 ? n_events : 1), sizeof(int64_t)) : NULL;
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
            for (int64_t i = 0; i < n_events; ++i) events[i] += local[i];
            free(local);
        }
    }
    return failed ? -1 : 0;
}

/* The block function of a neuron setting: its table column (see BLOCK_FN) and row (IF, or MT by n). */
static block_fn pick(const block_fn if_row[5], const block_fn mt_rows[][5], int diff, int is_if, int n_levels,
                     int sgn, int need_c) {
    const int column = diff ? (need_c ? 4 : 3) : (sgn ? (need_c ? 2 : 1) : 0);
    if (is_if) return if_row[column];
    return mt_rows[n_levels <= MAX_UNROLLED_LEVELS ? n_levels : 0][column];
}

/* Rate neuron (IF or MT) over T steps. Returns 0, or -1 for invalid arguments (checked by the Python wrapper) or a
 * failed allocation of the per-thread event counts. */
int snn_rate_run(const float *x, float *out, const float *th, int64_t th_inner, int64_t th_k, const float *m_in,
                 const float *c_in, float *m_out, float *c_out, int64_t T, int64_t N, int is_if, int n_levels,
                 int sgn, int need_c, int has_state, int store_state, int64_t *events, int nthreads) {
    if (T < 0 || N < 0 || th_inner < 1 || th_k < 1 || n_levels < 1 || (need_c && !sgn)) return -1;
    Args a = {x, out, th, th_inner, th_k, 0, 1, 1, m_in, c_in, m_out, c_out, T, 0, N, n_levels, has_state,
              store_state};
    return run_blocks(pick(single_IF, single_MT, 0, is_if, n_levels, sgn, need_c), &a, events, T, nthreads);
}

/* Differential neuron (MT or IF, always signed) over T steps t0+1 … t0+T. Returns 0 or -1 (as snn_rate_run). */
int snn_diff_run(const float *x, float *out, const float *th, int64_t th_inner, int64_t th_k, const float *b,
                 int64_t b_inner, int64_t b_k, const float *r_in_in, const float *r_out_in, float *r_in_out,
                 float *r_out_out, int64_t T, int64_t t0, int64_t N, int is_if, int n_levels, int relu_constrained,
                 int has_state, int store_state, int64_t *events, int nthreads) {
    if (T < 0 || t0 < 0 || N < 0 || th_inner < 1 || th_k < 1 || b_inner < 1 || b_k < 1 || n_levels < 1) return -1;
    Args a = {x, out, th, th_inner, th_k, b, b_inner, b_k, r_in_in, r_out_in, r_in_out, r_out_out, T, t0, N,
              n_levels, has_state, store_state};
    return run_blocks(pick(single_IF, single_MT, 1, is_if, n_levels, 1, relu_constrained), &a, events, T, nthreads);
}

/* Bounded-ReLU pair y = r − hi(r − ceiling), r = lo(x), over T steps t0+1 … t0+T (t0 unused in rate coding). Both
 * neurons share the coding, kind, n and flags (column as above); th/b/state arguments come per neuron (b ignored in
 * rate coding; states [N] each as for the single neurons, read when has_state, written when store_state, and may be
 * the same buffers: each element's state is read before it is written). events: [2T] or NULL. Returns 0 or -1 (as
 * snn_rate_run). */
int snn_pair_run(const float *x, float *out, float ceiling, int diff, int is_if, int n_levels, int sgn, int need_c,
                 const float *th_lo, int64_t th_lo_inner, int64_t th_lo_k, const float *b_lo, int64_t b_lo_inner,
                 int64_t b_lo_k, const float *th_hi, int64_t th_hi_inner, int64_t th_hi_k, const float *b_hi,
                 int64_t b_hi_inner, int64_t b_hi_k, const float *lo0_in, const float *lo1_in, const float *hi0_in,
                 const float *hi1_in, float *lo0_out, float *lo1_out, float *hi0_out, float *hi1_out, int64_t T,
                 int64_t t0, int64_t N, int has_state, int store_state, int64_t *events, int nthreads) {
    if (T < 0 || t0 < 0 || N < 0 || th_lo_inner < 1 || th_lo_k < 1 || th_hi_inner < 1 || th_hi_k < 1 ||
        b_lo_inner < 1 || b_lo_k < 1 || b_hi_inner < 1 || b_hi_k < 1 || n_levels < 1 || (need_c && !sgn) ||
        (diff && !sgn))
        return -1;
    Args a = {x, out, th_lo, th_lo_inner, th_lo_k, b_lo, b_lo_inner, b_lo_k, lo0_in, lo1_in, lo0_out, lo1_out, T, t0,
              N, n_levels, has_state, store_state, th_hi, th_hi_inner, th_hi_k, b_hi, b_hi_inner, b_hi_k, hi0_in,
              hi1_in, hi0_out, hi1_out, ceiling};
    return run_blocks(pick(pair_IF, pair_MT, diff, is_if, n_levels, sgn, need_c), &a, events, 2 * T, nthreads);
}
