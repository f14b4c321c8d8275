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
 * constraints already applied: a forbidden entry is -INFINITY (max and + handle it exactly; no +inf
 * ever meets it), so the path is the best allowed one whatever the emissions. lengths (B) in [1, T];
 * paths (B, T) int64 out: steps past a row's length repeat its last tag; a row with no allowed path at
 * all (its best score is -inf) is all -1, for the caller to decode again with finite penalties.
 * Emissions may be -inf (per-position tag masks, e.g. a user dictionary's expanded states): a block
 * with any such entry runs a sparse recursion that skips states no row of the block can be in (as
 * sources and as targets), so masked-off states cost next to nothing; the result is the same.
 * Returns 0, or -1 when memory could not be allocated.
 */
#include <math.h>
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

/* Whether any of the 8 lanes is above -inf (a state some row of the block can be in, or may take). */
static inline int any_live8(const float *p) {
#if defined(__AVX__)
    return _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), _mm256_set1_ps(-INFINITY), _CMP_GT_OQ)) != 0;
#else
    for (int l = 0; l < LANES; l++)
        if (p[l] > -INFINITY) return 1;
    return 0;
#endif
}

int ner_viterbi(const float *em, int64_t B, int64_t T, int64_t K, const float *start,
                const float *trans, const float *end, const int64_t *lengths, int64_t *paths,
                int64_t b0, int64_t b1) {
    float *emT = (float *)malloc(sizeof(float) * (size_t)T * (size_t)K * LANES);
    float *sc = (float *)malloc(sizeof(float) * (size_t)T * (size_t)K * LANES);
    int64_t *live = (int64_t *)malloc(sizeof(int64_t) * (size_t)K);
    if (emT == NULL || sc == NULL || live == NULL) {
        free(emT);
        free(sc);
        free(live);
        return -1;
    }
    (void)B;
    for (int64_t r0 = b0; r0 < b1; r0 += LANES) {
        const int64_t n = (b1 - r0) < LANES ? (b1 - r0) : LANES;
        int64_t tmax = 1;
        for (int64_t l = 0; l < n; l++)
            if (lengths[r0 + l] > tmax) tmax = lengths[r0 + l];
        /* transpose this block's emissions to (t, k, lane); unused lanes get zeros */
        int masked = 0; /* any -inf emission (per-position masks): then the sparse recursion below */
        for (int64_t t = 0; t < tmax; t++)
            for (int64_t k = 0; k < K; k++) {
                float *dst = emT + ((size_t)t * K + k) * LANES;
                for (int64_t l = 0; l < LANES; l++) {
                    dst[l] = l < n ? em[((size_t)(r0 + l) * T + t) * K + k] : 0.0f;
                    masked |= !(dst[l] > -INFINITY);
                }
            }
        for (int64_t k = 0; k < K; k++)
            for (int l = 0; l < LANES; l++) sc[k * LANES + l] = emT[k * LANES + l] + start[k];
        for (int64_t t = 1; t < tmax; t++) {
            const float *p = sc + (size_t)(t - 1) * K * LANES;
            float *cur = sc + (size_t)t * K * LANES;
            const float *e = emT + (size_t)t * K * LANES;
            if (!masked) {
                for (int64_t j = 0; j < K; j++) {
                    float acc[LANES];
                    float tr = trans[j];
                    for (int l = 0; l < LANES; l++) acc[l] = p[l] + tr;
                    for (int64_t i = 1; i < K; i++) maxplus8(acc, p + i * LANES, trans[i * K + j]);
                    for (int l = 0; l < LANES; l++) cur[j * LANES + l] = acc[l] + e[j * LANES + l];
                }
                continue;
            }
            /* -inf scores (states no row of the block can be in: per-position masks, as a dictionary's
             * expanded states give) are skipped as sources and as targets; max is exact in any order */
            int64_t n_live = 0;
            for (int64_t i = 0; i < K; i++)
                if (any_live8(p + i * LANES)) live[n_live++] = i;
            for (int64_t j = 0; j < K; j++) {
                float acc[LANES];
                for (int l = 0; l < LANES; l++) acc[l] = -INFINITY;
                if (any_live8(e + j * LANES))
                    for (int64_t a = 0; a < n_live; a++)
                        maxplus8(acc, p + live[a] * LANES, trans[live[a] * K + j]);
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
            if (!(top > -INFINITY)) { /* no allowed path */
                for (int64_t t = 0; t < T; t++) out[t] = -1;
                continue;
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
    free(live);
    return 0;
}

/* Posterior marginals p(y_t = k | x) of a linear-chain CRF by forward-backward in log space.
 *
 * Same inputs as ner_viterbi (start, trans and end with forbidden entries -INFINITY), and
 * the same arithmetic as ConstrainedCRF.marginals' torch implementation, in float64: every step is a
 * log-sum-exp over the previous tag written as one small product in exp space, each side shifted by its
 * maximum (the state vector by its max, the transition matrix by its column max for the forward pass and
 * its row max for the backward pass), so nothing overflows. Where that product underflows (below
 * EXACT_BELOW: the scores of one step span more than ~650, so the terms that survived the shift may all
 * be negligible or forbidden) the entry is recomputed as an exact log-sum-exp over the K terms, so the
 * marginals stay exact at any scale; a state that no allowed path reaches gets exactly -INFINITY (a
 * column or row of trans with no allowed entry contributes 0 to the product instead of exp(-inf - -inf),
 * and lse2 shifts by -DBL_MAX, never by -inf). A row with no allowed path at all (log Z = -inf) gets NaN
 * at every step, for the caller to compute again with finite penalties. States at -inf (masked-off
 * emissions) are skipped in the sums (their terms are exactly 0), so masks make steps cheaper.
 * Only the forward scores are stored ((T, K) doubles per row); the backward pass runs from the row's end
 * and writes the posteriors as it goes. Rows [b0, b1) are computed; out (B, T, K) float32, padded steps 0.
 * Returns 0, or -1 when memory could not be allocated.
 */
#include <float.h>

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

/* Scores shared by the forward-backward kernels: trans as double, exp(trans - column max) for the forward
 * step and exp(trans - row max) for the backward step. */
typedef struct {
    int64_t K;
    double *tr, *ef, *eb, *cmax, *rmax, *w, *nb;
    int64_t *live; /* indices of the states above -inf in the current step */
} Scores;

static void scores_free(Scores *s) {
    free(s->tr);
    free(s->ef);
    free(s->eb);
    free(s->cmax);
    free(s->rmax);
    free(s->w);
    free(s->nb);
    free(s->live);
}

static int scores_init(Scores *s, const float *trans, int64_t K) {
    s->K = K;
    s->tr = (double *)malloc(sizeof(double) * (size_t)K * (size_t)K);
    s->ef = (double *)malloc(sizeof(double) * (size_t)K * (size_t)K);
    s->eb = (double *)malloc(sizeof(double) * (size_t)K * (size_t)K);
    s->cmax = (double *)malloc(sizeof(double) * (size_t)K);
    s->rmax = (double *)malloc(sizeof(double) * (size_t)K);
    s->w = (double *)malloc(sizeof(double) * (size_t)K);
    s->nb = (double *)malloc(sizeof(double) * (size_t)K);
    s->live = (int64_t *)malloc(sizeof(int64_t) * (size_t)K);
    if (!s->tr || !s->ef || !s->eb || !s->cmax || !s->rmax || !s->w || !s->nb || !s->live) return -1;
    for (int64_t j = 0; j < K; j++) {
        double c = trans[j], r = trans[j * K];
        for (int64_t i = 1; i < K; i++) {
            if (trans[i * K + j] > c) c = trans[i * K + j];
            if (trans[j * K + i] > r) r = trans[j * K + i];
        }
        /* an all-forbidden column / row: shift by 0, so its entries give exp(-inf) = 0, not NaN */
        s->cmax[j] = isinf(c) ? 0.0 : c;
        s->rmax[j] = isinf(r) ? 0.0 : r;
    }
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < K; j++) {
            s->tr[i * K + j] = trans[i * K + j];
            s->ef[i * K + j] = exp((double)trans[i * K + j] - s->cmax[j]);
            s->eb[i * K + j] = exp((double)trans[i * K + j] - s->rmax[i]);
        }
    return 0;
}

/* a[j] = logsumexp_i p[i] + trans[i][j], plus e[j]: one matrix-vector product in exp space, exact
 * (lse2) where it would underflow */
static void alpha_step(Scores *s, const double *p, double *a, const float *e) {
    const int64_t K = s->K;
    double m = p[0];
    for (int64_t i = 1; i < K; i++) m = p[i] > m ? p[i] : m;
    if (isinf(m)) m = 0.0; /* no state reachable: every term is exp(-inf) = 0, then lse2 gives -inf */
    int64_t n_live = 0; /* states with alpha > -inf: the only terms that are not exactly 0 */
    for (int64_t i = 0; i < K; i++)
        if (p[i] > -INFINITY) {
            s->w[i] = exp(p[i] - m);
            s->live[n_live++] = i;
        }
    for (int64_t j = 0; j < K; j++) {
        if (!(e[j] > -INFINITY)) { /* a masked-off state: -inf whatever comes before */
            a[j] = -INFINITY;
            continue;
        }
        double acc = 0.0;
        if (n_live == K) /* dense: the plain loop, which the compiler vectorises */
            for (int64_t i = 0; i < K; i++) acc += s->w[i] * s->ef[i * K + j];
        else
            for (int64_t q = 0; q < n_live; q++) acc += s->w[s->live[q]] * s->ef[s->live[q] * K + j];
        a[j] = (acc >= EXACT_BELOW ? log(acc) + m + s->cmax[j] : lse2(p, 1, s->tr + j, K, K)) + e[j];
    }
}

/* beta_{t-1}(i) = logsumexp_j trans[i][j] + v[j], with v[j] = e_t[j] + beta_t[j] (written to s->nb).
 * Given e_prev (the emissions of step t-1), a state masked off there (-inf) gets -inf without the sum:
 * its marginal is 0 and the next step adds its -inf emission anyway, so nothing changes but the time. */
static void beta_step(Scores *s, const double *beta, const float *e, const float *e_prev, double *out) {
    const int64_t K = s->K;
    double mv = -DBL_MAX;
    int64_t n_live = 0;
    for (int64_t j = 0; j < K; j++) {
        s->nb[j] = e[j] + beta[j];
        mv = s->nb[j] > mv ? s->nb[j] : mv;
        if (s->nb[j] > -INFINITY) s->live[n_live++] = j;
    }
    for (int64_t q = 0; q < n_live; q++) s->w[s->live[q]] = exp(s->nb[s->live[q]] - mv);
    for (int64_t i = 0; i < K; i++) {
        if (e_prev != NULL && !(e_prev[i] > -INFINITY)) {
            out[i] = -INFINITY;
            continue;
        }
        double acc = 0.0;
        if (n_live == K)
            for (int64_t j = 0; j < K; j++) acc += s->eb[i * K + j] * s->w[j];
        else
            for (int64_t q = 0; q < n_live; q++) acc += s->eb[i * K + s->live[q]] * s->w[s->live[q]];
        out[i] = acc >= EXACT_BELOW ? log(acc) + mv + s->rmax[i] : lse2(s->tr + i * K, 1, s->nb, 1, K);
    }
}

int ner_marginals(const float *em, int64_t B, int64_t T, int64_t K, const float *start,
                  const float *trans, const float *end, const int64_t *lengths, float *out,
                  int64_t b0, int64_t b1) {
    Scores sc = {0};
    double *ed = (double *)malloc(sizeof(double) * (size_t)K); /* end as double */
    double *alpha = (double *)malloc(sizeof(double) * (size_t)T * (size_t)K);
    double *beta = (double *)malloc(sizeof(double) * (size_t)K);
    double *nbeta = (double *)malloc(sizeof(double) * (size_t)K);
    int rc = 0;
    (void)B;
    if (scores_init(&sc, trans, K) != 0 || !ed || !alpha || !beta || !nbeta) {
        rc = -1;
        goto done;
    }
    for (int64_t i = 0; i < K; i++) ed[i] = end[i];
    for (int64_t b = b0; b < b1; b++) {
        const int64_t L = lengths[b];
        const float *e = em + (size_t)b * T * K;
        float *o = out + (size_t)b * T * K;
        for (int64_t k = 0; k < K; k++) alpha[k] = (double)start[k] + e[k];
        for (int64_t t = 1; t < L; t++)
            alpha_step(&sc, alpha + (size_t)(t - 1) * K, alpha + (size_t)t * K, e + t * K);
        const double log_z = lse2(alpha + (size_t)(L - 1) * K, 1, ed, 1, K); /* logsumexp alpha + end */
        if (!(log_z > -INFINITY)) { /* no allowed path: NaN, for the caller to redo with penalties */
            for (int64_t i = 0; i < T * K; i++) o[i] = NAN;
            continue;
        }
        for (int64_t k = 0; k < K; k++) beta[k] = ed[k];
        for (int64_t t = L - 1;; t--) {
            const double *a = alpha + (size_t)t * K;
            for (int64_t k = 0; k < K; k++) o[t * K + k] = (float)exp(a[k] + beta[k] - log_z);
            if (t == 0) break;
            beta_step(&sc, beta, e + t * K, e + (t - 1) * K, nbeta);
            for (int64_t k = 0; k < K; k++) beta[k] = nbeta[k];
        }
        for (int64_t t = L; t < T; t++)
            for (int64_t k = 0; k < K; k++) o[t * K + k] = 0.0f;
    }
done:
    scores_free(&sc);
    free(ed);
    free(alpha);
    free(beta);
    free(nbeta);
    return rc;
}

/* Log-partition of the unconstrained CRF and its gradient, for the training loss.
 *
 * Per row b of length L: logz[b] = log sum over all tag paths of exp(score); marg (B, T, K) float32 out:
 * p(y_t = k) (d logz / d em[b, t, k]; 0 past L; row t = 0 is also d logz / d start, row L-1 is
 * d logz / d end); pair (B, K, K) float64 out: sum over t of p(y_{t-1} = i, y_t = j) (d logz / d trans).
 * Forward-backward in float64 in the log domain (as ner_marginals); the pairwise sums are accumulated as
 * outer products of max-shifted forward and backward vectors, times exp(trans - max trans) at the end,
 * with an exact per-element fallback for a step whose shift would overflow. Returns 0, or -1 on failed
 * allocation. */
int ner_crf_logz_grad(const float *em, int64_t B, int64_t T, int64_t K, const float *start,
                      const float *trans, const float *end, const int64_t *lengths, double *logz,
                      float *marg, double *pair, int64_t b0, int64_t b1) {
    Scores sc = {0};
    double *ed = (double *)malloc(sizeof(double) * (size_t)K);
    double *et = (double *)malloc(sizeof(double) * (size_t)K * (size_t)K); /* exp(trans - tmax) */
    double *alpha = (double *)malloc(sizeof(double) * (size_t)T * (size_t)K);
    double *beta = (double *)malloc(sizeof(double) * (size_t)K);
    double *nbeta = (double *)malloc(sizeof(double) * (size_t)K);
    double *wa = (double *)malloc(sizeof(double) * (size_t)K);
    double *wb = (double *)malloc(sizeof(double) * (size_t)K);
    double *acc = (double *)malloc(sizeof(double) * (size_t)K * (size_t)K); /* shifted pairwise sums */
    int rc = 0;
    (void)B;
    if (scores_init(&sc, trans, K) != 0 || !ed || !et || !alpha || !beta || !nbeta || !wa || !wb || !acc) {
        rc = -1;
        goto done;
    }
    double tmax = -DBL_MAX;
    for (int64_t i = 0; i < K * K; i++) tmax = sc.tr[i] > tmax ? sc.tr[i] : tmax;
    for (int64_t i = 0; i < K * K; i++) et[i] = exp(sc.tr[i] - tmax);
    for (int64_t i = 0; i < K; i++) ed[i] = end[i];
    for (int64_t b = b0; b < b1; b++) {
        const int64_t L = lengths[b];
        const float *e = em + (size_t)b * T * K;
        float *o = marg + (size_t)b * T * K;
        double *pr = pair + (size_t)b * K * K;
        for (int64_t k = 0; k < K; k++) alpha[k] = (double)start[k] + e[k];
        for (int64_t t = 1; t < L; t++)
            alpha_step(&sc, alpha + (size_t)(t - 1) * K, alpha + (size_t)t * K, e + t * K);
        const double log_z = lse2(alpha + (size_t)(L - 1) * K, 1, ed, 1, K);
        logz[b] = log_z;
        for (int64_t i = 0; i < K * K; i++) acc[i] = pr[i] = 0.0;
        for (int64_t k = 0; k < K; k++) beta[k] = ed[k];
        for (int64_t t = L - 1;; t--) {
            const double *a = alpha + (size_t)t * K;
            for (int64_t k = 0; k < K; k++) o[t * K + k] = (float)exp(a[k] + beta[k] - log_z);
            if (t == 0) break;
            /* with v_j = e_t(j) + beta_t(j) (left in sc.nb by beta_step):
             * p(y_{t-1} = i, y_t = j) = exp(alpha_{t-1}(i) + trans(i, j) + v_j - log_z) */
            const double *p = alpha + (size_t)(t - 1) * K;
            beta_step(&sc, beta, e + t * K, NULL, nbeta);
            const double *v = sc.nb;
            double ma = -DBL_MAX, mb = -DBL_MAX;
            for (int64_t k = 0; k < K; k++) {
                ma = p[k] > ma ? p[k] : ma;
                mb = v[k] > mb ? v[k] : mb;
            }
            const double scale = exp(ma + mb + tmax - log_z);
            if (isfinite(scale)) {
                for (int64_t k = 0; k < K; k++) {
                    wa[k] = exp(p[k] - ma) * scale;
                    wb[k] = exp(v[k] - mb);
                }
                for (int64_t i = 0; i < K; i++)
                    for (int64_t j = 0; j < K; j++) acc[i * K + j] += wa[i] * wb[j];
            } else { /* exact, element by element */
                for (int64_t i = 0; i < K; i++)
                    for (int64_t j = 0; j < K; j++) pr[i * K + j] += exp(p[i] + sc.tr[i * K + j] + v[j] - log_z);
            }
            for (int64_t k = 0; k < K; k++) beta[k] = nbeta[k];
        }
        for (int64_t i = 0; i < K * K; i++) pr[i] += acc[i] * et[i];
        for (int64_t t = L; t < T; t++)
            for (int64_t k = 0; k < K; k++) o[t * K + k] = 0.0f;
    }
done:
    scores_free(&sc);
    free(ed);
    free(et);
    free(alpha);
    free(beta);
    free(nbeta);
    free(wa);
    free(wb);
    free(acc);
    return rc;
}
