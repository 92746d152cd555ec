/* Grouped 3D convolutions with few channels per group (MF-Net's fibers), fp32, AVX2 + FMA.
 *
 * oneDNN vectorises a grouped convolution over the output channels of a group; with 6 or 12 channels per group
 * most of each 8-lane vector and most of each load is wasted. Here a group's activations are kept group-major,
 *     buffer (N, G, Dp, Hp, CI, Wp)    padded with zeros on every side, Wp >= round_up(W, 16) + 8,
 * and the kernel vectorises over the output width: a 6 x 16 tile of outputs (6 output channels of one group,
 * 16 positions of one row) lives in 12 registers while the input rows stream through. With AVX-512, wider tiles,
 * and for 12 or more input channels per group a Winograd F(2,3) tile along the rows (wino_tile, conv_rows).
 *
 * Compiled as C++ into the mfnet operator library (ops.cpp registers the operators; mfnet.fastpath.native builds
 * it); every function works on the items [item0, item1) of its problem, shared between the threads of one
 * at::parallel_for through an mf_sched (see MF_ITEMS).
 */
#include "fiber_conv.h"

#include <immintrin.h>
#include <stddef.h>
#include <stdlib.h>

/* Work sharing. Every function below works on the items [item0, item1) of its problem. With sched == NULL it does
 * all of them; else the threads of one call share *sched (next = item0 at the start) and each claims the next item
 * when it has finished the last one, so that a thread that starts late or is descheduled by the system does fewer.
 * `active` counts the threads holding an item (at::parallel_for joins its threads, so the operators do not wait
 * on it). */

static inline int mf_claim(mf_sched *s, int *state, int item1) {
    if (s == NULL) return (*state)++;
    if (*state) __atomic_sub_fetch(&s->active, 1, __ATOMIC_SEQ_CST); /* the previous item is done */
    __atomic_add_fetch(&s->active, 1, __ATOMIC_SEQ_CST);
    const int item = __atomic_fetch_add(&s->next, 1, __ATOMIC_SEQ_CST);
    if (item >= item1) {
        __atomic_sub_fetch(&s->active, 1, __ATOMIC_SEQ_CST);
        *state = 0;
        return item1;
    }
    *state = 1;
    return item;
}

/* for each claimed item: MF_ITEMS(item) { ... } (no break or return inside: the claim releases the item) */
#define MF_ITEMS(item) \
    for (int mf_state_ = sched ? 0 : item0, item; (item = mf_claim(sched, &mf_state_, item1)) < item1;)

/* 1 where the CPU has AVX-512F (set once by the loader, mf_set_avx512): mf_conv then computes 64 or 32 positions
 * per tile where a row has room for them, and the multiplexer's matrix products use 8 x 48 tiles. Zen 4 runs a 512-bit
 * FMA as two 256-bit halves, so the arithmetic is the same; the gain is fewer loads, broadcasts and instructions
 * per multiply-add. */
static int mf_avx512 = 0;

void mf_set_avx512(int on) { mf_avx512 = on; }

/* Output rows per work item of a convolution into channels-last output: the group loop runs outside the row loop
 * of a block, so a group's input rows stay in L1 across the rows that read them. */
#ifndef MF_ROWS
#define MF_ROWS 8
#endif

/* ReLU is always max(0, v): _mm256_max_ps returns its second operand when one is NaN, so NaN propagates as it
 * does in torch.relu (a diverged run must show NaN, not zeros). */

/* Stores the first n lanes of v (all 8 for n >= 8, none for n <= 0). */
static inline void store_part(float *dst, __m256 v, int n) {
    if (n >= 8) {
        _mm256_storeu_ps(dst, v);
    } else if (n > 0) {
        float tmp[8];
        _mm256_storeu_ps(tmp, v);
        for (int i = 0; i < n; i++) dst[i] = tmp[i];
    }
}

/* In-place 8x8 transpose: r[i] lane j <-> r[j] lane i. */
static inline void transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20); r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20); r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31); r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31); r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

static inline void zero(float *p, ptrdiff_t count) {
    for (ptrdiff_t i = 0; i < count; i++) p[i] = 0.f;
}

/* relu(x * scale + shift) (or x when scale is NULL) of one channels-last row (W, G*CI) into row (n, d, h) of the
 * padded group-major buffer. Only the interior is written: every buffer is kept, zeroed once, and only ever packed
 * (mfnet3d at 224: 18 MB of padding planes and 0.9 M small memset calls per clip if rewritten each time; training's
 * conv2 3x3x3 input, 37 MB of buffer for 19 MB of data). */
static void pack_row(const float *row, const float *scale, const float *shift, float *buf, int n, int d, int h,
                     int W, int G, int CI, int Dp, int Hp, int Wp, int pd, int ph, int pw) {
    const int C = G * CI;
    const ptrdiff_t sh = (ptrdiff_t)CI * Wp, sd = sh * Hp, sg = sd * Dp, sn = sg * G;
    float *base = buf + n * sn + (d + pd) * sd + (h + ph) * sh + pw;
    int w0 = 0;
    if (C % 8 == 0) /* 8 positions x 8 channels at a time: BN-ReLU, transpose, 8 contiguous row stores */
        for (; w0 + 8 <= W; w0 += 8)
            for (int c = 0; c < C; c += 8) {
                __m256 r[8];
                const __m256 s8 = scale ? _mm256_loadu_ps(scale + c) : _mm256_set1_ps(1.f);
                const __m256 t8 = scale ? _mm256_loadu_ps(shift + c) : _mm256_setzero_ps();
                for (int i = 0; i < 8; i++) {
                    r[i] = _mm256_loadu_ps(row + (ptrdiff_t)(w0 + i) * C + c);
                    if (scale) r[i] = _mm256_max_ps(_mm256_setzero_ps(), _mm256_fmadd_ps(r[i], s8, t8));
                }
                transpose8(r);
                for (int i = 0; i < 8; i++) {
                    const int g = (c + i) / CI, k = (c + i) % CI;
                    _mm256_storeu_ps(base + g * sg + (ptrdiff_t)k * Wp + w0, r[i]);
                }
            }
    for (int w = w0; w < W; w++) {
        const float *px = row + (ptrdiff_t)w * C;
        for (int g = 0; g < G; g++) {
            float *o = base + g * sg + w;
            for (int i = 0; i < CI; i++) {
                const int c = g * CI + i;
                float v = px[c];
                if (scale) {
                    v = v * scale[c] + shift[c];
                    v = v < 0.f ? 0.f : v; /* NaN stays NaN, as in torch.relu */
                }
                o[(ptrdiff_t)i * Wp] = v;
            }
        }
    }
}

/* relu(x * scale + shift) (or x when scale is NULL) of channels-last x (N, D, H, W, G*CI) into the interior of the
 * padded group-major buffer (its padding: zeros, never written; see pack_row). items: (n, d, h) rows. */
void mf_pack(const float *x, const float *scale, const float *shift, float *buf, int D, int H, int W, int G,
             int CI, int Dp, int Hp, int Wp, int pd, int ph, int pw, mf_sched *sched, int item0, int item1) {
    const int C = G * CI;
    MF_ITEMS(item) {
        const int n = item / (D * H), d = (item / H) % D, h = item % H;
        const float *row = x + (((ptrdiff_t)n * D + d) * H + h) * (ptrdiff_t)W * C;
        pack_row(row, scale, shift, buf, n, d, h, W, G, CI, Dp, Hp, Wp, pd, ph, pw);
    }
}

/* c[4 x 24] += a[4 x K] @ b[K x 24]: 4 rows of a (row stride lda), 24 columns of b (row stride ldb); c[3r + j] is
 * row r, columns 8j..8j+7. */
static inline void gemm_4x24(const float *a, int lda, const float *b, int ldb, int K, __m256 c[12]) {
    __m256 c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3], c4 = c[4], c5 = c[5];
    __m256 c6 = c[6], c7 = c[7], c8 = c[8], c9 = c[9], c10 = c[10], c11 = c[11];
    for (int k = 0; k < K; k++, b += ldb) {
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), b2 = _mm256_loadu_ps(b + 16);
        __m256 v;
        v = _mm256_broadcast_ss(a + k);
        c0 = _mm256_fmadd_ps(v, b0, c0); c1 = _mm256_fmadd_ps(v, b1, c1); c2 = _mm256_fmadd_ps(v, b2, c2);
        v = _mm256_broadcast_ss(a + lda + k);
        c3 = _mm256_fmadd_ps(v, b0, c3); c4 = _mm256_fmadd_ps(v, b1, c4); c5 = _mm256_fmadd_ps(v, b2, c5);
        v = _mm256_broadcast_ss(a + 2 * lda + k);
        c6 = _mm256_fmadd_ps(v, b0, c6); c7 = _mm256_fmadd_ps(v, b1, c7); c8 = _mm256_fmadd_ps(v, b2, c8);
        v = _mm256_broadcast_ss(a + 3 * lda + k);
        c9 = _mm256_fmadd_ps(v, b0, c9); c10 = _mm256_fmadd_ps(v, b1, c10); c11 = _mm256_fmadd_ps(v, b2, c11);
    }
    c[0] = c0; c[1] = c1; c[2] = c2; c[3] = c3; c[4] = c4; c[5] = c5;
    c[6] = c6; c[7] = c7; c[8] = c8; c[9] = c9; c[10] = c10; c[11] = c11;
}

/* c[P x NC] = relu?(bias + add + a[P x K] @ b[K x NC]) with AVX-512 (row strides lda, ldb, ldc, ld_add; bias: NC
 * values; add: P x NC or NULL), 8 rows x 48 columns per register tile (24 accumulators; 3 loads of b and 8
 * broadcasts of a per 24 multiply-adds). P % 8 == 0, NC % 48 == 0. */
__attribute__((target("avx512f"))) static void gemm_block512(const float *a, int lda, const float *b, int ldb,
                                                               float *c, int ldc, int P, int K, int NC,
                                                               const float *bias, const float *add, int ld_add,
                                                               int relu) {
    const __m512 zero = _mm512_setzero_ps();
    for (int n = 0; n < NC; n += 48)
        for (int p = 0; p < P; p += 8) {
            __m512 acc[24];
            for (int r = 0; r < 8; r++)
                for (int j = 0; j < 3; j++) {
                    acc[3 * r + j] = _mm512_loadu_ps(bias + n + 16 * j);
                    if (add)
                        acc[3 * r + j] = _mm512_add_ps(acc[3 * r + j],
                                                       _mm512_loadu_ps(add + (ptrdiff_t)(p + r) * ld_add + n + 16 * j));
                }
            const float *ap = a + (ptrdiff_t)p * lda;
            for (int k = 0; k < K; k++) {
                const float *bk = b + (ptrdiff_t)k * ldb + n;
                const __m512 b0 = _mm512_loadu_ps(bk), b1 = _mm512_loadu_ps(bk + 16), b2 = _mm512_loadu_ps(bk + 32);
                for (int r = 0; r < 8; r++) {
                    const __m512 v = _mm512_set1_ps(ap[(ptrdiff_t)r * lda + k]);
                    acc[3 * r] = _mm512_fmadd_ps(v, b0, acc[3 * r]);
                    acc[3 * r + 1] = _mm512_fmadd_ps(v, b1, acc[3 * r + 1]);
                    acc[3 * r + 2] = _mm512_fmadd_ps(v, b2, acc[3 * r + 2]);
                }
            }
            for (int r = 0; r < 8; r++)
                for (int j = 0; j < 3; j++)
                    _mm512_storeu_ps(c + (ptrdiff_t)(p + r) * ldc + n + 16 * j,
                                     relu ? _mm512_max_ps(zero, acc[3 * r + j]) : acc[3 * r + j]);
        }
}

/* The start of 8 columns of a row of gemm_block's result: bias (+ the addend's row, when add != NULL). */
static inline __m256 gemm_init8(const float *bias, const float *add) {
    const __m256 b = _mm256_loadu_ps(bias);
    return add ? _mm256_add_ps(b, _mm256_loadu_ps(add)) : b;
}

/* Stores 8 columns of a row of gemm_block's result, ReLU'd when asked. */
static inline void gemm_store8(float *c, __m256 v, int relu) {
    _mm256_storeu_ps(c, relu ? _mm256_max_ps(_mm256_setzero_ps(), v) : v);
}

/* gemm_block for NC % 24 != 0 (the 16 channels of conv2's first unit): 4 rows x 8 columns at a time. */
static void gemm_block_narrow(const float *a, int lda, const float *b, int ldb, float *c, int ldc, int P, int K,
                              int NC, const float *bias, const float *add, int ld_add, int relu) {
    for (int n = 0; n < NC; n += 8)
        for (int p = 0; p < P; p += 4) {
            __m256 acc[4];
            for (int r = 0; r < 4; r++) acc[r] = gemm_init8(bias + n, add ? add + (ptrdiff_t)(p + r) * ld_add + n : NULL);
            for (int k = 0; k < K; k++) {
                const __m256 bk = _mm256_loadu_ps(b + (ptrdiff_t)k * ldb + n);
                for (int r = 0; r < 4; r++)
                    acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + (ptrdiff_t)(p + r) * lda + k), bk, acc[r]);
            }
            for (int r = 0; r < 4; r++) gemm_store8(c + (ptrdiff_t)(p + r) * ldc + n, acc[r], relu);
        }
}

/* c[P x NC] = relu?(bias + add + a[P x K] @ b[K x NC]) (row strides lda, ldb, ldc, ld_add; bias: NC values; add:
 * P x NC or NULL): the bias, the sum and the ReLU are applied in registers, not in passes of their own.
 * P % 8 == 0, NC % 8 == 0. */
static void gemm_block(const float *a, int lda, const float *b, int ldb, float *c, int ldc, int P, int K, int NC,
                       const float *bias, const float *add, int ld_add, int relu) {
    if (mf_avx512 && NC % 48 == 0) {
        gemm_block512(a, lda, b, ldb, c, ldc, P, K, NC, bias, add, ld_add, relu);
        return;
    }
    if (NC % 24) {
        gemm_block_narrow(a, lda, b, ldb, c, ldc, P, K, NC, bias, add, ld_add, relu);
        return;
    }
    for (int n = 0; n < NC; n += 24) /* a 24-column slice of b stays in cache over the block's positions */
        for (int p = 0; p < P; p += 4) {
            __m256 acc[12];
            for (int r = 0; r < 4; r++)
                for (int j = 0; j < 3; j++)
                    acc[3 * r + j] =
                        gemm_init8(bias + n + 8 * j, add ? add + (ptrdiff_t)(p + r) * ld_add + n + 8 * j : NULL);
            gemm_4x24(a + (ptrdiff_t)p * lda, lda, b + n, ldb, K, acc);
            for (int r = 0; r < 4; r++)
                for (int j = 0; j < 3; j++) gemm_store8(c + (ptrdiff_t)(p + r) * ldc + n + 8 * j, acc[3 * r + j], relu);
        }
}

/* The multiplexer of a multi-fiber unit and the BN-ReLU of conv_m1's input, R rows of positions at a time
 * (everything between the two stays in a scratch in L1/L2; R rows share each pass over the weights):
 *     a = relu(x * s_i + t_i);  h = relu(a @ w1 + b1);  x_in = h @ w2 + b2 + x;  y = relu(x_in * s_m + t_m)
 * x: channels-last (N, D, H, W, C) with C = G*CI; w1: (C, M); w2: (M, C); C a multiple of 8, M of 24.
 * buf != NULL: y into the interior of the padded group-major buffer (as mf_pack: the buffer is kept, its
 *              padding zeroed once);
 * else:        y into channels-last out (N, D, H, W, C).
 * proj != NULL: also relu(x * s_w + t_w) at the positions a 1x1x1 convolution with strides (SD, SH, SW) reads, into
 *               channels-last proj (N, Do, Ho, Wo, C): the BN-ReLU before a first unit's projection shortcut, on
 *               rows that are in cache already instead of in a pass of its own over the whole input.
 * Returns 1 if its scratch could not be allocated (nothing written), else 0.
 * items: blocks of R consecutive (n, d, h) rows (the last may be shorter). */
int mf_mux_pack(const float *x, const float *s_i, const float *t_i, const float *w1, const float *b1,
                const float *w2, const float *b2, int M, const float *s_m, const float *t_m, float *buf, float *out,
                int N, int D, int H, int W, int G, int CI, int Dp, int Hp, int Wp, int pd, int ph, int pw, int R,
                const float *s_w, const float *t_w, float *proj, int SD, int SH, int SW,
                mf_sched *sched, int item0, int item1) {
    const int C = G * CI, Pr = (R * W + 7) / 8 * 8;
    const long rows = (long)N * D * H;
    const __m256 zero8 = _mm256_setzero_ps();
    float *a = (float *)malloc(sizeof(float) * ((size_t)Pr * (2 * C + M) + 8 * (size_t)C));
    if (a == NULL) return 1;
    float *hid = a + (ptrdiff_t)Pr * C, *xin = hid + (ptrdiff_t)Pr * M, *tail = xin + (ptrdiff_t)Pr * C;
    MF_ITEMS(item) {
        const long row0 = (long)item * R; /* flat (n, d, h) row index */
        const int nrows = (int)(row0 + R <= rows ? R : rows - row0);
        const int P = nrows * W, P8 = (P + 7) / 8 * 8; /* positions past P: computed, never stored */
        const float *blk = x + row0 * W * C;
        for (int r = 0; r < nrows && proj; r++) {
            const long row = row0 + r;
            const int n = (int)(row / (D * H)), d = (int)(row / H % D), h = (int)(row % H);
            if (d % SD || h % SH) continue;
            const int Do = (D - 1) / SD + 1, Ho = (H - 1) / SH + 1, Wo = (W - 1) / SW + 1;
            float *o = proj + (((ptrdiff_t)n * Do + d / SD) * Ho + h / SH) * Wo * C;
            for (int w = 0; w < W; w += SW, o += C)
                for (int c = 0; c < C; c += 8) {
                    const __m256 v = _mm256_loadu_ps(blk + ((ptrdiff_t)r * W + w) * C + c);
                    _mm256_storeu_ps(o + c, _mm256_max_ps(zero8, _mm256_fmadd_ps(v, _mm256_loadu_ps(s_w + c),
                                                                                 _mm256_loadu_ps(t_w + c))));
                }
        }
        for (int p = 0; p < P8; p++)
            for (int c = 0; c < C; c += 8) {
                const __m256 y = p < P ? _mm256_fmadd_ps(_mm256_loadu_ps(blk + (ptrdiff_t)p * C + c),
                                                         _mm256_loadu_ps(s_i + c), _mm256_loadu_ps(t_i + c))
                                       : zero8;
                _mm256_storeu_ps(a + (ptrdiff_t)p * C + c, _mm256_max_ps(zero8, y));
            }
        gemm_block(a, C, w1, M, hid, M, P8, C, M, b1, NULL, 0, 1);
        /* xin = hid @ w2 + b2 + x: x is read where it exists, the last 8 positions from a copy when P is not a
         * multiple of 8 (x may end at P) */
        const int whole = P == P8 ? P8 : P8 - 8;
        if (whole > 0) gemm_block(hid, M, w2, C, xin, C, whole, M, C, b2, blk, C, 0);
        if (whole < P8) {
            for (int p = whole; p < P8; p++)
                for (int c = 0; c < C; c += 8)
                    _mm256_storeu_ps(tail + (ptrdiff_t)(p - whole) * C + c,
                                     p < P ? _mm256_loadu_ps(blk + (ptrdiff_t)p * C + c) : zero8);
            gemm_block(hid + (ptrdiff_t)whole * M, M, w2, C, xin + (ptrdiff_t)whole * C, C, 8, M, C, b2, tail, C, 0);
        }
        if (buf) {
            for (int r = 0; r < nrows; r++) {
                const long row = row0 + r;
                const int n = (int)(row / (D * H)), d = (int)(row / H % D), h = (int)(row % H);
                pack_row(xin + (ptrdiff_t)r * W * C, s_m, t_m, buf, n, d, h, W, G, CI, Dp, Hp, Wp, pd, ph, pw);
            }
        } else {
            for (int p = 0; p < P; p++)
                for (int c = 0; c < C; c += 8) {
                    const __m256 y = _mm256_fmadd_ps(_mm256_loadu_ps(xin + (ptrdiff_t)p * C + c),
                                                     _mm256_loadu_ps(s_m + c), _mm256_loadu_ps(t_m + c));
                    _mm256_storeu_ps(out + (row0 * W + p) * C + c, _mm256_max_ps(zero8, y));
                }
        }
    }
    free(a);
    return 0;
}

/* One 6 x 16 output tile: 6 output channels of a group at 16 positions of a row. */
static inline void tile(const float *in, const float *w, const float *bias, int CI, int CO, int KT, int KH, int KW,
                        ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sc, __m256 acc[12]) {
    for (int j = 0; j < 6; j++) acc[2 * j] = acc[2 * j + 1] = _mm256_broadcast_ss(bias + j);
    __m256 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3], a4 = acc[4], a5 = acc[5];
    __m256 a6 = acc[6], a7 = acc[7], a8 = acc[8], a9 = acc[9], a10 = acc[10], a11 = acc[11];
    for (int kd = 0; kd < KT; kd++)
        for (int kh = 0; kh < KH; kh++)
            for (int kw = 0; kw < KW; kw++) {
                const float *ip = in + kd * sd + kh * sh + kw;
                const float *wp = w + (ptrdiff_t)((kd * KH + kh) * KW + kw) * CI * CO;
                for (int i = 0; i < CI; i++, ip += sc, wp += CO) {
                    const __m256 x0 = _mm256_loadu_ps(ip), x1 = _mm256_loadu_ps(ip + 8);
                    __m256 b;
                    b = _mm256_broadcast_ss(wp + 0); a0 = _mm256_fmadd_ps(b, x0, a0); a1 = _mm256_fmadd_ps(b, x1, a1);
                    b = _mm256_broadcast_ss(wp + 1); a2 = _mm256_fmadd_ps(b, x0, a2); a3 = _mm256_fmadd_ps(b, x1, a3);
                    b = _mm256_broadcast_ss(wp + 2); a4 = _mm256_fmadd_ps(b, x0, a4); a5 = _mm256_fmadd_ps(b, x1, a5);
                    b = _mm256_broadcast_ss(wp + 3); a6 = _mm256_fmadd_ps(b, x0, a6); a7 = _mm256_fmadd_ps(b, x1, a7);
                    b = _mm256_broadcast_ss(wp + 4); a8 = _mm256_fmadd_ps(b, x0, a8); a9 = _mm256_fmadd_ps(b, x1, a9);
                    b = _mm256_broadcast_ss(wp + 5); a10 = _mm256_fmadd_ps(b, x0, a10); a11 = _mm256_fmadd_ps(b, x1, a11);
                }
            }
    acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3; acc[4] = a4; acc[5] = a5;
    acc[6] = a6; acc[7] = a7; acc[8] = a8; acc[9] = a9; acc[10] = a10; acc[11] = a11;
}

/* NC output channels x 16*NV positions of tile(), with AVX-512 (NC * NV accumulators): out[16 * NV * j + p] is
 * channel j at position p. Instantiated below with constants, so that the loops unroll into registers. 6 x 64
 * (24 accumulators: 4 loads and 6 broadcasts per 24 multiply-adds) made conv2's kernel pipeline 0.8 ms faster
 * than 6 x 32; 12 x 32 tiles for 12 or 24 channels per group were no faster than 6 x 32 and are not used. */
__attribute__((target("avx512f"), always_inline)) static inline void tile512(
    const float *in, const float *w, const float *bias, int CI, int CO, int KT, int KH, int KW, ptrdiff_t sd,
    ptrdiff_t sh, ptrdiff_t sc, float *out, const int NC, const int NV) {
    __m512 acc[24];
#pragma GCC unroll 24
    for (int j = 0; j < NC; j++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[j * NV + v] = _mm512_set1_ps(bias[j]);
    for (int kd = 0; kd < KT; kd++)
        for (int kh = 0; kh < KH; kh++)
            for (int kw = 0; kw < KW; kw++) {
                const float *ip = in + kd * sd + kh * sh + kw;
                const float *wp = w + (ptrdiff_t)((kd * KH + kh) * KW + kw) * CI * CO;
                for (int i = 0; i < CI; i++, ip += sc, wp += CO) {
                    __m512 xv[4];
#pragma GCC unroll 4
                    for (int v = 0; v < NV; v++) xv[v] = _mm512_loadu_ps(ip + 16 * v);
#pragma GCC unroll 24
                    for (int j = 0; j < NC; j++) {
                        const __m512 b = _mm512_set1_ps(wp[j]);
#pragma GCC unroll 4
                        for (int v = 0; v < NV; v++) acc[j * NV + v] = _mm512_fmadd_ps(b, xv[v], acc[j * NV + v]);
                    }
                }
            }
#pragma GCC unroll 24
    for (int j = 0; j < NC; j++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) _mm512_storeu_ps(out + 16 * NV * j + 16 * v, acc[j * NV + v]);
}

#define MF_TILE512(name, NC, NV)                                                                                      \
    __attribute__((target("avx512f"))) static void name(const float *in, const float *w, const float *bias, int CI, \
                                                         int CO, int KT, int KH, int KW, ptrdiff_t sd, ptrdiff_t sh, \
                                                         ptrdiff_t sc, float *out) {                                 \
        tile512(in, w, bias, CI, CO, KT, KH, KW, sd, sh, sc, out, NC, NV);                                            \
    }
MF_TILE512(tile6x16, 6, 1)
MF_TILE512(tile6x32, 6, 2)
MF_TILE512(tile6x64, 6, 4)

/* 6 output channels x 56 positions (a row of conv2 at 224) with AVX-512: three 16-wide and one 8-wide vector per
 * channel (24 accumulators, the 8-wide ones in ymm16-31), so that no multiply-add is spent on the 8 positions
 * past the row that a 6 x 64 tile computes. out[56 * j + p] is channel j at position p. */
__attribute__((target("avx512f,avx512vl"))) static void tile6x56(const float *in, const float *w, const float *bias,
                                                                  int CI, int CO, int KT, int KH, int KW,
                                                                  ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sc,
                                                                  float *out) {
    __m512 acc[18];
    __m256 acc8[6];
#pragma GCC unroll 6
    for (int j = 0; j < 6; j++) {
        acc[3 * j] = acc[3 * j + 1] = acc[3 * j + 2] = _mm512_set1_ps(bias[j]);
        acc8[j] = _mm256_set1_ps(bias[j]);
    }
    for (int kd = 0; kd < KT; kd++)
        for (int kh = 0; kh < KH; kh++)
            for (int kw = 0; kw < KW; kw++) {
                const float *ip = in + kd * sd + kh * sh + kw;
                const float *wp = w + (ptrdiff_t)((kd * KH + kh) * KW + kw) * CI * CO;
                for (int i = 0; i < CI; i++, ip += sc, wp += CO) {
                    const __m512 x0 = _mm512_loadu_ps(ip), x1 = _mm512_loadu_ps(ip + 16);
                    const __m512 x2 = _mm512_loadu_ps(ip + 32);
                    const __m256 x3 = _mm256_loadu_ps(ip + 48);
#pragma GCC unroll 6
                    for (int j = 0; j < 6; j++) {
                        const __m512 b = _mm512_set1_ps(wp[j]);
                        acc[3 * j] = _mm512_fmadd_ps(b, x0, acc[3 * j]);
                        acc[3 * j + 1] = _mm512_fmadd_ps(b, x1, acc[3 * j + 1]);
                        acc[3 * j + 2] = _mm512_fmadd_ps(b, x2, acc[3 * j + 2]);
                        acc8[j] = _mm256_fmadd_ps(_mm512_castps512_ps256(b), x3, acc8[j]);
                    }
                }
            }
#pragma GCC unroll 6
    for (int j = 0; j < 6; j++) {
        for (int v = 0; v < 3; v++) _mm512_storeu_ps(out + 56 * j + 16 * v, acc[3 * j + v]);
        _mm256_storeu_ps(out + 56 * j + 48, acc8[j]);
    }
}

/* relu? of a 6 x 16 tile (acc[2j], acc[2j+1]: channel j, positions 0-7 and 8-15), its first `valid` positions
 * into 6 group-major rows o, o + stride, ... Full stores where possible: masked ones are slow on AMD. */
static inline void emit_rows(__m256 acc[12], int relu, int valid, float *o, ptrdiff_t stride) {
    for (int j = 0; j < 6; j++) {
        float *oj = o + j * stride;
        const __m256 lo = relu ? _mm256_max_ps(_mm256_setzero_ps(), acc[2 * j]) : acc[2 * j];
        const __m256 hi = relu ? _mm256_max_ps(_mm256_setzero_ps(), acc[2 * j + 1]) : acc[2 * j + 1];
        store_part(oj, lo, valid);
        store_part(oj + 8, hi, valid - 8);
    }
}

/* relu? of a 6 x 16 tile (+ add, same layout) into channels-last o: 6 channels at each of `valid` positions, C
 * floats apart. */
static inline void emit_channels_last(__m256 acc[12], int relu, int valid, float *o, const float *a, int C) {
    const __m256 zero = _mm256_setzero_ps();
    for (int half = 0; half < 2; half++) { /* positions 8*half .. +7 */
        const int count = valid - 8 * half;
        if (count <= 0) break;
        __m256 r[8];
        for (int j = 0; j < 6; j++) r[j] = relu ? _mm256_max_ps(zero, acc[2 * j + half]) : acc[2 * j + half];
        r[6] = r[7] = zero;
        transpose8(r); /* r[i]: the 6 channels at position i */
        for (int i = 0; i < 8 && i < count; i++) {
            const ptrdiff_t off = (ptrdiff_t)(8 * half + i) * C;
            __m128 lo = _mm256_castps256_ps128(r[i]), hi = _mm256_extractf128_ps(r[i], 1);
            if (a) {
                lo = _mm_add_ps(lo, _mm_loadu_ps(a + off));
                hi = _mm_add_ps(hi, _mm_castpd_ps(_mm_load_sd((const double *)(a + off + 4))));
            }
            _mm_storeu_ps(o + off, lo); /* 6 channels: 4 + 2 */
            _mm_store_sd((double *)(o + off + 4), _mm_castps_pd(hi));
        }
    }
}

/* One output row of the grouped convolution below, for one group: the row's first input row `row` (group g's
 * buffer at the row's first tap), the group's weights wg and biases bg. Into a group-major buffer: o_buf is the
 * row's start (its channels oc_s apart); into channels-last: o_cl is the row's position 0 at the group's first
 * channel (positions C apart), a_cl the same in the addend (or NULL). */
static void conv_row(const float *row, const float *wg, const float *bg, int W, int CI, int CO, int KT, int KH, int KW,
                     ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sc, int relu, float *o_buf, ptrdiff_t oc_s, float *o_cl,
                     const float *a_cl, int C) {
    const int W16 = (W + 15) / 16 * 16;
    __m256 acc[12];
    for (int oc = 0; oc < CO; oc += 6)
        for (int x = 0; x < W;) {
            /* the widest tile within the row's 16-rounded span: 6 x 64, 6 x 32 or 6 x 16 (AVX-512: one register
             * per channel even at 16, conv4's 14-wide rows 4-5% faster than with two AVX2 ones), 6 x 56 for the
             * last 49-56 positions of a row; 6 x 16 in AVX2 registers without AVX-512 */
            const int rest = W - x;
            const int npos = !mf_avx512                ? 16
                             : rest > 48 && rest <= 56 ? 56
                             : x + 64 <= W16           ? 64
                             : x + 32 <= W16           ? 32
                                                       : 16;
            float t[6 * 64];
            const float *wo = wg + oc, *bo = bg + oc;
            if (npos == 56) tile6x56(row + x, wo, bo, CI, CO, KT, KH, KW, sd, sh, sc, t);
            if (npos == 64) tile6x64(row + x, wo, bo, CI, CO, KT, KH, KW, sd, sh, sc, t);
            if (npos == 32) tile6x32(row + x, wo, bo, CI, CO, KT, KH, KW, sd, sh, sc, t);
            if (npos == 16 && mf_avx512) tile6x16(row + x, wo, bo, CI, CO, KT, KH, KW, sd, sh, sc, t);
            for (int x16 = x; x16 < x + npos && x16 < W; x16 += 16) {
                if (mf_avx512) /* 6 x 16 of the AVX-512 tile */
                    for (int j = 0; j < 6; j++) {
                        acc[2 * j] = _mm256_loadu_ps(t + npos * j + (x16 - x));
                        acc[2 * j + 1] = _mm256_loadu_ps(t + npos * j + (x16 - x) + 8);
                    }
                else
                    tile(row + x16, wo, bo, CI, CO, KT, KH, KW, sd, sh, sc, acc);
                const int valid = W - x16 < 16 ? W - x16 : 16;
                if (o_buf)
                    emit_rows(acc, relu, valid, o_buf + (ptrdiff_t)oc * oc_s + x16, oc_s);
                else
                    emit_channels_last(acc, relu, valid, o_cl + (ptrdiff_t)x16 * C + oc,
                                       a_cl ? a_cl + (ptrdiff_t)x16 * C + oc : NULL, C);
            }
            x += npos;
        }
}

/* 1 where conv_rows may use the Winograd tile below (the loader's default; mf_set_winograd(0) for the direct tiles
 * alone, to compare them). */
static int mf_winograd = 1;

void mf_set_winograd(int on) { mf_winograd = on; }

/* Winograd F(2,3) along the rows with AVX-512: 6 output channels x 2 chunks of 16 positions. For each pair of
 * outputs (2q, 2q+1) of a chunk and the inputs d0..d3 under their taps,
 *     v = (d0 - d2, d1 + d2, d2 - d1, d1 - d3),  m_k = sum over (kd, kh, ci) of u_k * v_k,
 *     y(2q) = m0 + m1 + m2,  y(2q+1) = m1 - m2 - m3,
 * with u = (w0, (w0 + w1 + w2) / 2, (w0 - w1 + w2) / 2, w2) the three kw taps transformed: 4 multiply-adds per pair
 * and input channel where the direct tiles take 6. A chunk's 16 positions are 8 pairs; the two chunks (src[0],
 * src[1]) fill one vector of 16 pairs, split into even and odd inputs by permutes. src[k]: the chunk's first input
 * (tap 0, 0, 0 of input channel 0); u: (KT, KH, CI, 4, CO) at this tile's first output channel.
 * out[32 * j + 16 * k + p]: channel j (0-5) at position p of chunk k, without bias. */
__attribute__((target("avx512f"), always_inline)) static inline void wino_tile(const float *const src[2],
                                                                              const float *u, int CI, int CO,
                                                                              const int KT, const int KH, ptrdiff_t sd,
                                                                              ptrdiff_t sh, ptrdiff_t sc, float *out) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    __m512 a[24]; /* a[6 * k + j]: m_k of channel j */
#pragma GCC unroll 24
    for (int i = 0; i < 24; i++) a[i] = _mm512_setzero_ps();
    for (int kd = 0; kd < KT; kd++)
        for (int kh = 0; kh < KH; kh++) {
            const float *p0 = src[0] + kd * sd + kh * sh, *p1 = src[1] + kd * sd + kh * sh;
            const float *up = u + (ptrdiff_t)(kd * KH + kh) * CI * 4 * CO;
            for (int i = 0; i < CI; i++, p0 += sc, p1 += sc, up += 4 * CO) {
                const __m512 l0 = _mm512_loadu_ps(p0), l1 = _mm512_loadu_ps(p1);
                const __m512 m0 = _mm512_loadu_ps(p0 + 2), m1 = _mm512_loadu_ps(p1 + 2);
                const __m512 e0 = _mm512_permutex2var_ps(l0, even, l1), o0 = _mm512_permutex2var_ps(l0, odd, l1);
                const __m512 e1 = _mm512_permutex2var_ps(m0, even, m1), o1 = _mm512_permutex2var_ps(m0, odd, m1);
                const __m512 v[4] = {_mm512_sub_ps(e0, e1), _mm512_add_ps(o0, e1), _mm512_sub_ps(e1, o0),
                                     _mm512_sub_ps(o0, o1)};
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
#pragma GCC unroll 6
                    for (int j = 0; j < 6; j++)
                        a[6 * k + j] = _mm512_fmadd_ps(_mm512_set1_ps(up[k * CO + j]), v[k], a[6 * k + j]);
            }
        }
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
#pragma GCC unroll 6
    for (int j = 0; j < 6; j++) {
        const __m512 y0 = _mm512_add_ps(_mm512_add_ps(a[j], a[6 + j]), a[12 + j]);
        const __m512 y1 = _mm512_sub_ps(_mm512_sub_ps(a[6 + j], a[12 + j]), a[18 + j]);
        _mm512_storeu_ps(out + 32 * j, _mm512_permutex2var_ps(y0, lo, y1));
        _mm512_storeu_ps(out + 32 * j + 16, _mm512_permutex2var_ps(y0, hi, y1));
    }
}

/* wino_tile with constant taps (3 x 3 and 1 x 3 before the row's three), so that the tap loops unroll; any other
 * taps use the generic one. */
#define MF_WINO_TILE(name, KT_, KH_)                                                                                \
    __attribute__((target("avx512f"))) static void name(const float *const src[2], const float *u, int CI, int CO, \
                                                        int KT, int KH, ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sc,   \
                                                        float *out) {                                               \
        if (KT_ && KH_) wino_tile(src, u, CI, CO, KT_, KH_, sd, sh, sc, out);                                       \
        else wino_tile(src, u, CI, CO, KT, KH, sd, sh, sc, out);                                                    \
    }
MF_WINO_TILE(wino_tile33, 3, 3)
MF_WINO_TILE(wino_tile13, 1, 3)
MF_WINO_TILE(wino_tile_any, 0, 0)

static void chunk_rows(const float *row0, int nrows, int S, const float *w, const float *bg, int W, int CI, int CO,
                       int KT, int KH, ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sc, int relu, float *o_buf,
                       ptrdiff_t oc_s, ptrdiff_t or_buf, float *o_cl, const float *a_cl, ptrdiff_t or_cl, int C);

/* A convolution with spatial stride 2 and 3 x 3 taps in space, with AVX-512: NC output channels x 2 chunks of 16
 * outputs. Output x of a row reads the padded inputs 2x, 2x + 1 and 2x + 2: from the 32 inputs at 2 x0 the
 * permutes of wino_tile take the even ones (tap 0) and the odd ones (tap 1), from the 32 at 2 x0 + 2 the even
 * ones (tap 2), so every load serves 16 outputs and no lane is wasted on the skipped positions. src[k]: chunk k's
 * first input (tap 0, 0, 0, input channel 0); w: (KT, KH, 3, CI, CO) at the tile's first output channel.
 * out[32 * j + 16 * k + p]: channel j (0 to NC - 1) at output p of chunk k, without bias. */
__attribute__((target("avx512f"), always_inline)) static inline void s2_tile_body(
    const float *const src[2], const float *w, int CI, int CO, int KT, int KH, ptrdiff_t sd, ptrdiff_t sh,
    ptrdiff_t sc, float *out, const int NC) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    __m512 a[24]; /* a[2 * j + k]: channel j, chunk k */
#pragma GCC unroll 24
    for (int i = 0; i < 2 * NC; i++) a[i] = _mm512_setzero_ps();
    for (int kd = 0; kd < KT; kd++)
        for (int kh = 0; kh < KH; kh++) {
            const float *p0 = src[0] + kd * sd + kh * sh, *p1 = src[1] + kd * sd + kh * sh;
            const float *wp = w + (ptrdiff_t)(kd * KH + kh) * 3 * CI * CO;
            for (int i = 0; i < CI; i++, p0 += sc, p1 += sc, wp += CO)
#pragma GCC unroll 3
                for (int tap = 0; tap < 3; tap++) { /* tap by tap: 2 transformed inputs live, no sum spilled */
                    const int off = tap == 2 ? 2 : 0;
                    const __m512i idx = tap == 1 ? odd : even;
                    const __m512 v0 = _mm512_permutex2var_ps(_mm512_loadu_ps(p0 + off), idx,
                                                             _mm512_loadu_ps(p0 + off + 16));
                    const __m512 v1 = _mm512_permutex2var_ps(_mm512_loadu_ps(p1 + off), idx,
                                                             _mm512_loadu_ps(p1 + off + 16));
#pragma GCC unroll 12
                    for (int j = 0; j < NC; j++) {
                        const __m512 b = _mm512_set1_ps(wp[(ptrdiff_t)tap * CI * CO + j]);
                        a[2 * j] = _mm512_fmadd_ps(b, v0, a[2 * j]);
                        a[2 * j + 1] = _mm512_fmadd_ps(b, v1, a[2 * j + 1]);
                    }
                }
        }
#pragma GCC unroll 12
    for (int j = 0; j < NC; j++) {
        _mm512_storeu_ps(out + 32 * j, a[2 * j]);
        _mm512_storeu_ps(out + 32 * j + 16, a[2 * j + 1]);
    }
}

/* s2_tile_body for 12 output channels: 24 sums, so that each transformed input serves 12 channels (`conv3`/`conv4`'s
 * first units 4-6% faster than with 6 channels and 12 sums; tap by tap, 2 transformed inputs live instead of 6,
 * no sum is spilled to memory: 0-4% more) */
__attribute__((target("avx512f"))) static void s2_tile12(const float *const src[2], const float *w, int CI, int CO,
                                                         int KT, int KH, ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sc,
                                                         float *out) {
    s2_tile_body(src, w, CI, CO, KT, KH, sd, sh, sc, out, 12);
}

/* conv_rows for a convolution with spatial stride 2 (3 x 3 taps in space; output row r reads the input rows from
 * row0 + 2 r sh): the tile above with AVX-512 and CO a multiple of 12, else plain loops (correct, slow: the fast
 * path uses the strided convolution only where the tile runs). wg: (KT, KH, 3, CI, CO). */
static void conv_rows_s2(const float *row0, int nrows, const float *wg, const float *bg, int W, int CI, int CO,
                         int KT, int KH, ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sc, int relu, float *o_buf,
                         ptrdiff_t oc_s, ptrdiff_t or_buf, float *o_cl, const float *a_cl, ptrdiff_t or_cl, int C) {
    if (mf_avx512 && CO % 12 == 0) {
        chunk_rows(row0, nrows, 2, wg, bg, W, CI, CO, KT, KH, sd, sh, sc, relu, o_buf, oc_s, or_buf, o_cl, a_cl, or_cl,
                   C);
        return;
    }
    for (int r = 0; r < nrows; r++)
        for (int o = 0; o < CO; o++)
            for (int x = 0; x < W; x++) {
                float v = bg[o];
                for (int kd = 0; kd < KT; kd++)
                    for (int kh = 0; kh < KH; kh++)
                        for (int kw = 0; kw < 3; kw++)
                            for (int i = 0; i < CI; i++)
                                v += wg[(((ptrdiff_t)(kd * KH + kh) * 3 + kw) * CI + i) * CO + o] *
                                     row0[2 * r * sh + kd * sd + kh * sh + i * sc + 2 * x + kw];
                if (relu) v = v < 0.f ? 0.f : v; /* NaN stays NaN: a comparison with NaN is false */
                if (o_buf) o_buf[r * or_buf + o * oc_s + x] = v;
                else o_cl[r * or_cl + (ptrdiff_t)x * C + o] = v + (a_cl ? a_cl[r * or_cl + (ptrdiff_t)x * C + o] : 0.f);
            }
}

/* conv_row for nrows rows (input rows row0 + r * sh, outputs o_buf + r * or_buf or o_cl + r * or_cl, addend a_cl +
 * r * or_cl), on the Winograd tile where it applies (AVX-512, KW == 3, ug: the group's weights transformed, (KT, KH,
 * CI, 4, CO), see wino_tile; NULL: direct tiles). Its chunks of 16 positions run four at a time, in row order across
 * rows: one row of conv2 at 224 (56 positions, the last 8 computed for nothing), two of conv3 (28), four of conv4 (14). */
static void conv_rows(const float *row0, int nrows, const float *wg, const float *ug, const float *bg, int W, int CI,
                      int CO, int KT, int KH, int KW, ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sc, int relu, float *o_buf,
                      ptrdiff_t oc_s, ptrdiff_t or_buf, float *o_cl, const float *a_cl, ptrdiff_t or_cl, int C) {
    /* not for 49-56 positions, where the direct 6 x 56 tile computes no position for nothing and the Winograd one 8
     * of 64 (conv2 at 224: a tie or slower), nor for fewer than 12 input channels (conv2's 6 at 112 in training:
     * a tie) */
    if (ug == NULL || !mf_avx512 || !mf_winograd || KW != 3 || CO % 6 || CI < 12 || (W > 48 && W <= 56)) {
        for (int r = 0; r < nrows; r++)
            conv_row(row0 + r * sh, wg, bg, W, CI, CO, KT, KH, KW, sd, sh, sc, relu, o_buf ? o_buf + r * or_buf : NULL,
                     oc_s, o_cl ? o_cl + r * or_cl : NULL, a_cl ? a_cl + r * or_cl : NULL, C);
        return;
    }
    chunk_rows(row0, nrows, 1, ug, bg, W, CI, CO, KT, KH, sd, sh, sc, relu, o_buf, oc_s, or_buf, o_cl, a_cl, or_cl, C);
}

/* The chunk loop of conv_rows' Winograd tile and of conv_rows_s2's strided one (S: the spatial stride; w: the
 * Winograd weights, or the plain ones (KT, KH, 3, CI, CO) with S == 2): chunks of 16 output positions two at a
 * time, in row order across rows; output row r reads the input from row0 + r * S * sh, position x from S * x. */
static void chunk_rows(const float *row0, int nrows, int S, const float *w, const float *bg, int W, int CI, int CO,
                       int KT, int KH, ptrdiff_t sd, ptrdiff_t sh, ptrdiff_t sc, int relu, float *o_buf,
                       ptrdiff_t oc_s, ptrdiff_t or_buf, float *o_cl, const float *a_cl, ptrdiff_t or_cl, int C) {
    const int per_row = (W + 15) / 16, chunks = nrows * per_row;
    float t[12 * 32];
    for (int c0 = 0; c0 < chunks; c0 += 2) {
        const int n = chunks - c0 < 2 ? chunks - c0 : 2;
        const float *src[2];
        int rr[2], xx[2];
        for (int k = 0; k < 2; k++) { /* a missing chunk repeats the last one; its results are not stored */
            const int idx = c0 + (k < n ? k : n - 1);
            rr[k] = idx / per_row;
            xx[k] = 16 * (idx % per_row);
            src[k] = row0 + rr[k] * S * sh + S * xx[k];
        }
        for (int oc = 0; oc < CO; oc += 6) {
            const float *tt = t;
            if (S == 2 && oc % 12 == 0) s2_tile12(src, w + oc, CI, CO, KT, KH, sd, sh, sc, t);
            else if (S == 2) tt = t + 6 * 32; /* the second 6 channels of the 12 computed */
            else if (KT == 3 && KH == 3) wino_tile33(src, w + oc, CI, CO, KT, KH, sd, sh, sc, t);
            else if (KT == 1 && KH == 3) wino_tile13(src, w + oc, CI, CO, KT, KH, sd, sh, sc, t);
            else wino_tile_any(src, w + oc, CI, CO, KT, KH, sd, sh, sc, t);
            for (int k = 0; k < n; k++) {
                __m256 acc[12];
                for (int j = 0; j < 6; j++) {
                    const __m256 b = _mm256_broadcast_ss(bg + oc + j);
                    acc[2 * j] = _mm256_add_ps(_mm256_loadu_ps(tt + 32 * j + 16 * k), b);
                    acc[2 * j + 1] = _mm256_add_ps(_mm256_loadu_ps(tt + 32 * j + 16 * k + 8), b);
                }
                const int valid = W - xx[k] < 16 ? W - xx[k] : 16;
                if (o_buf)
                    emit_rows(acc, relu, valid, o_buf + rr[k] * or_buf + (ptrdiff_t)oc * oc_s + xx[k], oc_s);
                else
                    emit_channels_last(acc, relu, valid, o_cl + rr[k] * or_cl + (ptrdiff_t)xx[k] * C + oc,
                                       a_cl ? a_cl + rr[k] * or_cl + (ptrdiff_t)xx[k] * C + oc : NULL, C);
            }
        }
    }
}

/* Grouped convolution of a padded group-major buffer (the buffer's padding is the convolution's), with
 * temporal stride ST and spatial stride 1; D, H, W are the output's sizes.  weight: (G, KT, KH, KW, CI, CO) with CO a multiple of 6; bias: (G*CO).
 * out_buf != NULL: relu? result into the interior of a padded group-major buffer (N, G, D+2qd, H+2qh, CO, Wq)
 *                  (its padding stays zero);
 * out_cl  != NULL: result (+ add, channels-last like out_cl, when add != NULL) into (N, D, H, W, G*CO).
 * wino: the weights transformed for the Winograd tile, (G, KT, KH, CI, 4, CO) (see wino_tile; KW == 3), or NULL.
 * items: (n, g, d) into out_buf, blocks of MF_ROWS output rows (n, d, h / MF_ROWS) into out_cl. */
void mf_conv(const float *buf, const float *weight, const float *bias, int D, int H, int W, int G, int CI, int CO,
             int KT, int KH, int KW, int ST, int Dp, int Hp, int Wp, int relu, float *out_buf, int qd, int qh, int qw,
             int Wq, float *out_cl, const float *add, const float *wino, mf_sched *sched, int item0, int item1) {
    const ptrdiff_t sc = Wp, sh = (ptrdiff_t)CI * Wp, sd = sh * Hp, sg = sd * Dp, sn = sg * G;
    const ptrdiff_t oc_s = Wq, oh_s = (ptrdiff_t)CO * Wq, od_s = oh_s * (H + 2 * qh), og_s = od_s * (D + 2 * qd);
    const ptrdiff_t on_s = og_s * G;
    const int C = G * CO;
    /* Into a group-major buffer, items are (n, g, d) and the rows of a group follow each other (its input rows
     * stay in L1). Into channels-last, items are output rows (n, d, h) with all groups at once, so that the output
     * row stays in cache while every group writes its channels into it. */
    const int rows_first = out_buf == NULL;
    const int HB = (H + MF_ROWS - 1) / MF_ROWS; /* row blocks per plane (channels-last output) */
    MF_ITEMS(item) {
        const int n = rows_first ? item / (D * HB) : item / (G * D);
        const int d = rows_first ? (item / HB) % D : item % D;
        const int g0 = rows_first ? 0 : (item / D) % G, g1 = rows_first ? G : g0 + 1;
        const int h0 = rows_first ? (item % HB) * MF_ROWS : 0;
        const int h1 = rows_first ? (h0 + MF_ROWS < H ? h0 + MF_ROWS : H) : H;
        for (int g = g0; g < g1; g++) {
            const float *row = buf + n * sn + g * sg + (ptrdiff_t)d * ST * sd + h0 * sh;
            const float *wg = weight + (ptrdiff_t)g * KT * KH * KW * CI * CO;
            const float *ug = wino ? wino + (ptrdiff_t)g * KT * KH * CI * 4 * CO : NULL;
            const ptrdiff_t pos = (((ptrdiff_t)n * D + d) * H + h0) * W;
            float *o_buf = out_buf ? out_buf + n * on_s + g * og_s + (d + qd) * od_s + (h0 + qh) * oh_s + qw : NULL;
            float *o_cl = out_cl ? out_cl + pos * C + g * CO : NULL;
            const float *a_cl = add ? add + pos * C + g * CO : NULL;
            conv_rows(row, h1 - h0, wg, ug, bias + g * CO, W, CI, CO, KT, KH, KW, sd, sh, sc, relu, o_buf, oc_s, oh_s,
                      o_cl, a_cl, (ptrdiff_t)W * C, C);
        }
    }
}

/* mf_conv into channels-last, then a dense 1x1x1 convolution of its result, in blocks of MF_ROWS output rows that
 * stay in cache (a first unit's dense conv_m2 after the kernel's conv_m1, conv2's at 224: 96 -> 96 channels):
 *     out = [relu?(conv(buf) + bias), extra] @ w_post + b_post (+ add)
 * extra: NULL, or channels-last (N, D, H, W, CX) inputs of a second 1x1x1 convolution whose weights are the last CX
 * rows of w_post (the first unit's projection shortcut: one matrix product for both, and no pass of its own);
 * w_post: (G*CO + CX, C_post); b_post: (C_post); out, add: channels-last (N, D, H, W, C_post), C_post a multiple
 * of 8. SS: the convolution's spatial stride, 1, or 2 with 3 x 3 spatial taps (conv_rows_s2: the first units of
 * conv3 and conv4, the input at twice the output's H and W). Returns 1 if its scratch could not be allocated
 * (nothing written), else 0. items: as mf_conv's into out_cl. */
int mf_conv_dense(const float *buf, const float *weight, const float *bias, int D, int H, int W, int G, int CI, int CO,
                  int KT, int KH, int KW, int ST, int Dp, int Hp, int Wp, int relu, const float *w_post,
                  const float *b_post, int C_post, float *out, const float *add, const float *extra, int CX, int SS,
                  mf_sched *sched, int item0, int item1) {
    const ptrdiff_t sc = Wp, sh = (ptrdiff_t)CI * Wp, sd = sh * Hp, sg = sd * Dp, sn = sg * G;
    const int C = G * CO, CK = C + (extra ? CX : 0), HB = (H + MF_ROWS - 1) / MF_ROWS;
    const ptrdiff_t rows_max = ((ptrdiff_t)MF_ROWS * W + 7) / 8 * 8;
    float *scratch = (float *)malloc(sizeof(float) * ((size_t)rows_max * CK + 24 * (size_t)C_post));
    if (scratch == NULL) return 1;
    float *tail_add = scratch + rows_max * CK, *tail_out = tail_add + 8 * (ptrdiff_t)C_post;
    for (ptrdiff_t i = 0; i < rows_max * CK; i++) scratch[i] = 0.f; /* rows past a block's end: finite */
    MF_ITEMS(item) {
        const int n = item / (D * HB), d = (item / HB) % D;
        const int h0 = (item % HB) * MF_ROWS, h1 = h0 + MF_ROWS < H ? h0 + MF_ROWS : H;
        const ptrdiff_t pos0 = (((ptrdiff_t)n * D + d) * H + h0) * W;
        for (int g = 0; g < G && SS == 2; g++) {
            const float *row = buf + n * sn + g * sg + (ptrdiff_t)d * ST * sd + (ptrdiff_t)h0 * 2 * sh;
            conv_rows_s2(row, h1 - h0, weight + (ptrdiff_t)g * KT * KH * KW * CI * CO, bias + g * CO, W, CI, CO, KT, KH,
                         sd, sh, sc, relu, NULL, 0, 0, scratch + g * CO, NULL, (ptrdiff_t)W * CK, CK);
        }
        for (int g = 0; g < G && SS == 1; g++)
            for (int h = h0; h < h1; h++) {
                const float *row = buf + n * sn + g * sg + (ptrdiff_t)d * ST * sd + h * sh;
                const float *wg = weight + (ptrdiff_t)g * KT * KH * KW * CI * CO;
                float *o_cl = scratch + (ptrdiff_t)(h - h0) * W * CK + g * CO;
                conv_row(row, wg, bias + g * CO, W, CI, CO, KT, KH, KW, sd, sh, sc, relu, NULL, 0, o_cl, NULL, CK);
            }
        /* the dense convolution: whole blocks of 8 positions straight into out, the last few through a copy */
        const int P = (h1 - h0) * W, whole = P / 8 * 8;
        for (int p = 0; p < P && extra; p++)
            for (int c = 0; c < CX; c++) scratch[(ptrdiff_t)p * CK + C + c] = extra[(pos0 + p) * CX + c];
        const float *a0 = add ? add + pos0 * C_post : NULL;
        if (whole) gemm_block(scratch, CK, w_post, C_post, out + pos0 * C_post, C_post, whole, CK, C_post, b_post, a0,
                              C_post, 0);
        if (whole < P) {
            for (int p = 0; p < 8; p++)
                for (int c = 0; c < C_post; c++)
                    tail_add[p * C_post + c] = a0 && whole + p < P ? a0[(ptrdiff_t)(whole + p) * C_post + c] : 0.f;
            gemm_block(scratch + (ptrdiff_t)whole * CK, CK, w_post, C_post, tail_out, C_post, 8, CK, C_post, b_post,
                       tail_add, C_post, 0);
            for (int p = whole; p < P; p++)
                for (int c = 0; c < C_post; c++)
                    out[(pos0 + p) * C_post + c] = tail_out[(ptrdiff_t)(p - whole) * C_post + c];
        }
    }
    free(scratch);
    return 0;
}

#ifndef MF_TAIL_ROWS
#define MF_TAIL_ROWS 8
#endif

/* A unit's tail in one pass over whole frames: conv_m1 (temporal stride ST, + bias, ReLU) and then conv_m2 (1 x KH2
 * x KW2, + bias + add) into channels-last out, band by band of MF_TAIL_ROWS output rows (or the whole frame), so that conv_m1's result
 * never leaves the cache (mf_conv twice writes it to a padded buffer of the whole clip and reads it back).
 *     buf: conv_m1's padded group-major input (N, G, Dp, Hp, CI, Wp); w1 (G, KT1, KH1, KW1, CI, CM), b1 (G*CM);
 *     w2 (G, 1, KH2, KW2, CM, CO), b2 (G*CO); out, add: channels-last (N, D, H, W, G*CO); D, H, W: the output's.
 * Each thread keeps, per group, a window of conv_m1's rows h0 - KH2/2 .. h1 - 1 + KH2/2 (zero-padded like a
 * buffer row of Wp floats; the rows that overlap the previous band are moved up, not recomputed).
 * u1, u2: w1 and w2 transformed for the Winograd tile (see wino_tile; KW1, KW2 == 3), or NULL.
 * Returns 1 if its scratch could not be allocated (nothing written), else 0. items: frames (n, d). */
int mf_tail(const float *buf, const float *w1, const float *b1, const float *w2, const float *b2, int D, int H, int W,
            int G, int CI, int CM, int CO, int KT1, int KH1, int KW1, int ST, int KH2, int KW2, int Dp, int Hp,
            int Wp, float *out, const float *add, const float *u1, const float *u2, mf_sched *sched, int item0,
            int item1) {
    const ptrdiff_t sc = Wp, sh = (ptrdiff_t)CI * Wp, sd = sh * Hp, sg = sd * Dp, sn = sg * G;
    /* frames of at most 2 * MF_TAIL_ROWS rows in one band: conv4's 14 rows at 224 as 8 + 6 had left the Winograd
     * tile (two rows per vector at 14 wide) an odd row count in each of conv_m1's calls, a vector half computed for
     * nothing */
    const int band = H <= 2 * MF_TAIL_ROWS ? H : MF_TAIL_ROWS;
    const int ph2 = KH2 / 2, pw2 = KW2 / 2, rows = band + 2 * ph2, C = G * CO;
    const ptrdiff_t wr = (ptrdiff_t)CM * Wp, wg = wr * rows; /* a window row (CM channels), a group's window */
    float *window = (float *)malloc(sizeof(float) * (size_t)(wg * G));
    if (window == NULL) return 1;
    for (ptrdiff_t k = 0; k < wg * G; k++) window[k] = 0.f;
    MF_ITEMS(item) {
        const int n = item / D, d = item % D;
        for (int h0 = 0; h0 < H; h0 += band) {
            const int h1 = h0 + band < H ? h0 + band : H;
            const ptrdiff_t pos0 = (((ptrdiff_t)n * D + d) * H + h0) * W;
            for (int g = 0; g < G; g++) {
                float *win = window + g * wg; /* row r: conv_m1's output row h0 - ph2 + r */
                int r0 = 0;
                if (h0 > 0) { /* the rows shared with the previous band */
                    for (ptrdiff_t k = 0; k < 2 * ph2 * wr; k++) win[k] = win[band * wr + k];
                    r0 = 2 * ph2;
                }
                const int r1 = h1 - h0 + 2 * ph2; /* window rows r0 .. r1 - 1 to compute: those inside the frame */
                const int lo = ph2 - h0 > r0 ? ph2 - h0 : r0, hi = H - h0 + ph2 < r1 ? H - h0 + ph2 : r1;
                for (int r = r0; r < r1; r++)
                    if (r < lo || r >= hi)
                        for (int c = 0; c < CM; c++) zero(win + r * wr + pw2 + (ptrdiff_t)c * Wp, W);
                if (hi > lo) {
                    const float *row = buf + n * sn + g * sg + (ptrdiff_t)d * ST * sd + (ptrdiff_t)(h0 - ph2 + lo) * sh;
                    conv_rows(row, hi - lo, w1 + (ptrdiff_t)g * KT1 * KH1 * KW1 * CI * CM,
                              u1 ? u1 + (ptrdiff_t)g * KT1 * KH1 * CI * 4 * CM : NULL, b1 + g * CM, W, CI, CM, KT1, KH1,
                              KW1, sd, sh, sc, 1, win + lo * wr + pw2, Wp, wr, NULL, NULL, 0, 0);
                }
                conv_rows(win, h1 - h0, w2 + (ptrdiff_t)g * KH2 * KW2 * CM * CO,
                          u2 ? u2 + (ptrdiff_t)g * KH2 * CM * 4 * CO : NULL, b2 + g * CO, W, CM, CO, 1, KH2, KW2, 0, wr,
                          Wp, 0, NULL, 0, 0, out + pos0 * C + g * CO, add ? add + pos0 * C + g * CO : NULL,
                          (ptrdiff_t)W * C, C);
            }
        }
    }
    free(window);
    return 0;
}

#ifndef MF_WGRAD_ROWS
#define MF_WGRAD_ROWS 8
#endif

/* 18 sums of mf_conv_wgrad with AVX-512 (KW == 3): a[3j + kw] += g[o + j, p] * x[i, p + kw] over `rows` rows of NV
 * 16-wide vectors each, 3 input and 6 gradient loads for 18 multiply-adds (AVX2 below: 8 loads for 12). Constant
 * NV unrolls the row. */
__attribute__((target("avx512f"), always_inline)) static inline void wgrad_pass512(const float *xrow, const float *grow,
                                                                                  int rows, ptrdiff_t sh, ptrdiff_t tc,
                                                                                  ptrdiff_t th, float *acc,
                                                                                  const int NV) {
    __m512 a[18];
#pragma GCC unroll 18
    for (int k = 0; k < 18; k++) a[k] = _mm512_loadu_ps(acc + 16 * k);
    for (int h = 0; h < rows; h++, xrow += sh, grow += th)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            const __m512 x0 = _mm512_loadu_ps(xrow + 16 * v);
            const __m512 x1 = _mm512_loadu_ps(xrow + 16 * v + 1);
            const __m512 x2 = _mm512_loadu_ps(xrow + 16 * v + 2);
#pragma GCC unroll 6
            for (int j = 0; j < 6; j++) {
                __m512 gv = _mm512_loadu_ps(grow + j * tc + 16 * v);
                __asm__("" : "+v"(gv)); /* one load for three multiply-adds (GCC would fold one into each) */
                a[3 * j] = _mm512_fmadd_ps(gv, x0, a[3 * j]);
                a[3 * j + 1] = _mm512_fmadd_ps(gv, x1, a[3 * j + 1]);
                a[3 * j + 2] = _mm512_fmadd_ps(gv, x2, a[3 * j + 2]);
            }
        }
#pragma GCC unroll 18
    for (int k = 0; k < 18; k++) _mm512_storeu_ps(acc + 16 * k, a[k]);
}

/* One group's part of mf_conv_wgrad for KW == 3 with AVX-512: frame by frame, in bands of MF_WGRAD_ROWS output rows
 * whose gradient and input rows stay in L1 over all (kd, kh, input channel, 6 output channels) passes. sums:
 * (KT, KH, CI, CO, 3, 16) partial sums, added to. */
__attribute__((target("avx512f"))) static void wgrad_group512(const float *xg, const float *gg, float *sums, int N,
                                                                  int D, int H, int W, int CI, int CO, int KT, int KH,
                                                                  int ST, ptrdiff_t sc, ptrdiff_t sh, ptrdiff_t sd,
                                                                  ptrdiff_t sn, ptrdiff_t tc, ptrdiff_t th,
                                                                  ptrdiff_t td, ptrdiff_t tn) {
    const int nv = (W + 15) / 16;
    for (int n = 0; n < N; n++)
        for (int d = 0; d < D; d++)
            for (int h0 = 0; h0 < H; h0 += MF_WGRAD_ROWS) {
                const int rows = H - h0 < MF_WGRAD_ROWS ? H - h0 : MF_WGRAD_ROWS;
                for (int kd = 0; kd < KT; kd++)
                    for (int kh = 0; kh < KH; kh++)
                        for (int i = 0; i < CI; i++)
                            for (int o = 0; o < CO; o += 6) {
                                const float *x = xg + n * sn + (d * ST + kd) * sd + (h0 + kh) * sh + i * sc;
                                const float *g = gg + n * tn + d * td + h0 * th + o * tc;
                                float *acc = sums + ((((ptrdiff_t)kd * KH + kh) * CI + i) * CO + o) * 3 * 16;
                                if (nv == 1) wgrad_pass512(x, g, rows, sh, tc, th, acc, 1);
                                else if (nv == 2) wgrad_pass512(x, g, rows, sh, tc, th, acc, 2);
                                else if (nv == 3) wgrad_pass512(x, g, rows, sh, tc, th, acc, 3);
                                else
                                    for (int v = 0; v < nv; v++)
                                        wgrad_pass512(x + 16 * v, g + 16 * v, rows, sh, tc, th, acc, 1);
                            }
            }
}

/* Weight gradient of the convolution above (temporal stride ST, spatial stride 1): dW[g, tap, i, o] = sum over
 * output positions p of grad[p, g, o] * x[p * (ST, 1, 1) + tap, g, i]. bx: the convolution's input as a padded
 * group-major buffer (its padding is the convolution's); bg: the output gradient as a group-major buffer
 * (N, G, D + 2qd, H + 2qh, CO, Wq) whose data starts at (qd, qh, qw) and whose every other entry is zero (so that
 * vector loads past W add nothing); D, H, W: the output's sizes. dw: (G, KT, KH, KW, CI, CO), overwritten. CO a
 * multiple of 6. scratch: G*KT*KH*KW*CI*CO*16 floats. items: groups. With AVX-512 and KW == 3, wgrad_group512
 * runs each group (any CI); else CI must be even. */
void mf_conv_wgrad(const float *bx, const float *bg, float *dw, float *scratch, int N, int D, int H, int W, int G,
                   int CI, int CO, int KT, int KH, int KW, int ST, int Dp, int Hp, int Wp, int qd, int qh, int qw,
                   int Wq, mf_sched *sched, int item0, int item1) {
    const ptrdiff_t sc = Wp, sh = (ptrdiff_t)CI * Wp, sd = sh * Hp, sg = sd * Dp, sn = sg * G;
    const ptrdiff_t tc = Wq, th = (ptrdiff_t)CO * Wq, td = th * (H + 2 * qh), tg = td * (D + 2 * qd), tn = tg * G;
    const int taps = KT * KH * KW, nv = (W + 7) / 8;
    MF_ITEMS(g) {
        float *sums = scratch + (ptrdiff_t)g * taps * CI * CO * 16;
        if (mf_avx512 && KW == 3) {
            for (ptrdiff_t k = 0; k < (ptrdiff_t)taps * CI * CO * 16; k++) sums[k] = 0.f;
            wgrad_group512(bx + g * sg, bg + g * tg + qd * td + qh * th + qw, sums, N, D, H, W, CI, CO, KT, KH, ST, sc,
                           sh, sd, sn, tc, th, td, tn);
            /* sums (KT, KH, CI, CO, kw, 16) -> dw (KT, KH, kw, CI, CO) */
            float *out = dw + (ptrdiff_t)g * taps * CI * CO;
            for (int k = 0; k < KT * KH; k++)
                for (int i = 0; i < CI; i++)
                    for (int o = 0; o < CO; o++)
                        for (int kw = 0; kw < 3; kw++) {
                            const float *v = sums + ((((ptrdiff_t)k * CI + i) * CO + o) * 3 + kw) * 16;
                            float s = 0.f;
                            for (int l = 0; l < 16; l++) s += v[l];
                            out[(((ptrdiff_t)k * 3 + kw) * CI + i) * CO + o] = s;
                        }
            continue;
        }
        for (ptrdiff_t k = 0; k < (ptrdiff_t)taps * CI * CO * 8; k++) sums[k] = 0.f;
        /* the sums of one (tap, 6 outputs, 2 inputs) block stay in registers over all rows of a frame */
        for (int n = 0; n < N; n++)
            for (int d = 0; d < D; d++)
                for (int kd = 0; kd < KT; kd++)
                    for (int kh = 0; kh < KH; kh++)
                        for (int kw = 0; kw < KW; kw++) {
                            const int tap = (kd * KH + kh) * KW + kw;
                            const float *xbase = bx + n * sn + g * sg + (d * ST + kd) * sd + kh * sh + kw;
                            const float *gbase = bg + n * tn + g * tg + (d + qd) * td + qh * th + qw;
                            for (int o = 0; o < CO; o += 6)
                                for (int i = 0; i < CI; i += 2) {
                                    float *acc = sums + (((ptrdiff_t)tap * CO + o) * CI + i) * 8;
                                    /* acc[(j * CI + c) * 8]: output channel o + j, input channel i + c */
                                    __m256 a[12];
                                    for (int j = 0; j < 6; j++)
                                        for (int c = 0; c < 2; c++)
                                            a[2 * j + c] = _mm256_loadu_ps(acc + ((ptrdiff_t)j * CI + c) * 8);
                                    for (int h = 0; h < H; h++) {
                                        const float *xrow = xbase + h * sh, *grow = gbase + h * th;
                                        for (int v = 0; v < nv; v++) {
                                            const __m256 x0 = _mm256_loadu_ps(xrow + i * sc + 8 * v);
                                            const __m256 x1 = _mm256_loadu_ps(xrow + (i + 1) * sc + 8 * v);
                                            for (int j = 0; j < 6; j++) {
                                                const __m256 gv = _mm256_loadu_ps(grow + (o + j) * tc + 8 * v);
                                                a[2 * j] = _mm256_fmadd_ps(gv, x0, a[2 * j]);
                                                a[2 * j + 1] = _mm256_fmadd_ps(gv, x1, a[2 * j + 1]);
                                            }
                                        }
                                    }
                                    for (int j = 0; j < 6; j++)
                                        for (int c = 0; c < 2; c++)
                                            _mm256_storeu_ps(acc + ((ptrdiff_t)j * CI + c) * 8, a[2 * j + c]);
                                }
                        }
        float *out = dw + (ptrdiff_t)g * taps * CI * CO;
        for (int tap = 0; tap < taps; tap++)
            for (int o = 0; o < CO; o++)
                for (int i = 0; i < CI; i++) {
                    const float *v = sums + (((ptrdiff_t)tap * CO + o) * CI + i) * 8;
                    float s = 0.f;
                    for (int l = 0; l < 8; l++) s += v[l];
                    out[((ptrdiff_t)tap * CI + i) * CO + o] = s;
                }
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * BatchNorm + ReLU in training, on channels-last activations x (P, C) with P = N*T*H*W rows, C % 8 == 0.
 * Forward: one pass for the statistics and one for y = relu(x * scale + shift); backward: one pass for the two
 * per-channel sums and one for dx, the ReLU mask recomputed from x (y is never read). Reductions are split into
 * blocks of rows: each block's sums go to its own row of a (blocks, C) array of doubles, which the caller adds.
 */
#define MF_BN_BLOCK 256

/* The 8 lanes of a1 and a2 as doubles into s1[0..7] and s2[0..7]. */
static inline void store_sums(double *s1, double *s2, __m256 a1, __m256 a2) {
    float t1[8], t2[8];
    _mm256_storeu_ps(t1, a1);
    _mm256_storeu_ps(t2, a2);
    for (int i = 0; i < 8; i++) {
        s1[i] = t1[i];
        s2[i] = t2[i];
    }
}

/* Per block b: s1[b, c] = sum (x - k[c]), s2[b, c] = sum (x - k[c])^2 over its rows (k: a shift per channel
 * against cancellation, e.g. the first row). items: blocks of MF_BN_BLOCK rows. */
void mf_bn_stats(const float *x, const float *k, double *s1, double *s2, long P, int C, mf_sched *sched, int item0,
                 int item1) {
    MF_ITEMS(b) {
        const long r0 = (long)b * MF_BN_BLOCK, r1 = r0 + MF_BN_BLOCK < P ? r0 + MF_BN_BLOCK : P;
        for (int c = 0; c < C; c += 8) {
            const __m256 kc = _mm256_loadu_ps(k + c);
            __m256 a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps();
            for (long r = r0; r < r1; r++) {
                const __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + r * C + c), kc);
                a1 = _mm256_add_ps(a1, v);
                a2 = _mm256_fmadd_ps(v, v, a2);
            }
            store_sums(s1 + (long)b * C + c, s2 + (long)b * C + c, a1, a2);
        }
    }
}

/* y = relu(x * scale + shift). items: blocks of MF_BN_BLOCK rows. */
void mf_bn_relu(const float *x, const float *scale, const float *shift, float *y, long P, int C, mf_sched *sched,
                int item0, int item1) {
    const __m256 zero = _mm256_setzero_ps();
    MF_ITEMS(b) {
        const long r0 = (long)b * MF_BN_BLOCK, r1 = r0 + MF_BN_BLOCK < P ? r0 + MF_BN_BLOCK : P;
        for (long r = r0; r < r1; r++)
            for (int c = 0; c < C; c += 8) {
                const __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * C + c), _mm256_loadu_ps(scale + c),
                                                 _mm256_loadu_ps(shift + c));
                _mm256_storeu_ps(y + r * C + c, _mm256_max_ps(zero, v));
            }
    }
}

/* Max pooling over frames (kernel 1 x KH x KW, strides 1 x SH x SW, padding 0 x PH x PW, padding never chosen) of
 * channels-last x (N, D, H, W, C) into y (N, D, Ho, Wo, C), C a multiple of 8; a NaN in a window gives NaN, as in
 * PyTorch. items: output rows (n, d, ho). */
void mf_max_pool(const float *x, float *y, int N, int D, int H, int W, int C, int KH, int KW, int SH, int SW, int PH,
                 int PW, int Ho, int Wo, mf_sched *sched, int item0, int item1) {
    MF_ITEMS(item) {
        const int nd = item / Ho, ho = item % Ho;
        const int h0 = ho * SH - PH > 0 ? ho * SH - PH : 0, h1 = ho * SH - PH + KH < H ? ho * SH - PH + KH : H;
        const float *plane = x + (ptrdiff_t)nd * H * W * C;
        float *out = y + ((ptrdiff_t)nd * Ho + ho) * Wo * C;
        for (int wo = 0; wo < Wo; wo++) {
            const int w0 = wo * SW - PW > 0 ? wo * SW - PW : 0, w1 = wo * SW - PW + KW < W ? wo * SW - PW + KW : W;
            for (int c = 0; c < C; c += 8) {
                __m256 m = _mm256_set1_ps(-__builtin_inff()), nan = _mm256_setzero_ps();
                for (int h = h0; h < h1; h++)
                    for (int w = w0; w < w1; w++) {
                        const __m256 v = _mm256_loadu_ps(plane + ((ptrdiff_t)h * W + w) * C + c);
                        m = _mm256_max_ps(m, v);
                        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                    }
                _mm256_storeu_ps(out + (ptrdiff_t)wo * C + c, _mm256_or_ps(m, nan)); /* all-ones bits: a NaN */
            }
        }
    }
}

/* Per block: s1[b, c] = sum dz, s2[b, c] = sum dz * (x - mean), with dz = dy where x * scale + shift > 0. */
void mf_bn_relu_grad_sums(const float *x, const float *dy, const float *scale, const float *shift,
                          const float *mean, double *s1, double *s2, long P, int C, mf_sched *sched, int item0,
                          int item1) {
    const __m256 zero = _mm256_setzero_ps();
    MF_ITEMS(b) {
        const long r0 = (long)b * MF_BN_BLOCK, r1 = r0 + MF_BN_BLOCK < P ? r0 + MF_BN_BLOCK : P;
        for (int c = 0; c < C; c += 8) {
            const __m256 sc = _mm256_loadu_ps(scale + c), sh = _mm256_loadu_ps(shift + c);
            const __m256 mc = _mm256_loadu_ps(mean + c);
            __m256 a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps();
            for (long r = r0; r < r1; r++) {
                const __m256 xv = _mm256_loadu_ps(x + r * C + c);
                const __m256 on = _mm256_cmp_ps(_mm256_fmadd_ps(xv, sc, sh), zero, _CMP_GT_OQ);
                const __m256 dz = _mm256_and_ps(_mm256_loadu_ps(dy + r * C + c), on);
                a1 = _mm256_add_ps(a1, dz);
                a2 = _mm256_fmadd_ps(dz, _mm256_sub_ps(xv, mc), a2);
            }
            store_sums(s1 + (long)b * C + c, s2 + (long)b * C + c, a1, a2);
        }
    }
}

/* dx = a * dz - b - (x - mean) * d per channel (a = gamma * invstd, b = a * mean(dz),
 * d = a * invstd^2 * mean(dz * (x - mean))), dz as above. items: blocks of MF_BN_BLOCK rows. */
void mf_bn_relu_grad_input(const float *x, const float *dy, const float *scale, const float *shift,
                           const float *mean, const float *a, const float *bb, const float *d, float *dx, long P,
                           int C, mf_sched *sched, int item0, int item1) {
    const __m256 zero = _mm256_setzero_ps();
    MF_ITEMS(blk) {
        const long r0 = (long)blk * MF_BN_BLOCK, r1 = r0 + MF_BN_BLOCK < P ? r0 + MF_BN_BLOCK : P;
        for (long r = r0; r < r1; r++)
            for (int c = 0; c < C; c += 8) {
                const __m256 xv = _mm256_loadu_ps(x + r * C + c);
                const __m256 on = _mm256_cmp_ps(
                    _mm256_fmadd_ps(xv, _mm256_loadu_ps(scale + c), _mm256_loadu_ps(shift + c)), zero, _CMP_GT_OQ);
                const __m256 dz = _mm256_and_ps(_mm256_loadu_ps(dy + r * C + c), on);
                __m256 v = _mm256_fmsub_ps(_mm256_loadu_ps(a + c), dz, _mm256_loadu_ps(bb + c));
                v = _mm256_fnmadd_ps(_mm256_sub_ps(xv, _mm256_loadu_ps(mean + c)), _mm256_loadu_ps(d + c), v);
                _mm256_storeu_ps(dx + r * C + c, v);
            }
    }
}
