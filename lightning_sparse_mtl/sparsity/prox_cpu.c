/* The Adam-weighted group prox on CPU float32: one Halley pass and the update, rows walked in memory order.
 *
 * z, v: (O, C) row-major, C = I * K (group g is the K consecutive columns g*K .. g*K+K-1 of every row).
 * Why by hand: a compiler-generated reduction over rows walks each 16-column strip down all O rows (a 4 KiB page
 * per load on wide layers), which runs at a quarter of the memory bandwidth; here each thread takes a block of
 * rows, reads them sequentially and accumulates per column, then the per-thread sums are added.
 * The arithmetic is that of prox.py (_metric, _halley_step, _pass, _update), in float32.
 * Built by prox_cpu.py with gcc -O3 -march=native -fno-math-errno -fopenmp (libgomp is torch's).
 */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

static void columns(const float *per_group, long I, long K, float *out) {
    for (long g = 0; g < I; ++g)
        for (long k = 0; k < K; ++k) out[g * K + k] = per_group[g];
}

/* Per-group sums of one pass from radius r (I): out[0..I) = sum t^2, out[I..2I) = sum t^2 s, out[2I..3I) =
 * sum t^2 s^2, out[3I..4I) = ||u||^2 (t = u / (D r + tau), s = D / (D r + tau), u = D z), as prox.halley_sums.
 * Groups spanning several tensors (coupled groups) add these over their tensors. Returns -1 when memory runs out. */
int halley_sums(const float *z, const float *v, long O, long I, long K, float inv_bc2, float eps,
                const float *tau, const float *r, float *out, int threads) {
    long C = I * K;
    int T = threads > 0 ? threads : 1;
    float *tc = malloc(sizeof(float) * C * 2);
    float *acc = calloc((size_t)T * 4 * C, sizeof(float));
    if (!tc || !acc) { free(tc); free(acc); return -1; }
    float *rc = tc + C;
    columns(tau, I, K, tc);
    columns(r, I, K, rc);
#pragma omp parallel num_threads(T)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        long o0 = O * t / n, o1 = O * (t + 1) / n;
        float *a0 = acc + (size_t)t * 4 * C, *a1 = a0 + C, *a2 = a1 + C, *a3 = a2 + C;
        for (long o = o0; o < o1; ++o) {
            const float *zr = z + o * C, *vr = v + o * C;
#pragma omp simd
            for (long j = 0; j < C; ++j) {
                float d = sqrtf(vr[j] * inv_bc2) + eps, u = d * zr[j];
                float ia = 1.0f / (tc[j] + d * rc[j]);
                float t2 = (u * ia) * (u * ia), sa = d * ia, t2s = t2 * sa;
                a0[j] += t2; a1[j] += t2s; a2[j] += t2s * sa; a3[j] += u * u;
            }
        }
    }
    for (long g = 0; g < I; ++g) {
        double f[4] = {0, 0, 0, 0};
        for (int t = 0; t < T; ++t)
            for (int q = 0; q < 4; ++q)
                for (long k = 0; k < K; ++k) f[q] += acc[((size_t)t * 4 + q) * C + g * K + k];
        for (int q = 0; q < 4; ++q) out[q * I + g] = (float)f[q];
    }
    free(tc);
    free(acc);
    return 0;
}

/* One pass from radius r (I): r_next (I) (0 for groups that stay zero) and the return value 1 when every live
 * group's step is <= rtol * r_next. Returns -1 when memory runs out (nothing written). */
int halley_pass(const float *z, const float *v, long O, long I, long K, float inv_bc2, float eps,
                const float *tau, const float *r, const unsigned char *frozen, float rtol, float *r_next,
                int threads) {
    float *f = malloc(sizeof(float) * 4 * I);
    if (!f || halley_sums(z, v, O, I, K, inv_bc2, eps, tau, r, f, threads) < 0) { free(f); return -1; }
    int done = 1;
    for (long g = 0; g < I; ++g) {
        float f0 = f[g], f1 = f[I + g], f2 = f[2 * I + g], n2 = f[3 * I + g];
        int alive = n2 > tau[g] * tau[g] && !frozen[g];
        float rn = 0.0f;
        if (alive) { /* Halley step on q(r) = f^(-1/2) - 1, as prox._halley_step */
            float gg = 1.0f / sqrtf(f0), g3 = gg * gg * gg;
            float q = gg - 1.0f, dq = g3 * f1, ddq = 3.0f * g3 * (gg * gg * f1 * f1 - f2);
            float newton = q / dq, ratio = q * ddq / (dq * dq);
            ratio = ratio < -1.0f ? -1.0f : (ratio > 1.0f ? 1.0f : ratio);
            rn = r[g] - newton / (1.0f - 0.5f * ratio);
            if (!(rn > 0.0f)) rn = 0.0f;
            if (!(fabsf(rn - r[g]) <= rtol * rn && rn > 0.0f)) done = 0;
        }
        r_next[g] = rn;
    }
    free(f);
    return done;
}

/* x = D z r / (D r + tau) written into z (exact zeros where r = 0, subnormal results flushed to zero).
 * Returns -1 when memory runs out. */
int prox_update(float *z, const float *v, long O, long I, long K, float inv_bc2, float eps, const float *tau,
                const float *r, int threads) {
    long C = I * K;
    float *tc = malloc(sizeof(float) * C * 2);
    if (!tc) return -1;
    float *rc = tc + C;
    columns(tau, I, K, tc);
    columns(r, I, K, rc);
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static)
    for (long o = 0; o < O; ++o) {
        float *zr = z + o * C;
        const float *vr = v + o * C;
#pragma omp simd
        for (long j = 0; j < C; ++j) {
            float d = sqrtf(vr[j] * inv_bc2) + eps;
            float den = tc[j] + d * rc[j];
            float x = den > 0.0f ? (d * zr[j] * rc[j]) / den : 0.0f; /* r = 0: exact zero, also at tau = 0 */
            zr[j] = fabsf(x) < FLT_MIN ? 0.0f : x; /* subnormals to zero: they slow CPU convs ~2x (prox.py) */
        }
    }
    free(tc);
    return 0;
}
