/* Constrained batched Viterbi for a linear-chain CRF, CPU kernel.
 *
 * Loaded with ctypes by ner_core/_ckernel.py (compiled on first use with the system C compiler and
 * cached); ner_core/crf.py falls back to its torch implementation when no compiler is available.
 *
 * Layout: rows are handled in blocks of LANES. Inside a block the emissions are transposed to
 * (T, K, LANES) so that every max-plus update works on LANES rows at once (one AVX register of
 * float32); the forward pass stores only the best score per (step, tag), and the back-pointers are
 * recomputed during back-tracking for the one tag on the path (K additions per step and row, instead
 * of K * K stored comparisons). Ties: the first previous tag with the highest score wins, as
 * torch.max does. Rows are independent, so the caller splits [0, B) across threads (ctypes releases
 * the GIL).
 *
 * em (B, T, K) float32 C-contiguous; start (K), trans (K, K) [from, to], end (K) with the scheme's
 * constraints already added; lengths (B) in [1, T]; paths (B, T) int64 out: steps past a row's
 * length repeat its last tag. Returns 0, or -1 when memory could not be allocated.
 */
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX__) || defined(__SSE__)
#include <immintrin.h>
#endif

#define LANES 8

/* out[l] = max(out[l], p[l] + tr) for the 8 lanes, as SIMD where the target has it. Only the value
 * matters here (ties are resolved during back-tracking), and there are no NaNs. */
static inline void maxplus8(float *out, const float *p, float tr) {
#if defined(__AVX__)
    __m256 v = _mm256_add_ps(_mm256_loadu_ps(p), _mm256_set1_ps(tr));
    _mm256_storeu_ps(out, _mm256_max_ps(_mm256_loadu_ps(out), v));
#elif defined(__SSE__)
    __m128 t = _mm_set1_ps(tr);
    _mm_storeu_ps(out, _mm_max_ps(_mm_loadu_ps(out), _mm_add_ps(_mm_loadu_ps(p), t)));
    _mm_storeu_ps(out + 4, _mm_max_ps(_mm_loadu_ps(out + 4), _mm_add_ps(_mm_loadu_ps(p + 4), t)));
#else
    for (int l = 0; l < LANES; l++) {
        float v = p[l] + tr;
        out[l] = v > out[l] ? v : out[l];
    }
#endif
}

int ner_viterbi(const float *em, int64_t B, int64_t T, int64_t K, const float *start,
                const float *trans, const float *end, const int64_t *lengths, int64_t *paths,
                int64_t b0, int64_t b1) {
    float *emT = (float *)malloc(sizeof(float) * (size_t)T * (size_t)K * LANES);
    float *sc = (float *)malloc(sizeof(float) * (size_t)T * (size_t)K * LANES);
    if (emT == NULL || sc == NULL) {
        free(emT);
        free(sc);
        return -1;
    }
    (void)B;
    for (int64_t r0 = b0; r0 < b1; r0 += LANES) {
        const int64_t n = (b1 - r0) < LANES ? (b1 - r0) : LANES;
        int64_t tmax = 1;
        for (int64_t l = 0; l < n; l++)
            if (lengths[r0 + l] > tmax) tmax = lengths[r0 + l];
        /* transpose this block's emissions to (t, k, lane); unused lanes get zeros */
        for (int64_t t = 0; t < tmax; t++)
            for (int64_t k = 0; k < K; k++) {
                float *dst = emT + ((size_t)t * K + k) * LANES;
                for (int64_t l = 0; l < LANES; l++)
                    dst[l] = l < n ? em[((size_t)(r0 + l) * T + t) * K + k] : 0.0f;
            }
        for (int64_t k = 0; k < K; k++)
            for (int l = 0; l < LANES; l++) sc[k * LANES + l] = emT[k * LANES + l] + start[k];
        for (int64_t t = 1; t < tmax; t++) {
            const float *p = sc + (size_t)(t - 1) * K * LANES;
            float *cur = sc + (size_t)t * K * LANES;
            const float *e = emT + (size_t)t * K * LANES;
            for (int64_t j = 0; j < K; j++) {
                float acc[LANES];
                float tr = trans[j];
                for (int l = 0; l < LANES; l++) acc[l] = p[l] + tr;
                for (int64_t i = 1; i < K; i++) maxplus8(acc, p + i * LANES, trans[i * K + j]);
                for (int l = 0; l < LANES; l++) cur[j * LANES + l] = acc[l] + e[j * LANES + l];
            }
        }
        for (int64_t l = 0; l < n; l++) {
            const int64_t L = lengths[r0 + l];
            int64_t *out = paths + (size_t)(r0 + l) * T;
            const float *last = sc + (size_t)(L - 1) * K * LANES;
            int64_t tag = 0;
            float top = last[l] + end[0];
            for (int64_t j = 1; j < K; j++) {
                float v = last[j * LANES + l] + end[j];
                if (v > top) {
                    top = v;
                    tag = j;
                }
            }
            for (int64_t t = L - 1; t < T; t++) out[t] = tag;
            for (int64_t t = L - 1; t > 0; t--) {
                const float *p = sc + (size_t)(t - 1) * K * LANES;
                int64_t arg = 0;
                float bestv = p[l] + trans[tag];
                for (int64_t i = 1; i < K; i++) {
                    float v = p[i * LANES + l] + trans[i * K + tag];
                    if (v > bestv) {
                        bestv = v;
                        arg = i;
                    }
                }
                tag = arg;
                out[t - 1] = tag;
            }
        }
    }
    free(emT);
    free(sc);
    return 0;
}

/* Posterior marginals p(y_t = k | x) of a linear-chain CRF by forward-backward in log space.
 *
 * Same inputs as ner_viterbi (start, trans and end with the constraint penalties already added), and
 * the same arithmetic as ConstrainedCRF.marginals' torch implementation, in float64: every step is a
 * log-sum-exp over the previous tag written as one small product in exp space, each side shifted by its
 * maximum (the state vector by its max, the transition matrix by its column max for the forward pass and
 * its row max for the backward pass), so nothing overflows. Where that product underflows (below
 * EXACT_BELOW: the scores of one step span more than ~650, so the terms that survived the shift may all
 * be negligible or forbidden) the entry is recomputed as an exact log-sum-exp over the K terms, so the
 * marginals stay exact at any scale; a state that no allowed path reaches at all gets a very low but
 * finite score, never NaN.
 * Only the forward scores are stored ((T, K) doubles per row); the backward pass runs from the row's end
 * and writes the posteriors as it goes. Rows [b0, b1) are computed; out (B, T, K) float32, padded steps 0.
 * Returns 0, or -1 when memory could not be allocated.
 */
#include <float.h>
#include <math.h>

#define EXACT_BELOW 1e-280

/* log sum_i exp(x[i * xs] + y[i * ys]) over K terms, exactly (max-shifted) */
static double lse2(const double *x, int64_t xs, const double *y, int64_t ys, int64_t K) {
    double m = -DBL_MAX;
    for (int64_t i = 0; i < K; i++) {
        double v = x[i * xs] + y[i * ys];
        m = v > m ? v : m;
    }
    double s = 0.0;
    for (int64_t i = 0; i < K; i++) s += exp(x[i * xs] + y[i * ys] - m);
    return log(s) + m;
}

int ner_marginals(const float *em, int64_t B, int64_t T, int64_t K, const float *start,
                  const float *trans, const float *end, const int64_t *lengths, float *out,
                  int64_t b0, int64_t b1) {
    double *tr = (double *)malloc(sizeof(double) * (size_t)K * (size_t)K); /* trans as double [i][j] */
    double *ed = (double *)malloc(sizeof(double) * (size_t)K);              /* end as double */
    double *ef = (double *)malloc(sizeof(double) * (size_t)K * (size_t)K); /* exp(trans - col max) [i][j] */
    double *eb = (double *)malloc(sizeof(double) * (size_t)K * (size_t)K); /* exp(trans - row max) [i][j] */
    double *cmax = (double *)malloc(sizeof(double) * (size_t)K);
    double *rmax = (double *)malloc(sizeof(double) * (size_t)K);
    double *alpha = (double *)malloc(sizeof(double) * (size_t)T * (size_t)K);
    double *w = (double *)malloc(sizeof(double) * (size_t)K);
    double *beta = (double *)malloc(sizeof(double) * (size_t)K);
    double *nb = (double *)malloc(sizeof(double) * (size_t)K);
    double *nbeta = (double *)malloc(sizeof(double) * (size_t)K);
    int rc = 0;
    (void)B;
    if (!tr || !ed || !ef || !eb || !cmax || !rmax || !alpha || !w || !beta || !nb || !nbeta) {
        rc = -1;
        goto done;
    }
    for (int64_t j = 0; j < K; j++) {
        double c = trans[j], r = trans[j * K];
        for (int64_t i = 1; i < K; i++) {
            if (trans[i * K + j] > c) c = trans[i * K + j];
            if (trans[j * K + i] > r) r = trans[j * K + i];
        }
        cmax[j] = c;
        rmax[j] = r;
    }
    for (int64_t i = 0; i < K; i++) {
        ed[i] = end[i];
        for (int64_t j = 0; j < K; j++) {
            tr[i * K + j] = trans[i * K + j];
            ef[i * K + j] = exp((double)trans[i * K + j] - cmax[j]);
            eb[i * K + j] = exp((double)trans[i * K + j] - rmax[i]);
        }
    }
    for (int64_t b = b0; b < b1; b++) {
        const int64_t L = lengths[b];
        const float *e = em + (size_t)b * T * K;
        float *o = out + (size_t)b * T * K;
        for (int64_t k = 0; k < K; k++) alpha[k] = (double)start[k] + e[k];
        for (int64_t t = 1; t < L; t++) {
            const double *p = alpha + (size_t)(t - 1) * K;
            double *a = alpha + (size_t)t * K;
            double m = p[0];
            for (int64_t i = 1; i < K; i++) m = p[i] > m ? p[i] : m;
            for (int64_t i = 0; i < K; i++) w[i] = exp(p[i] - m);
            for (int64_t j = 0; j < K; j++) {
                double s = 0.0;
                for (int64_t i = 0; i < K; i++) s += w[i] * ef[i * K + j];
                a[j] = (s >= EXACT_BELOW ? log(s) + m + cmax[j] : lse2(p, 1, tr + j, K, K)) + e[t * K + j];
            }
        }
        const double log_z = lse2(alpha + (size_t)(L - 1) * K, 1, ed, 1, K); /* logsumexp alpha + end */
        for (int64_t k = 0; k < K; k++) beta[k] = ed[k];
        for (int64_t t = L - 1;; t--) {
            const double *a = alpha + (size_t)t * K;
            for (int64_t k = 0; k < K; k++) o[t * K + k] = (float)exp(a[k] + beta[k] - log_z);
            if (t == 0) break;
            /* beta_{t-1}(i) = logsumexp_j trans[i][j] + e[t][j] + beta_t(j) */
            double mv = -DBL_MAX;
            for (int64_t j = 0; j < K; j++) {
                nb[j] = e[t * K + j] + beta[j]; /* v_j, kept for the exact path */
                mv = nb[j] > mv ? nb[j] : mv;
            }
            for (int64_t j = 0; j < K; j++) w[j] = exp(nb[j] - mv);
            for (int64_t i = 0; i < K; i++) {
                double acc = 0.0;
                for (int64_t j = 0; j < K; j++) acc += eb[i * K + j] * w[j];
                nbeta[i] = acc >= EXACT_BELOW ? log(acc) + mv + rmax[i] : lse2(tr + i * K, 1, nb, 1, K);
            }
            for (int64_t k = 0; k < K; k++) beta[k] = nbeta[k];
        }
        for (int64_t t = L; t < T; t++)
            for (int64_t k = 0; k < K; k++) o[t * K + k] = 0.0f;
    }
done:
    free(tr);
    free(ed);
    free(nbeta);
    free(ef);
    free(eb);
    free(cmax);
    free(rmax);
    free(alpha);
    free(w);
    free(beta);
    free(nb);
    return rc;
}
