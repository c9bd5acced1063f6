/* An LSTM layer with int8 weights and int8 inputs, for models/native_lstm/probe.py.

   A measurement, not part of the daemon: can a kernel of our own beat ONNX Runtime on the
   GE2E network, whose first layer ONNX Runtime must run in float (its int8 LSTM quantises
   the raw mel-power input, which needs more than 8 bits; docs/models.md)? Here the first
   layer's input product stays float (done by the caller) and only the recurrent product is
   int8, which is what that layer tolerates. Layers 2 and 3 take the previous layer's h,
   bounded by (-1, 1), so their inputs quantise with a fixed step of 1/127 and need no
   per-call range.

   Two paths: AVX-512 VNNI (x86, runtime check) with the whole cell fused into the product,
   and plain C that the compiler vectorises (everything else, e.g. a Pi). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

typedef struct {
    int H, kx, K;     /* hidden units, int8 input columns, kx + H */
    int8_t *w;        /* [4H][K]: gates i, f, g, o; columns: input, then recurrent */
    int8_t *packed;   /* VNNI layout (see pack) or NULL */
    int32_t *off;     /* 128 * row sums: the VNNI path feeds q + 128 as unsigned */
    float *scale;     /* per row: weight scale / 127 (inputs are int8 at 1/127) */
    float *bias;      /* per row */
} vg_layer;

static int has_vnni(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (getenv("VOXGATE_PROBE_PLAIN")) return 0; /* measure the portable path */
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

vg_layer *vg_layer_new(int H, int kx, const int8_t *w, const float *scale, const float *bias) {
    if (H <= 0 || kx < 0) return NULL;
    int G = 4 * H, K = kx + H;
    vg_layer *L = calloc(1, sizeof *L);
    if (!L) return NULL;
    L->H = H; L->kx = kx; L->K = K;
    L->w = malloc((size_t)G * K);
    L->scale = malloc(sizeof(float) * G);
    L->bias = malloc(sizeof(float) * G);
    L->off = malloc(sizeof(int32_t) * G);
    if (!L->w || !L->scale || !L->bias || !L->off) goto fail;
    memcpy(L->w, w, (size_t)G * K);
    memcpy(L->scale, scale, sizeof(float) * G);
    memcpy(L->bias, bias, sizeof(float) * G);
    for (int j = 0; j < G; j++) {
        int32_t s = 0;
        for (int k = 0; k < K; k++) s += w[(size_t)j * K + k];
        L->off[j] = 128 * s;
    }
    if (has_vnni() && H % 16 == 0 && K % 4 == 0) {
        /* 64-byte blocks: 16 units' rows of one gate x 4 columns; per 16 units the four gates'
           blocks for one column group are adjacent, so one pass gives whole cells */
        int KG = K / 4;
        L->packed = aligned_alloc(64, (size_t)G * K);
        if (!L->packed) goto fail;
        for (int u = 0; u < H / 16; u++)
            for (int kg = 0; kg < KG; kg++)
                for (int q = 0; q < 4; q++)
                    for (int jj = 0; jj < 16; jj++)
                        for (int kk = 0; kk < 4; kk++)
                            L->packed[((((size_t)u * KG + kg) * 4 + q) * 16 + jj) * 4 + kk] =
                                w[(size_t)(q * H + u * 16 + jj) * K + kg * 4 + kk];
    }
    return L;
fail:
    free(L->w); free(L->scale); free(L->bias); free(L->off); free(L);
    return NULL;
}

void vg_layer_free(vg_layer *L) {
    if (!L) return;
    free(L->w); free(L->packed); free(L->off); free(L->scale); free(L->bias); free(L);
}

static inline float fast_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
    int32_t ni = (int32_t)(x * 1.44269504f + 128.5f) - 128;
    float n = (float)ni;
    float r = x - n * 0.693145752f - n * 1.42860677e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666667f + r * (0.0416666667f
                + r * (0.00833333333f + r * 0.00138888889f)))));
    union { int32_t i; float f; } two_n = { .i = (ni + 127) << 23 };
    return p * two_n.f;
}
static inline float sigm(float x) { return 1.0f / (1.0f + fast_exp(-x)); }
static inline float tanh_(float x) { return 2.0f / (1.0f + fast_exp(-2.0f * x)) - 1.0f; }

/* x in [-1, 1] -> int8 steps of 1/127, plus offset (128 for the unsigned VNNI input) */
static void quantize(int n, const float *restrict x, uint8_t *restrict q, int offset) {
    for (int i = 0; i < n; i++) {
        float v = x[i] * 127.0f;
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        q[i] = (uint8_t)((int)(v + (v >= 0.0f ? 0.5f : -0.5f)) + offset);
    }
}

#if defined(__x86_64__)
__attribute__((target_clones("avx2", "default")))
#endif
static void step_plain(const vg_layer *L, int B, const int8_t *restrict q, const float *restrict gx,
                       int32_t *restrict acc, float *restrict c, float *restrict h) {
    int H = L->H, G = 4 * H, K = L->K;
    for (int b = 0; b < B; b++) {
        for (int j = 0; j < G; j++) {
            const int8_t *w = L->w + (size_t)j * K, *x = q + (size_t)b * K;
            int32_t s = 0;
            for (int k = 0; k < K; k++) s += (int32_t)w[k] * x[k];
            acc[j] = s;
        }
        float *cb = c + (size_t)b * H, *hb = h + (size_t)b * H;
        const float *g = gx ? gx + (size_t)b * G : NULL;
        for (int k = 0; k < H; k++) {
            float z[4];
            for (int p = 0; p < 4; p++) {
                int j = p * H + k;
                z[p] = L->bias[j] + L->scale[j] * (float)acc[j] + (g ? g[j] : 0.0f);
            }
            float cn = sigm(z[1]) * cb[k] + sigm(z[0]) * tanh_(z[2]);
            cb[k] = cn;
            hb[k] = sigm(z[3]) * tanh_(cn);
        }
    }
}

#if defined(__x86_64__)
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vnni,fma")))
VNNI static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(87.0f)), _mm512_set1_ps(-87.0f));
    __m512i ni = _mm512_sub_epi32(
        _mm512_cvttps_epi32(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504f), _mm512_set1_ps(128.5f))),
        _mm512_set1_epi32(128));
    __m512 n = _mm512_cvtepi32_ps(ni);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-06f), r);
    __m512 p = _mm512_set1_ps(0.00138888889f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.00833333333f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.0416666667f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.166666667f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512 two_n = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(ni, _mm512_set1_epi32(127)), 23));
    return _mm512_mul_ps(p, two_n);
}
VNNI static inline __m512 sig16(__m512 x) {
    __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}
VNNI static inline __m512 tanh16(__m512 x) {
    __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(2.0f), sig16(_mm512_add_ps(x, x))), one);
}

VNNI static inline __attribute__((always_inline)) void step_vnni_nb(
        const vg_layer *L, const uint8_t *q, const float *gx, float *c, float *h, const int nb) {
    /* nb (1..4) batch rows of one step; q rows are K bytes apart, gx/c/h rows 4H/H floats */
    int H = L->H, K = L->K, KG = K / 4;
    const int32_t *x32[4];
    for (int b = 0; b < 4; b++) x32[b] = (const int32_t *)(q + (size_t)(b < nb ? b : 0) * K);
    for (int u = 0; u < H / 16; u++) {
        __m512i a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33;
        a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = _mm512_setzero_si512();
        a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = _mm512_setzero_si512();
        const __m512i *w = (const __m512i *)(L->packed + (size_t)u * KG * 256);
        for (int kg = 0; kg < KG; kg++, w += 4) {
            __m512i w0 = _mm512_load_si512(w), w1 = _mm512_load_si512(w + 1);
            __m512i w2 = _mm512_load_si512(w + 2), w3 = _mm512_load_si512(w + 3);
            __m512i v = _mm512_set1_epi32(x32[0][kg]);
            a00 = _mm512_dpbusd_epi32(a00, v, w0); a01 = _mm512_dpbusd_epi32(a01, v, w1);
            a02 = _mm512_dpbusd_epi32(a02, v, w2); a03 = _mm512_dpbusd_epi32(a03, v, w3);
            if (nb > 1) {
                v = _mm512_set1_epi32(x32[1][kg]);
                a10 = _mm512_dpbusd_epi32(a10, v, w0); a11 = _mm512_dpbusd_epi32(a11, v, w1);
                a12 = _mm512_dpbusd_epi32(a12, v, w2); a13 = _mm512_dpbusd_epi32(a13, v, w3);
            }
            if (nb > 2) {
                v = _mm512_set1_epi32(x32[2][kg]);
                a20 = _mm512_dpbusd_epi32(a20, v, w0); a21 = _mm512_dpbusd_epi32(a21, v, w1);
                a22 = _mm512_dpbusd_epi32(a22, v, w2); a23 = _mm512_dpbusd_epi32(a23, v, w3);
            }
            if (nb > 3) {
                v = _mm512_set1_epi32(x32[3][kg]);
                a30 = _mm512_dpbusd_epi32(a30, v, w0); a31 = _mm512_dpbusd_epi32(a31, v, w1);
                a32 = _mm512_dpbusd_epi32(a32, v, w2); a33 = _mm512_dpbusd_epi32(a33, v, w3);
            }
        }
        /* acc[gate][batch] */
        __m512i acc[4][4] = {{a00, a10, a20, a30}, {a01, a11, a21, a31},
                             {a02, a12, a22, a32}, {a03, a13, a23, a33}};
        for (int b = 0; b < nb; b++) {
            __m512 z[4];
            for (int g = 0; g < 4; g++) {
                int j = g * H + u * 16;
                __m512 a = _mm512_cvtepi32_ps(
                    _mm512_sub_epi32(acc[g][b], _mm512_loadu_si512(L->off + j)));
                __m512 base = _mm512_loadu_ps(L->bias + j);
                if (gx) base = _mm512_add_ps(base, _mm512_loadu_ps(gx + (size_t)b * 4 * H + j));
                z[g] = _mm512_fmadd_ps(a, _mm512_loadu_ps(L->scale + j), base);
            }
            float *cb = c + (size_t)b * H + u * 16, *hb = h + (size_t)b * H + u * 16;
            __m512 cn = _mm512_fmadd_ps(sig16(z[1]), _mm512_loadu_ps(cb),
                                        _mm512_mul_ps(sig16(z[0]), tanh16(z[2])));
            _mm512_storeu_ps(cb, cn);
            _mm512_storeu_ps(hb, _mm512_mul_ps(sig16(z[3]), tanh16(cn)));
        }
    }
}

VNNI static void step_vnni(const vg_layer *L, int B, const uint8_t *q, const float *gx,
                           float *c, float *h) {
    int G = 4 * L->H;
    for (int b = 0; b < B; b += 4) {
        const uint8_t *qb = q + (size_t)b * L->K;
        const float *g = gx ? gx + (size_t)b * G : NULL;
        float *cb = c + (size_t)b * L->H, *hb = h + (size_t)b * L->H;
        switch (B - b >= 4 ? 4 : B - b) {
        case 4: step_vnni_nb(L, qb, g, cb, hb, 4); break;
        case 3: step_vnni_nb(L, qb, g, cb, hb, 3); break;
        case 2: step_vnni_nb(L, qb, g, cb, hb, 2); break;
        default: step_vnni_nb(L, qb, g, cb, hb, 1); break;
        }
    }
}
#endif

/* Run one layer over T steps of B sequences, from zero state.
   x:  [T][B][kx] inputs in [-1, 1] (the previous layer's h), or NULL when kx == 0
   gx: [T][B][4H] float input projection added to the gates, or NULL
   out: [T][B][H] hidden states. Returns 0, or -1 when out of memory. */
int vg_layer_run(const vg_layer *L, int T, int B, const float *x, const float *gx, float *out) {
    int H = L->H, K = L->K, kx = L->kx, off = L->packed ? 128 : 0;
    float *c = calloc((size_t)B * H, sizeof(float));
    float *h = calloc((size_t)B * H, sizeof(float));
    uint8_t *q = malloc((size_t)B * K);
    int32_t *acc = malloc(sizeof(int32_t) * 4 * (size_t)H);
    int rc = -1;
    if (!c || !h || !q || !acc || (kx > 0 && !x)) goto done;
    for (int t = 0; t < T; t++) {
        for (int b = 0; b < B; b++) {
            uint8_t *qb = q + (size_t)b * K;
            if (kx) quantize(kx, x + ((size_t)t * B + b) * kx, qb, off);
            quantize(H, h + (size_t)b * H, qb + kx, off);
        }
        const float *g = gx ? gx + (size_t)t * B * 4 * H : NULL;
#if defined(__x86_64__)
        if (L->packed) step_vnni(L, B, q, g, c, h);
        else
#endif
            step_plain(L, B, (const int8_t *)q, g, acc, c, h);
        memcpy(out + (size_t)t * B * H, h, sizeof(float) * (size_t)B * H);
    }
    rc = 0;
done:
    free(c); free(h); free(q); free(acc);
    return rc;
}

/* For tests: 1 when the AVX-512 VNNI path is used */
int vg_layer_fast(const vg_layer *L) { return L->packed != NULL; }
