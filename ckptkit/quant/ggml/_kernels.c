/*
 * ckptkit.quant.ggml._kernels -- ggml's reference block quantizers as a small CPython extension.
 *
 * This file is a port of the reference (scalar, "_ref") quantizers and the dequantizers of
 * ggml (https://github.com/ggml-org/ggml, src/ggml-quants.c, src/ggml-common.h and the
 * fp16 conversion of src/ggml-impl.h; the test vectors were made at ggml commit d99724f2).
 *   ggml is Copyright (c) 2023-2024 The ggml authors, released under the MIT License:
 *   Permission is hereby granted, free of charge, to any person obtaining a copy of this
 *   software and associated documentation files (the "Software"), to deal in the Software
 *   without restriction, including without limitation the rights to use, copy, modify, merge,
 *   publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons
 *   to whom the Software is furnished to do so, subject to the following conditions: The above
 *   copyright notice and this permission notice shall be included in all copies or substantial
 *   portions of the Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.
 *
 * Why a port and not a dependency: gguf-py (PyPI `gguf`) quantizes only F16/BF16/Q8_0/Q4_x/Q5_x
 * in numpy and raises NotImplementedError for the K-quants, and there is no installable Python
 * binding that exposes ggml's quantize_row_*_ref functions. Building all of ggml for a few
 * hundred lines of scalar code is not worth it, so the functions below are copied (with only
 * mechanical changes: no asserts, static linkage, explicit types) and must stay bit-exact with
 * ggml's own output. Rules that keep them exact:
 *   - compile with -ffp-contract=off -fno-fast-math and without -march=native (no FMA
 *     contraction, no reassociation: every float sum runs strictly left to right as in ggml);
 *   - float evaluation in float (FLT_EVAL_METHOD == 0, i.e. SSE, not x87);
 *   - the loops run with the default IEEE environment (round to nearest, no flush-to-zero /
 *     denormals-are-zero), which we force around each call in case the process changed it.
 * Do not "optimise" the arithmetic here: any change of evaluation order changes the bytes.
 *
 * Python API (buffer protocol; the GIL is released around the loops):
 *   quantize(type_id, src, n_rows, n_per_row, dst[, weights])  src: C-contiguous float32, dst: writable bytes,
 *                                                     weights: n_per_row float32 (ggml's weighted search)
 *   dequantize(type_id, src, n_rows, n_per_row, dst)  src: bytes-like, dst: writable float32
 *   TYPES: {type_id: (name, block_size, type_size)}   type ids are gguf.GGMLQuantizationType values
 *   get_simd() / set_simd(name) / SIMD_AVAILABLE      the x86-64 SIMD path in use (same bytes, see below)
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <assert.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <fenv.h>

#if defined(__x86_64__) || defined(_M_X64) || (defined(__i386__) && defined(__SSE2_MATH__))
#include <xmmintrin.h>
#define CKPT_HAVE_MXCSR 1
#endif

#if defined(__FAST_MATH__)
#error "_kernels.c must not be built with -ffast-math: ggml's bytes depend on exact float32 arithmetic"
#endif
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#error "_kernels.c needs FLT_EVAL_METHOD == 0 (float arithmetic in float, e.g. SSE rather than x87)"
#endif
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#endif
#ifndef MAX
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#endif

#define GROUP_MAX_EPS 1e-15f

/* ---------------------------------------------------------------------------------------------
 * fp16 <-> fp32 (ggml-impl.h, the portable path; ref: https://github.com/Maratyszcza/FP16)
 * ------------------------------------------------------------------------------------------- */

typedef uint16_t ggml_half;

static inline float fp32_from_bits(uint32_t w) {
    float f;
    memcpy(&f, &w, sizeof(f));
    return f;
}

static inline uint32_t fp32_to_bits(float f) {
    uint32_t w;
    memcpy(&w, &f, sizeof(w));
    return w;
}

static inline float ggml_compute_fp16_to_fp32(ggml_half h) {
    const uint32_t w = (uint32_t) h << 16;
    const uint32_t sign = w & UINT32_C(0x80000000);
    const uint32_t two_w = w + w;

    const uint32_t exp_offset = UINT32_C(0xE0) << 23;
    const float exp_scale = 0x1.0p-112f;
    const float normalized_value = fp32_from_bits((two_w >> 4) + exp_offset) * exp_scale;

    const uint32_t magic_mask = UINT32_C(126) << 23;
    const float magic_bias = 0.5f;
    const float denormalized_value = fp32_from_bits((two_w >> 17) | magic_mask) - magic_bias;

    const uint32_t denormalized_cutoff = UINT32_C(1) << 27;
    const uint32_t result = sign |
        (two_w < denormalized_cutoff ? fp32_to_bits(denormalized_value) : fp32_to_bits(normalized_value));
    return fp32_from_bits(result);
}

static inline ggml_half ggml_compute_fp32_to_fp16(float f) {
    const float scale_to_inf = 0x1.0p+112f;
    const float scale_to_zero = 0x1.0p-110f;
    float base = (fabsf(f) * scale_to_inf) * scale_to_zero;

    const uint32_t w = fp32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & UINT32_C(0x80000000);
    uint32_t bias = shl1_w & UINT32_C(0xFF000000);
    if (bias < UINT32_C(0x71000000)) {
        bias = UINT32_C(0x71000000);
    }

    base = fp32_from_bits((bias >> 1) + UINT32_C(0x07800000)) + base;
    const uint32_t bits = fp32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & UINT32_C(0x00007C00);
    const uint32_t mantissa_bits = bits & UINT32_C(0x00000FFF);
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (ggml_half) ((sign >> 16) | (shl1_w > UINT32_C(0xFF000000) ? UINT16_C(0x7E00) : nonsign));
}

/* ggml (x86 without F16C) reads fp16 through a table filled from ggml_compute_fp16_to_fp32. */
static float table_f32_f16[1 << 16];

#define GGML_FP16_TO_FP32(x) (table_f32_f16[(uint16_t) (x)])
#define GGML_FP32_TO_FP16(x) ggml_compute_fp32_to_fp16(x)

/* ---------------------------------------------------------------------------------------------
 * block layouts (ggml-common.h)
 * ------------------------------------------------------------------------------------------- */

#define QK4_0 32
typedef struct {
    ggml_half d;           /* delta */
    uint8_t qs[QK4_0 / 2]; /* nibbles / quants */
} block_q4_0;

#define QK4_1 32
typedef struct {
    ggml_half d;           /* delta */
    ggml_half m;           /* min */
    uint8_t qs[QK4_1 / 2]; /* nibbles / quants */
} block_q4_1;

#define QK5_0 32
typedef struct {
    ggml_half d;           /* delta */
    uint8_t qh[4];         /* 5-th bit of quants */
    uint8_t qs[QK5_0 / 2]; /* nibbles / quants */
} block_q5_0;

#define QK5_1 32
typedef struct {
    ggml_half d;           /* delta */
    ggml_half m;           /* min */
    uint8_t qh[4];         /* 5-th bit of quants */
    uint8_t qs[QK5_1 / 2]; /* nibbles / quants */
} block_q5_1;

#define QK8_0 32
typedef struct {
    ggml_half d;       /* delta */
    int8_t qs[QK8_0];  /* quants */
} block_q8_0;

#define QK_K 256
#define K_SCALE_SIZE 12

typedef struct {
    uint8_t scales[QK_K / 16]; /* scales and mins, quantized with 4 bits */
    uint8_t qs[QK_K / 4];      /* quants */
    ggml_half d;               /* super-block scale for quantized scales */
    ggml_half dmin;            /* super-block scale for quantized mins */
} block_q2_K;

typedef struct {
    uint8_t hmask[QK_K / 8]; /* quants - high bit */
    uint8_t qs[QK_K / 4];    /* quants - low 2 bits */
    uint8_t scales[12];      /* scales, quantized with 6 bits */
    ggml_half d;             /* super-block scale */
} block_q3_K;

typedef struct {
    ggml_half d;                    /* super-block scale for quantized scales */
    ggml_half dmin;                 /* super-block scale for quantized mins */
    uint8_t scales[K_SCALE_SIZE];   /* scales and mins, quantized with 6 bits */
    uint8_t qs[QK_K / 2];           /* 4-bit quants */
} block_q4_K;

typedef struct {
    ggml_half d;                    /* super-block scale for quantized scales */
    ggml_half dmin;                 /* super-block scale for quantized mins */
    uint8_t scales[K_SCALE_SIZE];   /* scales and mins, quantized with 6 bits */
    uint8_t qh[QK_K / 8];           /* quants, high bit */
    uint8_t qs[QK_K / 2];           /* quants, low 4 bits */
} block_q5_K;

typedef struct {
    uint8_t ql[QK_K / 2];      /* quants, lower 4 bits */
    uint8_t qh[QK_K / 4];      /* quants, upper 2 bits */
    int8_t scales[QK_K / 16];  /* scales, quantized with 8 bits */
    ggml_half d;               /* super-block scale */
} block_q6_K;

_Static_assert(sizeof(block_q4_0) == 18, "wrong q4_0 block size/padding");
_Static_assert(sizeof(block_q4_1) == 20, "wrong q4_1 block size/padding");
_Static_assert(sizeof(block_q5_0) == 22, "wrong q5_0 block size/padding");
_Static_assert(sizeof(block_q5_1) == 24, "wrong q5_1 block size/padding");
_Static_assert(sizeof(block_q8_0) == 34, "wrong q8_0 block size/padding");
_Static_assert(sizeof(block_q2_K) == 84, "wrong q2_K block size/padding");
_Static_assert(sizeof(block_q3_K) == 110, "wrong q3_K block size/padding");
_Static_assert(sizeof(block_q4_K) == 144, "wrong q4_K block size/padding");
_Static_assert(sizeof(block_q5_K) == 176, "wrong q5_K block size/padding");
_Static_assert(sizeof(block_q6_K) == 210, "wrong q6_K block size/padding");

/* ---------------------------------------------------------------------------------------------
 * 32-element block quantizers (ggml-quants.c, quantize_row_*_ref)
 * ------------------------------------------------------------------------------------------- */

static void quantize_row_q4_0_ref(const float * restrict x, block_q4_0 * restrict y, int64_t k) {
    static const int qk = QK4_0;
    const int nb = k / qk;

    for (int i = 0; i < nb; i++) {
        float amax = 0.0f; /* absolute max */
        float max  = 0.0f;

        for (int j = 0; j < qk; j++) {
            const float v = x[i*qk + j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max  = v;
            }
        }

        const float d  = max / -8;
        const float id = d ? 1.0f/d : 0.0f;

        y[i].d = GGML_FP32_TO_FP16(d);

        for (int j = 0; j < qk/2; ++j) {
            const float x0 = x[i*qk + 0    + j]*id;
            const float x1 = x[i*qk + qk/2 + j]*id;

            const uint8_t xi0 = MIN(15, (int8_t)(x0 + 8.5f));
            const uint8_t xi1 = MIN(15, (int8_t)(x1 + 8.5f));

            y[i].qs[j]  = xi0;
            y[i].qs[j] |= xi1 << 4;
        }
    }
}

static void quantize_row_q4_1_ref(const float * restrict x, block_q4_1 * restrict y, int64_t k) {
    const int qk = QK4_1;
    const int nb = k / qk;

    for (int i = 0; i < nb; i++) {
        float min = FLT_MAX;
        float max = -FLT_MAX;

        for (int j = 0; j < qk; j++) {
            const float v = x[i*qk + j];

            if (v < min) min = v;
            if (v > max) max = v;
        }

        const float d  = (max - min) / ((1 << 4) - 1);
        const float id = d ? 1.0f/d : 0.0f;

        y[i].d = GGML_FP32_TO_FP16(d);
        y[i].m = GGML_FP32_TO_FP16(min);

        for (int j = 0; j < qk/2; ++j) {
            const float x0 = (x[i*qk + 0    + j] - min)*id;
            const float x1 = (x[i*qk + qk/2 + j] - min)*id;

            const uint8_t xi0 = MIN(15, (int8_t)(x0 + 0.5f));
            const uint8_t xi1 = MIN(15, (int8_t)(x1 + 0.5f));

            y[i].qs[j]  = xi0;
            y[i].qs[j] |= xi1 << 4;
        }
    }
}

static void quantize_row_q5_0_ref(const float * restrict x, block_q5_0 * restrict y, int64_t k) {
    static const int qk = QK5_0;
    const int nb = k / qk;

    for (int i = 0; i < nb; i++) {
        float amax = 0.0f; /* absolute max */
        float max  = 0.0f;

        for (int j = 0; j < qk; j++) {
            const float v = x[i*qk + j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max  = v;
            }
        }

        const float d  = max / -16;
        const float id = d ? 1.0f/d : 0.0f;

        y[i].d = GGML_FP32_TO_FP16(d);

        uint32_t qh = 0;

        for (int j = 0; j < qk/2; ++j) {
            const float x0 = x[i*qk + 0    + j]*id;
            const float x1 = x[i*qk + qk/2 + j]*id;

            const uint8_t xi0 = MIN(31, (int8_t)(x0 + 16.5f));
            const uint8_t xi1 = MIN(31, (int8_t)(x1 + 16.5f));

            y[i].qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);

            /* get the 5-th bit and store it in qh at the right position */
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + qk/2);
        }

        memcpy(&y[i].qh, &qh, sizeof(qh));
    }
}

static void quantize_row_q5_1_ref(const float * restrict x, block_q5_1 * restrict y, int64_t k) {
    const int qk = QK5_1;
    const int nb = k / qk;

    for (int i = 0; i < nb; i++) {
        float min = FLT_MAX;
        float max = -FLT_MAX;

        for (int j = 0; j < qk; j++) {
            const float v = x[i*qk + j];

            if (v < min) min = v;
            if (v > max) max = v;
        }

        const float d  = (max - min) / ((1 << 5) - 1);
        const float id = d ? 1.0f/d : 0.0f;

        y[i].d = GGML_FP32_TO_FP16(d);
        y[i].m = GGML_FP32_TO_FP16(min);

        uint32_t qh = 0;

        for (int j = 0; j < qk/2; ++j) {
            const float x0 = (x[i*qk + 0    + j] - min)*id;
            const float x1 = (x[i*qk + qk/2 + j] - min)*id;

            const uint8_t xi0 = (uint8_t)(x0 + 0.5f);
            const uint8_t xi1 = (uint8_t)(x1 + 0.5f);

            y[i].qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);

            /* get the 5-th bit and store it in qh at the right position */
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + qk/2);
        }

        memcpy(&y[i].qh, &qh, sizeof(y[i].qh));
    }
}

static void quantize_row_q8_0_ref(const float * restrict x, block_q8_0 * restrict y, int64_t k) {
    const int nb = k / QK8_0;

    for (int i = 0; i < nb; i++) {
        float amax = 0.0f; /* absolute max */

        for (int j = 0; j < QK8_0; j++) {
            const float v = x[i*QK8_0 + j];
            amax = MAX(amax, fabsf(v));
        }

        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f/d : 0.0f;

        y[i].d = GGML_FP32_TO_FP16(d);

        for (int j = 0; j < QK8_0; ++j) {
            const float x0 = x[i*QK8_0 + j]*id;

            y[i].qs[j] = roundf(x0);
        }
    }
}

/* F16 rows: one value per "block", converted as GGML_FP32_TO_FP16 / GGML_FP16_TO_FP32 do. */
static void quantize_row_f16_ref(const float * restrict x, ggml_half * restrict y, int64_t k) {
    for (int64_t i = 0; i < k; i++) {
        y[i] = GGML_FP32_TO_FP16(x[i]);
    }
}

static void dequantize_row_f16(const ggml_half * restrict x, float * restrict y, int64_t k) {
    for (int64_t i = 0; i < k; i++) {
        y[i] = GGML_FP16_TO_FP32(x[i]);
    }
}

/* ---------------------------------------------------------------------------------------------
 * x86-64 SIMD versions of the Q8_0, Q5_0 and F16 quantizers, picked at run time (pick_quantize()).
 *
 * Why hand-written: the scalar port above runs Q8_0 at ~1 GB/s (a libm roundf call per value), no
 * faster than gguf-py's numpy; with SIMD these types run at memory speed (10-20 GB/s). ggml's own
 * SIMD quantize_row_q8_0 cannot be copied: it rounds with _mm256_round_ps(_MM_ROUND_NEAREST), i.e.
 * half to even, so its bytes differ from the reference's roundf (half away from zero) on ties.
 * These functions do the reference's arithmetic lane by lane (the same IEEE float operations, each
 * rounded once: no FMA intrinsics, and -ffp-contract=off keeps the compiler from fusing any; the
 * built object has no vfmadd) and produce the same bytes:
 *   - amax as an integer max of the |x| bit patterns: for finite floats the order of the bit
 *     patterns is the order of the values, so this is the reference's max;
 *   - d, id and the fp16 scale in scalar code per block, exactly as in the reference;
 *   - roundf(y) = t + copysign(1, y) where |y - t| >= 0.5, t = trunc(y) (y - t is exact).
 * Blocks where vector and scalar code could part ways (a NaN or inf, or a max so small that id
 * overflows to inf, where the scalar float->int8 conversion is not a saturating one) go to the
 * scalar reference function. The target attributes keep the build generic (no -march flags);
 * tests/quant/test_ggml_simd.py compares every path with the scalar one.
 * ------------------------------------------------------------------------------------------- */

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CKPT_X86_SIMD 1
#include <cpuid.h>
#include <immintrin.h>

/* 1 when the block's max or id rules out the vector code (see above) */
static inline int needs_scalar(uint32_t amax_bits, float id) {
    return amax_bits >= UINT32_C(0x7F800000) || fabsf(id) > FLT_MAX;
}

/* The scalar part of a Q8_0 block, as the reference does it: d from the block's max, id = 1/d, the
 * fp16 scale stored. Returns 0 when the block went to the scalar reference instead (see needs_scalar). */
static inline int q8_0_block_scale(uint32_t amax_bits, const float * xb, block_q8_0 * yb, float * id_out) {
    const float d = fp32_from_bits(amax_bits) / ((1 << 7) - 1);
    const float id = d ? 1.0f/d : 0.0f;
    if (needs_scalar(amax_bits, id)) {
        quantize_row_q8_0_ref(xb, yb, QK8_0);
        return 0;
    }
    yb->d = GGML_FP32_TO_FP16(d);
    *id_out = id;
    return 1;
}

/* The helpers below work on one 32-value block as four (AVX2) or two (AVX-512) vectors, written out
 * rather than as arrays and loops: GCC -O2 does not unroll those and round-trips them through the
 * stack, which halved the speed. */

/* |x| as int32 bit patterns (integer max of these = the float max for finite x) */
__attribute__((target("avx2")))
static inline __m256i abs_bits_avx2(__m256 v) {
    return _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7FFFFFFF));
}

__attribute__((target("avx2")))
static inline uint32_t hmax_epi32_avx2(__m256i m) {
    __m128i h = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    h = _mm_max_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
    h = _mm_max_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
    return (uint32_t) _mm_cvtsi128_si32(h);
}

/* roundf(v * id) as int32: trunc, then one step away from zero where |fraction| >= 0.5 */
__attribute__((target("avx2")))
static inline __m256i q8_0_round_avx2(__m256 v, __m256 vid) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    const __m256 s = _mm256_mul_ps(v, vid);
    const __m256 t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(sign_mask, _mm256_sub_ps(s, t)); /* exact */
    const __m256 away = _mm256_or_ps(_mm256_and_ps(s, sign_mask), _mm256_set1_ps(1.0f)); /* copysign(1, s) */
    const __m256 step = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), away);
    return _mm256_cvttps_epi32(_mm256_add_ps(t, step));
}

/* 32 small int32 (four vectors) -> 32 bytes in order (the packs interleave the 128-bit lanes) */
__attribute__((target("avx2")))
static inline __m256i pack_bytes_avx2(__m256i q0, __m256i q1, __m256i q2, __m256i q3) {
    const __m256i q8 = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
    return _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

__attribute__((target("avx2")))
static void quantize_row_q8_0_avx2(const float * restrict x, block_q8_0 * restrict y, int64_t k) {
    const int nb = k / QK8_0;

    for (int i = 0; i < nb; i++) {
        const float * xb = x + i*QK8_0;
        const __m256 v0 = _mm256_loadu_ps(xb);
        const __m256 v1 = _mm256_loadu_ps(xb + 8);
        const __m256 v2 = _mm256_loadu_ps(xb + 16);
        const __m256 v3 = _mm256_loadu_ps(xb + 24);
        const __m256i m01 = _mm256_max_epi32(abs_bits_avx2(v0), abs_bits_avx2(v1));
        const __m256i m23 = _mm256_max_epi32(abs_bits_avx2(v2), abs_bits_avx2(v3));
        const uint32_t amax_bits = hmax_epi32_avx2(_mm256_max_epi32(m01, m23));

        float id;
        if (!q8_0_block_scale(amax_bits, xb, y + i, &id)) {
            continue;
        }

        const __m256 vid = _mm256_set1_ps(id);
        const __m256i q = pack_bytes_avx2(q8_0_round_avx2(v0, vid), q8_0_round_avx2(v1, vid),
                                          q8_0_round_avx2(v2, vid), q8_0_round_avx2(v3, vid)); /* |q| <= 127 */
        _mm256_storeu_si256((__m256i *) y[i].qs, q);
    }
}

__attribute__((target("avx512f")))
static inline __m128i q8_0_round_avx512(__m512 v, __m512 vid) {
    const __m512i sign_mask = _mm512_set1_epi32((int) UINT32_C(0x80000000));
    const __m512 s = _mm512_mul_ps(v, vid);
    const __m512 t = _mm512_roundscale_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512i frac = _mm512_andnot_si512(sign_mask, _mm512_castps_si512(_mm512_sub_ps(s, t)));
    const __mmask16 up = _mm512_cmp_ps_mask(_mm512_castsi512_ps(frac), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 away = _mm512_castsi512_ps(_mm512_or_si512(                  /* copysign(1, s) */
        _mm512_and_si512(_mm512_castps_si512(s), sign_mask), _mm512_set1_epi32(0x3F800000)));
    return _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, away)));
}

__attribute__((target("avx512f")))
static void quantize_row_q8_0_avx512(const float * restrict x, block_q8_0 * restrict y, int64_t k) {
    const int nb = k / QK8_0;
    const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);

    for (int i = 0; i < nb; i++) {
        const float * xb = x + i*QK8_0;
        const __m512 v0 = _mm512_loadu_ps(xb);
        const __m512 v1 = _mm512_loadu_ps(xb + 16);
        const __m512i a0 = _mm512_and_si512(_mm512_castps_si512(v0), abs_mask);
        const __m512i a1 = _mm512_and_si512(_mm512_castps_si512(v1), abs_mask);
        const uint32_t amax_bits = (uint32_t) _mm512_reduce_max_epi32(_mm512_max_epi32(a0, a1));

        float id;
        if (!q8_0_block_scale(amax_bits, xb, y + i, &id)) {
            continue;
        }

        const __m512 vid = _mm512_set1_ps(id);
        _mm_storeu_si128((__m128i *) y[i].qs, q8_0_round_avx512(v0, vid));
        _mm_storeu_si128((__m128i *) (y[i].qs + 16), q8_0_round_avx512(v1, vid));
    }
}

/* Q5_0: max is the first value of largest magnitude (the reference's strict <), found as the first
 * lane whose |x| bits equal amax_bits; q = MIN(31, (int)(x*id + 16.5f)) with C's truncation; the
 * 5th bits are bit 4 of each q, i.e. bit 7 after a shift by 3, which movemask collects in order. */
__attribute__((target("avx2")))
static inline uint32_t lanes_equal_avx2(__m256i a, __m256i b) {
    return (uint32_t) _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b)));
}

__attribute__((target("avx2")))
static inline __m256i q5_0_quant_avx2(__m256 v, __m256 vid) {
    const __m256 s = _mm256_add_ps(_mm256_mul_ps(v, vid), _mm256_set1_ps(16.5f));
    return _mm256_min_epi32(_mm256_cvttps_epi32(s), _mm256_set1_epi32(31));
}

__attribute__((target("avx2")))
static void quantize_row_q5_0_avx2(const float * restrict x, block_q5_0 * restrict y, int64_t k) {
    const int nb = k / QK5_0;
    const __m128i low4 = _mm_set1_epi8(0x0F);

    for (int i = 0; i < nb; i++) {
        const float * xb = x + i*QK5_0;
        const __m256 v0 = _mm256_loadu_ps(xb);
        const __m256 v1 = _mm256_loadu_ps(xb + 8);
        const __m256 v2 = _mm256_loadu_ps(xb + 16);
        const __m256 v3 = _mm256_loadu_ps(xb + 24);
        const __m256i a0 = abs_bits_avx2(v0), a1 = abs_bits_avx2(v1), a2 = abs_bits_avx2(v2), a3 = abs_bits_avx2(v3);
        const uint32_t amax_bits = hmax_epi32_avx2(_mm256_max_epi32(_mm256_max_epi32(a0, a1),
                                                                    _mm256_max_epi32(a2, a3)));
        float max = 0.0f; /* the reference's value when every x is +-0 */
        if (amax_bits != 0) {
            const __m256i am = _mm256_set1_epi32((int) amax_bits);
            const uint32_t hit = lanes_equal_avx2(a0, am) | lanes_equal_avx2(a1, am) << 8 |
                                 lanes_equal_avx2(a2, am) << 16 | lanes_equal_avx2(a3, am) << 24;
            max = xb[__builtin_ctz(hit)];
        }

        const float d  = max / -16;
        const float id = d ? 1.0f/d : 0.0f;
        if (needs_scalar(amax_bits, id)) {
            quantize_row_q5_0_ref(xb, y + i, QK5_0);
            continue;
        }
        y[i].d = GGML_FP32_TO_FP16(d);

        const __m256 vid = _mm256_set1_ps(id);
        const __m256i q = pack_bytes_avx2(q5_0_quant_avx2(v0, vid), q5_0_quant_avx2(v1, vid),
                                          q5_0_quant_avx2(v2, vid), q5_0_quant_avx2(v3, vid)); /* 0..31 */
        const uint32_t qh = (uint32_t) _mm256_movemask_epi8(_mm256_slli_epi16(q, 3));
        const __m128i lo = _mm_and_si128(_mm256_castsi256_si128(q), low4);
        const __m128i hi = _mm_and_si128(_mm256_extracti128_si256(q, 1), low4);
        _mm_storeu_si128((__m128i *) y[i].qs, _mm_or_si128(lo, _mm_slli_epi16(hi, 4)));
        memcpy(y[i].qh, &qh, sizeof(qh));
    }
}

/* F16: vcvtps2ph rounds to nearest even, subnormals and overflow to inf included, exactly as the
 * portable GGML_FP32_TO_FP16 (checked over all 2**32 float32 bit patterns); only NaNs differ (it keeps
 * payload bits, ggml writes sign | 0x7E00), so groups holding a NaN take the scalar code. (An
 * AVX-512 version was no faster: this runs at memory speed.) */
__attribute__((target("avx2,f16c")))
static void quantize_row_f16_f16c(const float * restrict x, ggml_half * restrict y, int64_t k) {
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) == 0) {
            _mm_storeu_si128((__m128i *) (y + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
        } else {
            quantize_row_f16_ref(x + i, y + i, 8);
        }
    }
    quantize_row_f16_ref(x + i, y + i, k - i);
}

#endif /* CKPT_X86_SIMD */

/* ---------------------------------------------------------------------------------------------
 * 32-element block dequantizers
 * ------------------------------------------------------------------------------------------- */

static void dequantize_row_q4_0(const block_q4_0 * restrict x, float * restrict y, int64_t k) {
    static const int qk = QK4_0;
    const int nb = k / qk;

    for (int i = 0; i < nb; i++) {
        const float d = GGML_FP16_TO_FP32(x[i].d);

        for (int j = 0; j < qk/2; ++j) {
            const int x0 = (x[i].qs[j] & 0x0F) - 8;
            const int x1 = (x[i].qs[j] >>   4) - 8;

            y[i*qk + j + 0   ] = x0*d;
            y[i*qk + j + qk/2] = x1*d;
        }
    }
}

static void dequantize_row_q4_1(const block_q4_1 * restrict x, float * restrict y, int64_t k) {
    static const int qk = QK4_1;
    const int nb = k / qk;

    for (int i = 0; i < nb; i++) {
        const float d = GGML_FP16_TO_FP32(x[i].d);
        const float m = GGML_FP16_TO_FP32(x[i].m);

        for (int j = 0; j < qk/2; ++j) {
            const int x0 = (x[i].qs[j] & 0x0F);
            const int x1 = (x[i].qs[j] >>   4);

            y[i*qk + j + 0   ] = x0*d + m;
            y[i*qk + j + qk/2] = x1*d + m;
        }
    }
}

static void dequantize_row_q5_0(const block_q5_0 * restrict x, float * restrict y, int64_t k) {
    static const int qk = QK5_0;
    const int nb = k / qk;

    for (int i = 0; i < nb; i++) {
        const float d = GGML_FP16_TO_FP32(x[i].d);

        uint32_t qh;
        memcpy(&qh, x[i].qh, sizeof(qh));

        for (int j = 0; j < qk/2; ++j) {
            const uint8_t xh_0 = ((qh >> (j +  0)) << 4) & 0x10;
            const uint8_t xh_1 = ((qh >> (j + 12))     ) & 0x10;

            const int32_t x0 = ((x[i].qs[j] & 0x0F) | xh_0) - 16;
            const int32_t x1 = ((x[i].qs[j] >>   4) | xh_1) - 16;

            y[i*qk + j + 0   ] = x0*d;
            y[i*qk + j + qk/2] = x1*d;
        }
    }
}

static void dequantize_row_q5_1(const block_q5_1 * restrict x, float * restrict y, int64_t k) {
    static const int qk = QK5_1;
    const int nb = k / qk;

    for (int i = 0; i < nb; i++) {
        const float d = GGML_FP16_TO_FP32(x[i].d);
        const float m = GGML_FP16_TO_FP32(x[i].m);

        uint32_t qh;
        memcpy(&qh, x[i].qh, sizeof(qh));

        for (int j = 0; j < qk/2; ++j) {
            const uint8_t xh_0 = ((qh >> (j +  0)) << 4) & 0x10;
            const uint8_t xh_1 = ((qh >> (j + 12))     ) & 0x10;

            const int x0 = (x[i].qs[j] & 0x0F) | xh_0;
            const int x1 = (x[i].qs[j] >>   4) | xh_1;

            y[i*qk + j + 0   ] = x0*d + m;
            y[i*qk + j + qk/2] = x1*d + m;
        }
    }
}

static void dequantize_row_q8_0(const block_q8_0 * restrict x, float * restrict y, int64_t k) {
    static const int qk = QK8_0;
    const int nb = k / qk;

    for (int i = 0; i < nb; i++) {
        const float d = GGML_FP16_TO_FP32(x[i].d);

        for (int j = 0; j < qk; ++j) {
            y[i*qk + j] = x[i].qs[j]*d;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * 2-6 bit quantization in super-blocks: helpers
 * ------------------------------------------------------------------------------------------- */

/* ggml asserts fabsf(fval) <= 4194303.f; we drop the assert (non-finite input must not abort)
 * and keep ggml's arithmetic, so results for huge/non-finite values are whatever ggml gives. */
static inline int nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i; memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

static float make_qx_quants(int n, int nmax, const float * restrict x, int8_t * restrict L, int rmse_type,
        const float * restrict qw) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) { /* all zero */
        for (int i = 0; i < n; ++i) {
            L[i] = 0;
        }
        return 0.f;
    }
    float iscale = -nmax / max;
    if (rmse_type == 0) {
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            L[i] = nmax + MAX(-nmax, MIN(nmax-1, l));
        }
        return 1/iscale;
    }
    bool return_early = false;
    if (rmse_type < 0) {
        rmse_type = -rmse_type;
        return_early = true;
    }
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = MAX(-nmax, MIN(nmax-1, l));
        L[i] = l + nmax;
        float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i]));
        sumlx += w*x[i]*l;
        suml2 += w*l*l;
    }
    float scale = suml2 ? sumlx/suml2 : 0.0f;
    if (return_early) return suml2 > 0 ? 0.5f*(scale + 1/iscale) : 1/iscale;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) {
            continue;
        }
        iscale = -(nmax + 0.1f*is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = MAX(-nmax, MIN(nmax-1, l));
            float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i]));
            sumlx += w*x[i]*l;
            suml2 += w*l*l;
        }
        if (suml2 > 0 && sumlx*sumlx > best*suml2) {
            for (int i = 0; i < n; ++i) {
                int l = nearest_int(iscale * x[i]);
                L[i] = nmax + MAX(-nmax, MIN(nmax-1, l));
            }
            scale = sumlx/suml2; best = scale*sumlx;
        }
    }
    return scale;
}

static float make_q3_quants(int n, int nmax, const float * restrict x, int8_t * restrict L, bool do_rmse) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) { /* all zero */
        for (int i = 0; i < n; ++i) { L[i] = 0; }
        return 0.f;
    }
    float iscale = -nmax / max;
    if (do_rmse) {
        float sumlx = 0;
        float suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = MAX(-nmax, MIN(nmax-1, l));
            L[i] = l;
            float w = x[i]*x[i];
            sumlx += w*x[i]*l;
            suml2 += w*l*l;
        }
        for (int itry = 0; itry < 5; ++itry) {
            int n_changed = 0;
            for (int i = 0; i < n; ++i) {
                float w = x[i]*x[i];
                float slx = sumlx - w*x[i]*L[i];
                if (slx > 0) {
                    float sl2 = suml2 - w*L[i]*L[i];
                    int new_l = nearest_int(x[i] * sl2 / slx);
                    new_l = MAX(-nmax, MIN(nmax-1, new_l));
                    if (new_l != L[i]) {
                        slx += w*x[i]*new_l;
                        sl2 += w*new_l*new_l;
                        if (sl2 > 0 && slx*slx*suml2 > sumlx*sumlx*sl2) {
                            L[i] = new_l; sumlx = slx; suml2 = sl2;
                            ++n_changed;
                        }
                    }
                }
            }
            if (!n_changed) {
                break;
            }
        }
        for (int i = 0; i < n; ++i) {
            L[i] += nmax;
        }
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = MAX(-nmax, MIN(nmax-1, l));
        L[i] = l + nmax;
    }
    return 1/iscale;
}

static float make_qkx2_quants(int n, int nmax, const float * restrict x, const float * restrict weights,
        uint8_t * restrict L, float * restrict the_min, uint8_t * restrict Laux,
        float rmin, float rdelta, int nstep, bool use_mad) {
    float min = x[0];
    float max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax/(max - min);
    float scale = 1/iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale*(x[i] - min));
        L[i] = MAX(0, MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        float w = weights[i];
        best_error += w * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta*is + nmax)/(max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale*(x[i] - min));
            l = MAX(0, MIN(nmax, l));
            Laux[i] = l;
            float w = weights[i];
            sum_l += w*l;
            sum_l2 += w*l*l;
            sum_xl += w*l*x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l)/D;
            float this_min   = (sum_l2 * sum_x - sum_l * sum_xl)/D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                float w = weights[i];
                cur_error += w * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) {
                    L[i] = Laux[i];
                }
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

static inline void get_scale_min_k4(int j, const uint8_t * restrict q, uint8_t * restrict d, uint8_t * restrict m) {
    if (j < 4) {
        *d = q[j] & 63; *m = q[j + 4] & 63;
    } else {
        *d = (q[j+4] & 0xF) | ((q[j-4] >> 6) << 4);
        *m = (q[j+4] >>  4) | ((q[j-0] >> 6) << 4);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Q2_K
 * ------------------------------------------------------------------------------------------- */

static void quantize_row_q2_K_ref(const float * restrict x, block_q2_K * restrict y, int64_t k) {
    const int nb = k / QK_K;

    uint8_t L[QK_K];
    uint8_t Laux[16];
    float   weights[16];
    float mins[QK_K/16];
    float scales[QK_K/16];

    const float q4scale = 15.f;

    for (int i = 0; i < nb; i++) {
        float max_scale = 0; /* as we are deducting the min, scales are always positive */
        float max_min = 0;
        for (int j = 0; j < QK_K/16; ++j) {
            for (int l = 0; l < 16; ++l) weights[l] = fabsf(x[16*j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16*j, weights, L + 16*j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
            float scale = scales[j];
            if (scale > max_scale) {
                max_scale = scale;
            }
            float min = mins[j];
            if (min > max_min) {
                max_min = min;
            }
        }

        if (max_scale > 0) {
            float iscale = q4scale/max_scale;
            for (int j = 0; j < QK_K/16; ++j) {
                int l = nearest_int(iscale*scales[j]);
                y[i].scales[j] = l;
            }
            y[i].d = GGML_FP32_TO_FP16(max_scale/q4scale);
        } else {
            for (int j = 0; j < QK_K/16; ++j) y[i].scales[j] = 0;
            y[i].d = GGML_FP32_TO_FP16(0.f);
        }
        if (max_min > 0) {
            float iscale = q4scale/max_min;
            for (int j = 0; j < QK_K/16; ++j) {
                int l = nearest_int(iscale*mins[j]);
                y[i].scales[j] |= (l << 4);
            }
            y[i].dmin = GGML_FP32_TO_FP16(max_min/q4scale);
        } else {
            y[i].dmin = GGML_FP32_TO_FP16(0.f);
        }
        for (int j = 0; j < QK_K/16; ++j) {
            const float d = GGML_FP16_TO_FP32(y[i].d) * (y[i].scales[j] & 0xF);
            if (!d) continue;
            const float dm = GGML_FP16_TO_FP32(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int((x[16*j + ii] + dm)/d);
                l = MAX(0, MIN(3, l));
                L[16*j + ii] = l;
            }
        }

        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                y[i].qs[j/4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
            }
        }

        x += QK_K;
    }
}

static void dequantize_row_q2_K(const block_q2_K * restrict x, float * restrict y, int64_t k) {
    const int nb = k / QK_K;

    for (int i = 0; i < nb; i++) {

        const float d = GGML_FP16_TO_FP32(x[i].d);
        const float min = GGML_FP16_TO_FP32(x[i].dmin);

        const uint8_t * q = x[i].qs;

        int is = 0;
        float dl, ml;
        for (int n = 0; n < QK_K; n += 128) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {

                uint8_t sc = x[i].scales[is++];
                dl = d * (sc & 0xF); ml = min * (sc >> 4);
                for (int l = 0; l < 16; ++l) *y++ = dl * ((int8_t)((q[l] >> shift) & 3)) - ml;

                sc = x[i].scales[is++];
                dl = d * (sc & 0xF); ml = min * (sc >> 4);
                for (int l = 0; l < 16; ++l) *y++ = dl * ((int8_t)((q[l+16] >> shift) & 3)) - ml;

                shift += 2;
            }
            q += 32;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Q3_K
 * ------------------------------------------------------------------------------------------- */

static void quantize_row_q3_K_ref(const float * restrict x, block_q3_K * restrict y, int64_t k) {
    const int nb = k / QK_K;

    int8_t L[QK_K];
    float scales[QK_K / 16];

    for (int i = 0; i < nb; i++) {

        float max_scale = 0;
        float amax = 0;
        for (int j = 0; j < QK_K/16; ++j) {
            scales[j] = make_q3_quants(16, 4, x + 16*j, L + 16*j, true);
            float scale = fabsf(scales[j]);
            if (scale > amax) {
                amax = scale; max_scale = scales[j];
            }
        }

        memset(y[i].scales, 0, 12);
        if (max_scale) {
            float iscale = -32.f/max_scale;
            for (int j = 0; j < QK_K/16; ++j) {
                int8_t l = nearest_int(iscale*scales[j]);
                l = MAX(-32, MIN(31, l)) + 32;
                if (j < 8) {
                    y[i].scales[j] = l & 0xF;
                } else {
                    y[i].scales[j-8] |= ((l & 0xF) << 4);
                }
                l >>= 4;
                y[i].scales[j%4 + 8] |= (l << (2*(j/4)));
            }
            y[i].d = GGML_FP32_TO_FP16(1/iscale);
        } else {
            y[i].d = GGML_FP32_TO_FP16(0.f);
        }

        int8_t sc;
        for (int j = 0; j < QK_K/16; ++j) {
            sc = j < 8 ? y[i].scales[j] & 0xF : y[i].scales[j-8] >> 4;
            sc = (sc | (((y[i].scales[8 + j%4] >> (2*(j/4))) & 3) << 4)) - 32;
            float d = GGML_FP16_TO_FP32(y[i].d) * sc;
            if (!d) {
                continue;
            }
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(x[16*j + ii]/d);
                l = MAX(-4, MIN(3, l));
                L[16*j + ii] = l + 4;
            }
        }

        memset(y[i].hmask, 0, QK_K/8);
        /* We put the high-bit for the 1st 8 quants into bit 0, the next 8 into bit 1, etc. */
        int m = 0;
        uint8_t hm = 1;
        for (int j = 0; j < QK_K; ++j) {
            if (L[j] > 3) {
                y[i].hmask[m] |= hm;
                L[j] -= 4;
            }
            if (++m == QK_K/8) {
                m = 0; hm <<= 1;
            }
        }
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                y[i].qs[j/4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
            }
        }

        x += QK_K;
    }
}

static void dequantize_row_q3_K(const block_q3_K * restrict x, float * restrict y, int64_t k) {
    const int nb = k / QK_K;

    const uint32_t kmask1 = 0x03030303;
    const uint32_t kmask2 = 0x0f0f0f0f;

    uint32_t aux[4];
    const int8_t * scales = (const int8_t*)aux;

    for (int i = 0; i < nb; i++) {

        const float d_all = GGML_FP16_TO_FP32(x[i].d);

        const uint8_t * restrict q = x[i].qs;
        const uint8_t * restrict hm = x[i].hmask;
        uint8_t m = 1;

        memcpy(aux, x[i].scales, 12);
        uint32_t tmp = aux[2];
        aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
        aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
        aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
        aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);

        int is = 0;
        float dl;
        for (int n = 0; n < QK_K; n += 128) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {

                dl = d_all * (scales[is++] - 32);
                for (int l = 0; l < 16; ++l) {
                    *y++ = dl * ((int8_t)((q[l+ 0] >> shift) & 3) - ((hm[l+ 0] & m) ? 0 : 4));
                }

                dl = d_all * (scales[is++] - 32);
                for (int l = 0; l < 16; ++l) {
                    *y++ = dl * ((int8_t)((q[l+16] >> shift) & 3) - ((hm[l+16] & m) ? 0 : 4));
                }

                shift += 2;
                m <<= 1;
            }
            q += 32;
        }

    }
}

/* ---------------------------------------------------------------------------------------------
 * Q4_K
 * ------------------------------------------------------------------------------------------- */

static void quantize_row_q4_K_ref(const float * restrict x, block_q4_K * restrict y, int64_t k) {
    const int nb = k / QK_K;

    uint8_t L[QK_K];
    uint8_t Laux[32];
    float   weights[32];
    float mins[QK_K/32];
    float scales[QK_K/32];

    for (int i = 0; i < nb; i++) {
        float max_scale = 0; /* as we are deducting the min, scales are always positive */
        float max_min = 0;
        for (int j = 0; j < QK_K/32; ++j) {
            float sum_x2 = 0;
            for (int l = 0; l < 32; ++l) sum_x2 += x[32*j + l] * x[32*j + l];
            float av_x = sqrtf(sum_x2/32);
            for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32*j + l]);
            scales[j] = make_qkx2_quants(32, 15, x + 32*j, weights, L + 32*j, &mins[j], Laux, -1.f, 0.1f, 20, false);
            float scale = scales[j];
            if (scale > max_scale) {
                max_scale = scale;
            }
            float min = mins[j];
            if (min > max_min) {
                max_min = min;
            }
        }

        float inv_scale = max_scale > 0 ? 63.f/max_scale : 0.f;
        float inv_min   = max_min   > 0 ? 63.f/max_min   : 0.f;
        for (int j = 0; j < QK_K/32; ++j) {
            uint8_t ls = nearest_int(inv_scale*scales[j]);
            uint8_t lm = nearest_int(inv_min*mins[j]);
            ls = MIN(63, ls);
            lm = MIN(63, lm);
            if (j < 4) {
                y[i].scales[j] = ls;
                y[i].scales[j+4] = lm;
            } else {
                y[i].scales[j+4] = (ls & 0xF) | ((lm & 0xF) << 4);
                y[i].scales[j-4] |= ((ls >> 4) << 6);
                y[i].scales[j-0] |= ((lm >> 4) << 6);
            }
        }
        y[i].d = GGML_FP32_TO_FP16(max_scale/63.f);
        y[i].dmin = GGML_FP32_TO_FP16(max_min/63.f);

        uint8_t sc, m;
        for (int j = 0; j < QK_K/32; ++j) {
            get_scale_min_k4(j, y[i].scales, &sc, &m);
            const float d = GGML_FP16_TO_FP32(y[i].d) * sc;
            if (!d) continue;
            const float dm = GGML_FP16_TO_FP32(y[i].dmin) * m;
            for (int ii = 0; ii < 32; ++ii) {
                int l = nearest_int((x[32*j + ii] + dm)/d);
                l = MAX(0, MIN(15, l));
                L[32*j + ii] = l;
            }
        }

        uint8_t * q = y[i].qs;
        for (int j = 0; j < QK_K; j += 64) {
            for (int l = 0; l < 32; ++l) q[l] = L[j + l] | (L[j + l + 32] << 4);
            q += 32;
        }

        x += QK_K;
    }
}

static void dequantize_row_q4_K(const block_q4_K * restrict x, float * restrict y, int64_t k) {
    const int nb = k / QK_K;

    for (int i = 0; i < nb; i++) {
        const uint8_t * q = x[i].qs;

        const float d   = GGML_FP16_TO_FP32(x[i].d);
        const float min = GGML_FP16_TO_FP32(x[i].dmin);

        int is = 0;
        uint8_t sc, m;
        for (int j = 0; j < QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc; const float m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc; const float m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l]  >> 4) - m2;
            q += 32; is += 2;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Q5_K
 * ------------------------------------------------------------------------------------------- */

static void quantize_row_q5_K_ref(const float * restrict x, block_q5_K * restrict y, int64_t k) {
    const int64_t nb = k / QK_K;

    uint8_t L[QK_K];
    float mins[QK_K/32];
    float scales[QK_K/32];
    float weights[32];
    uint8_t Laux[32];

    for (int i = 0; i < nb; i++) {
        float max_scale = 0; /* as we are deducting the min, scales are always positive */
        float max_min = 0;
        for (int j = 0; j < QK_K/32; ++j) {
            float sum_x2 = 0;
            for (int l = 0; l < 32; ++l) sum_x2 += x[32*j + l] * x[32*j + l];
            float av_x = sqrtf(sum_x2/32);
            for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32*j + l]);
            scales[j] = make_qkx2_quants(32, 31, x + 32*j, weights, L + 32*j, &mins[j], Laux, -0.5f, 0.1f, 15, false);
            float scale = scales[j];
            if (scale > max_scale) {
                max_scale = scale;
            }
            float min = mins[j];
            if (min > max_min) {
                max_min = min;
            }
        }

        float inv_scale = max_scale > 0 ? 63.f/max_scale : 0.f;
        float inv_min   = max_min   > 0 ? 63.f/max_min   : 0.f;
        for (int j = 0; j < QK_K/32; ++j) {
            uint8_t ls = nearest_int(inv_scale*scales[j]);
            uint8_t lm = nearest_int(inv_min*mins[j]);
            ls = MIN(63, ls);
            lm = MIN(63, lm);
            if (j < 4) {
                y[i].scales[j] = ls;
                y[i].scales[j+4] = lm;
            } else {
                y[i].scales[j+4] = (ls & 0xF) | ((lm & 0xF) << 4);
                y[i].scales[j-4] |= ((ls >> 4) << 6);
                y[i].scales[j-0] |= ((lm >> 4) << 6);
            }
        }
        y[i].d = GGML_FP32_TO_FP16(max_scale/63.f);
        y[i].dmin = GGML_FP32_TO_FP16(max_min/63.f);

        uint8_t sc, m;
        for (int j = 0; j < QK_K/32; ++j) {
            get_scale_min_k4(j, y[i].scales, &sc, &m);
            const float d = GGML_FP16_TO_FP32(y[i].d) * sc;
            if (!d) continue;
            const float dm = GGML_FP16_TO_FP32(y[i].dmin) * m;
            for (int ii = 0; ii < 32; ++ii) {
                int l = nearest_int((x[32*j + ii] + dm)/d);
                l = MAX(0, MIN(31, l));
                L[32*j + ii] = l;
            }
        }

        uint8_t * restrict qh = y[i].qh;
        uint8_t * restrict ql = y[i].qs;
        memset(qh, 0, QK_K/8);

        uint8_t m1 = 1, m2 = 2;
        for (int n = 0; n < QK_K; n += 64) {
            for (int j = 0; j < 32; ++j) {
                int l1 = L[n + j];
                if (l1 > 15) {
                    l1 -= 16; qh[j] |= m1;
                }
                int l2 = L[n + j + 32];
                if (l2 > 15) {
                    l2 -= 16; qh[j] |= m2;
                }
                ql[j] = l1 | (l2 << 4);
            }
            m1 <<= 2; m2 <<= 2;
            ql += 32;
        }

        x += QK_K;
    }
}

static void dequantize_row_q5_K(const block_q5_K * restrict x, float * restrict y, int64_t k) {
    const int64_t nb = k / QK_K;

    for (int i = 0; i < nb; i++) {
        const uint8_t * ql = x[i].qs;
        const uint8_t * qh = x[i].qh;

        const float d = GGML_FP16_TO_FP32(x[i].d);
        const float min = GGML_FP16_TO_FP32(x[i].dmin);

        int is = 0;
        uint8_t sc, m;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc; const float m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc; const float m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l]  >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            ql += 32; is += 2;
            u1 <<= 2; u2 <<= 2;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Q6_K
 * ------------------------------------------------------------------------------------------- */

static void quantize_row_q6_K_ref(const float * restrict x, block_q6_K * restrict y, int64_t k) {
    const int64_t nb = k / QK_K;

    int8_t L[QK_K];
    float   scales[QK_K/16];

    for (int i = 0; i < nb; i++) {

        float max_scale = 0;
        float max_abs_scale = 0;

        for (int ib = 0; ib < QK_K/16; ++ib) {

            const float scale = make_qx_quants(16, 32, x + 16*ib, L + 16*ib, 1, NULL);
            scales[ib] = scale;

            const float abs_scale = fabsf(scale);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }

        }

        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof(block_q6_K));
            y[i].d = GGML_FP32_TO_FP16(0.f);
            x += QK_K;
            continue;
        }

        float iscale = -128.f/max_scale;
        y[i].d = GGML_FP32_TO_FP16(1/iscale);
        for (int ib = 0; ib < QK_K/16; ++ib) {
            y[i].scales[ib] = MIN(127, nearest_int(iscale*scales[ib]));
        }

        for (int j = 0; j < QK_K/16; ++j) {
            float d = GGML_FP16_TO_FP32(y[i].d) * y[i].scales[j];
            if (!d) {
                continue;
            }
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(x[16*j + ii]/d);
                l = MAX(-32, MIN(31, l));
                L[16*j + ii] = l + 32;
            }
        }

        uint8_t * restrict ql = y[i].ql;
        uint8_t * restrict qh = y[i].qh;
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = L[j + l +  0] & 0xF;
                const uint8_t q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF;
                const uint8_t q4 = L[j + l + 96] & 0xF;
                ql[l+ 0] = q1 | (q3 << 4);
                ql[l+32] = q2 | (q4 << 4);
                qh[l] = (L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6);
            }
            ql += 64;
            qh += 32;
        }

        x += QK_K;
    }
}

static void dequantize_row_q6_K(const block_q6_K * restrict x, float * restrict y, int64_t k) {
    const int64_t nb = k / QK_K;

    for (int i = 0; i < nb; i++) {
        const float d = GGML_FP16_TO_FP32(x[i].d);

        const uint8_t * restrict ql = x[i].ql;
        const uint8_t * restrict qh = x[i].qh;
        const int8_t  * restrict sc = x[i].scales;

        for (int n = 0; n < QK_K; n += 128) {
            for (int l = 0; l < 32; ++l) {
                int is = l/16;
                const int8_t q1 = (int8_t)((ql[l +  0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int8_t q3 = (int8_t)((ql[l +  0]  >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int8_t q4 = (int8_t)((ql[l + 32]  >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l +  0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y  += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Weighted (importance-matrix) quantizers: ggml-quants.c's make_qkx3_quants, make_qp_quants and
 * quantize_row_*_impl, copied from ggml 0.9.8 (vendored by stable-diffusion.cpp in
 * stable-diffusion-cpp-python 0.4.7; MIT licence) with GGML_RESTRICT -> restrict. ggml takes this
 * path whenever quant_weights is not NULL; stable-diffusion.cpp's convert always passes weights
 * (all ones without an imatrix), so its q4_0/q4_1/q5_0/q5_1/q2_K..q6_K bytes come from here.
 * Q8_0 has no weighted path. Each is byte-checked against that build (tests/quant/test_ggml_weighted.py).
 * ------------------------------------------------------------------------------------------- */

static float make_qkx3_quants(int n, int nmax, const float * restrict x, const float * restrict weights,
        uint8_t * restrict L, float * restrict the_min, uint8_t * restrict Laux,
        float rmin, float rdelta, int nstep, bool use_mad) {
    float min = x[0];
    float max = x[0];
    float sum_w = weights ? weights[0] : x[0]*x[0];
    float sum_x = sum_w * x[0];
#ifdef HAVE_BUGGY_APPLE_LINKER
    // use 'volatile' to prevent unroll and work around a bug in Apple ld64 1015.7
    for (volatile int i = 1; i < n; ++i) {
#else
    for (int i = 1; i < n; ++i) {
#endif
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights ? weights[i] : x[i]*x[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) {
        min = 0;
    }
    if (max <= min) {
        memset(L, 0, n);
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax/(max - min);
    float scale = 1/iscale;
    float best_mad = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale*(x[i] - min));
        L[i] = MAX(0, MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff*diff;
        float w = weights ? weights[i] : x[i]*x[i];
        best_mad += w * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta*is + nmax)/(max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale*(x[i] - min));
            l = MAX(0, MIN(nmax, l));
            Laux[i] = l;
            float w = weights ? weights[i] : x[i]*x[i];
            sum_l  += w*l;
            sum_l2 += w*l*l;
            sum_xl += w*l*x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l)/D;
            float this_min   = (sum_l2 * sum_x - sum_l * sum_xl)/D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float mad = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff*diff;
                float w = weights ? weights[i] : x[i]*x[i];
                mad += w * diff;
            }
            if (mad < best_mad) {
                for (int i = 0; i < n; ++i) {
                    L[i] = Laux[i];
                }
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

static float make_qp_quants(int n, int nmax, const float * restrict x, uint8_t * restrict L, const float * quant_weights) {
    float max = 0;
    for (int i = 0; i < n; ++i) {
        max = MAX(max, x[i]);
    }
    if (max < GROUP_MAX_EPS) { // all zero
        for (int i = 0; i < n; ++i) { L[i] = 0; }
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; ++i) {
        L[i] = nearest_int(iscale * x[i]);
    }
    float scale = 1/iscale;
    float best_mse = 0;
    for (int i = 0; i < n; ++i) {
        float diff = x[i] - scale*L[i];
        float w = quant_weights[i];
        best_mse += w*diff*diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        float iscale_is = (0.1f*is + nmax)/max;
        float scale_is = 1/iscale_is;
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale_is*x[i]);
            l = MIN(nmax, l);
            float diff = x[i] - scale_is*l;
            float w = quant_weights[i];
            mse += w*diff*diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = MIN(nmax, l);
        L[i] = l;
        float w = quant_weights[i];
        sumlx += w*x[i]*l;
        suml2 += w*l*l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float w = quant_weights[i];
            float slx = sumlx - w*x[i]*L[i];
            float sl2 = suml2 - w*L[i]*L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = nearest_int(x[i] * sl2 / slx);
                new_l = MIN(nmax, new_l);
                if (new_l != L[i]) {
                    slx += w*x[i]*new_l;
                    sl2 += w*new_l*new_l;
                    if (slx*slx*suml2 > sumlx*sumlx*sl2) {
                        L[i] = new_l; sumlx = slx; suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) {
            break;
        }
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

static void quantize_row_q2_K_impl(const float * restrict x, block_q2_K * restrict y, int k, const float * restrict quant_weights) {
    assert(quant_weights);
    assert(k % QK_K == 0);
    const int nb = k / QK_K;
    const bool requantize = true;

    uint8_t L[QK_K];
    uint8_t Laux[16];
    float mins[QK_K/16];
    float scales[QK_K/16];
    float sw[QK_K/16];
    float weight[16];
    uint8_t Ls[QK_K/16], Lm[QK_K/16];

    for (int i = 0; i < nb; i++) {
        memset(sw, 0, QK_K/16*sizeof(float));
        float sumx2 = 0;
        for (int j = 0; j < QK_K; ++j) sumx2 += x[j]*x[j];
        float sigma2 = sumx2/QK_K;
        for (int j = 0; j < QK_K/16; ++j) {
            const float * restrict qw = quant_weights + QK_K * i + 16*j;
            for (int l = 0; l < 16; ++l) weight[l] = qw[l] * sqrtf(sigma2 + x[16*j + l]*x[16*j + l]);
            for (int l = 0; l < QK_K/16; ++l) sw[j] += weight[l];
            scales[j] = make_qkx3_quants(16, 3, x + 16*j, weight, L + 16*j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
        }

        float dm, mm;
        dm  = make_qp_quants(QK_K/16, 15, scales, Ls, sw);
        mm  = make_qp_quants(QK_K/16, 15, mins,   Lm, sw);

        y[i].d    = GGML_FP32_TO_FP16(dm);
        y[i].dmin = GGML_FP32_TO_FP16(mm);
        dm        = GGML_FP16_TO_FP32(y[i].d);
        mm        = GGML_FP16_TO_FP32(y[i].dmin);

        for (int j = 0; j < QK_K/16; ++j) {
            y[i].scales[j] = Ls[j] | (Lm[j] << 4);
        }

        if (requantize) {
            for (int j = 0; j < QK_K/16; ++j) {
                const float d = dm * (y[i].scales[j] & 0xF);
                if (!d) continue;
                const float m = mm * (y[i].scales[j] >> 4);
                for (int ii = 0; ii < 16; ++ii) {
                    int l = nearest_int((x[16*j + ii] + m)/d);
                    l = MAX(0, MIN(3, l));
                    L[16*j + ii] = l;
                }
            }
        }

        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                y[i].qs[j/4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
            }
        }

        x += QK_K;
    }
}

static void quantize_row_q3_K_impl(const float * restrict x, block_q3_K * restrict y, int64_t n_per_row, const float * restrict quant_weights) {
    assert(n_per_row % QK_K == 0);
    const int nb = n_per_row / QK_K;

    int8_t L[QK_K];
    float scales[QK_K / 16];
    float weight[16];
    float sw[QK_K / 16];
    int8_t Ls[QK_K / 16];

    for (int i = 0; i < nb; i++) {

        float sumx2 = 0;
        for (int j = 0; j < QK_K; ++j) sumx2 += x[j]*x[j];
        float sigma2 = 2*sumx2/QK_K;

        for (int j = 0; j < QK_K/16; ++j) {
            if (quant_weights) {
                const float * qw = quant_weights + QK_K * i + 16*j;
                for (int l = 0; l < 16; ++l) weight[l] = qw[l] * sqrtf(sigma2 + x[16*j+l]*x[16*j+l]);
            } else {
                for (int l = 0; l < 16; ++l) weight[l] = x[16*j+l]*x[16*j+l];
            }
            float sumw = 0;
            for (int l = 0; l < 16; ++l) sumw += weight[l];
            sw[j] = sumw;

            scales[j] = make_qx_quants(16, 4, x + 16*j, L + 16*j, 1, weight);

        }

        memset(y[i].scales, 0, 12);

        float d_block = make_qx_quants(QK_K/16, 32, scales, Ls, 1, sw);
        for (int j = 0; j < QK_K/16; ++j) {
            int l = Ls[j];
            if (j < 8) {
                y[i].scales[j] = l & 0xF;
            } else {
                y[i].scales[j-8] |= ((l & 0xF) << 4);
            }
            l >>= 4;
            y[i].scales[j%4 + 8] |= (l << (2*(j/4)));
        }
        y[i].d = GGML_FP32_TO_FP16(d_block);

        int8_t sc;
        for (int j = 0; j < QK_K/16; ++j) {
            sc = j < 8 ? y[i].scales[j] & 0xF : y[i].scales[j-8] >> 4;
            sc = (sc | (((y[i].scales[8 + j%4] >> (2*(j/4))) & 3) << 4)) - 32;
            float d = GGML_FP16_TO_FP32(y[i].d) * sc;
            if (!d) {
                continue;
            }
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(x[16*j + ii]/d);
                l = MAX(-4, MIN(3, l));
                L[16*j + ii] = l + 4;
            }
        }

        memset(y[i].hmask, 0, QK_K/8);
        // We put the high-bit for the 1st 8 quants into bit 0, the next 8 into bit 1, etc.
        int m = 0;
        uint8_t hm = 1;
        for (int j = 0; j < QK_K; ++j) {
            if (L[j] > 3) {
                y[i].hmask[m] |= hm;
                L[j] -= 4;
            }
            if (++m == QK_K/8) {
                m = 0; hm <<= 1;
            }
        }
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                y[i].qs[j/4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
            }
        }

        x += QK_K;
    }
}

static void quantize_row_q4_K_impl(const float * restrict x, block_q4_K * restrict y, int64_t n_per_row, const float * quant_weights) {
    assert(n_per_row % QK_K == 0);
    const int64_t nb = n_per_row / QK_K;

    uint8_t L[QK_K];
    uint8_t Laux[32];
    uint8_t Ls[QK_K/32];
    uint8_t Lm[QK_K/32];
    float   weights[32];
    float   sw[QK_K/32];
    float   mins[QK_K/32];
    float   scales[QK_K/32];

    for (int i = 0; i < nb; i++) {

        float sum_x2 = 0;
        for (int l = 0; l < QK_K; ++l) sum_x2 += x[l] * x[l];
        float sigma2 = 2*sum_x2/QK_K;
        float av_x = sqrtf(sigma2);

        for (int j = 0; j < QK_K/32; ++j) {
            if (quant_weights) {
                const float * qw = quant_weights + QK_K*i + 32*j;
                for (int l = 0; l < 32; ++l) weights[l] = qw[l] * sqrtf(sigma2 + x[32*j + l]*x[32*j + l]);
            } else {
                for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32*j + l]);
            }
            float sumw = 0;
            for (int l = 0; l < 32; ++l) sumw += weights[l];
            sw[j] = sumw;
            scales[j] = make_qkx3_quants(32, 15, x + 32*j, weights, L + 32*j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
        }

        float d_block = make_qp_quants(QK_K/32, 63, scales, Ls, sw);
        float m_block = make_qp_quants(QK_K/32, 63, mins,   Lm, sw);
        for (int j = 0; j < QK_K/32; ++j) {
            uint8_t ls = Ls[j];
            uint8_t lm = Lm[j];
            if (j < 4) {
                y[i].scales[j] = ls;
                y[i].scales[j+4] = lm;
            } else {
                y[i].scales[j+4] = (ls & 0xF) | ((lm & 0xF) << 4);
                y[i].scales[j-4] |= ((ls >> 4) << 6);
                y[i].scales[j-0] |= ((lm >> 4) << 6);
            }
        }
        y[i].d = GGML_FP32_TO_FP16(d_block);
        y[i].dmin = GGML_FP32_TO_FP16(m_block);

        uint8_t sc, m;
        for (int j = 0; j < QK_K/32; ++j) {
            get_scale_min_k4(j, y[i].scales, &sc, &m);
            const float d = GGML_FP16_TO_FP32(y[i].d) * sc;
            if (!d) continue;
            const float dm = GGML_FP16_TO_FP32(y[i].dmin) * m;
            for (int ii = 0; ii < 32; ++ii) {
                int l = nearest_int((x[32*j + ii] + dm)/d);
                l = MAX(0, MIN(15, l));
                L[32*j + ii] = l;
            }
        }
        uint8_t * q = y[i].qs;
        for (int j = 0; j < QK_K; j += 64) {
            for (int l = 0; l < 32; ++l) q[l] = L[j + l] | (L[j + l + 32] << 4);
            q += 32;
        }

        x += QK_K;

    }
}

static void quantize_row_q5_K_impl(const float * restrict x, block_q5_K * restrict y, int64_t n_per_row, const float * quant_weights) {
    assert(n_per_row % QK_K == 0);
    const int64_t nb = n_per_row / QK_K;

    uint8_t L[QK_K];
    uint8_t Laux[32];
    uint8_t Ls[QK_K/32];
    uint8_t Lm[QK_K/32];
    float   mins[QK_K/32];
    float   scales[QK_K/32];
    float   sw[QK_K/32];
    float   weights[32];

    for (int i = 0; i < nb; i++) {

        float sum_x2 = 0;
        for (int l = 0; l < QK_K; ++l) sum_x2 += x[l] * x[l];
        float sigma2 = 2*sum_x2/QK_K;
        float av_x = sqrtf(sigma2);

        for (int j = 0; j < QK_K/32; ++j) {
            if (quant_weights) {
                const float * qw = quant_weights + QK_K*i + 32*j;
                for (int l = 0; l < 32; ++l) weights[l] = qw[l] * sqrtf(sigma2 + x[32*j + l]*x[32*j + l]);
            } else {
                for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32*j + l]);
            }
            float sumw = 0;
            for (int l = 0; l < 32; ++l) sumw += weights[l];
            sw[j] = sumw;

            scales[j] = make_qkx3_quants(32, 31, x + 32*j, weights, L + 32*j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
        }

        float d_block = make_qp_quants(QK_K/32, 63, scales, Ls, sw);
        float m_block = make_qp_quants(QK_K/32, 63, mins,   Lm, sw);

        for (int j = 0; j < QK_K/32; ++j) {
            uint8_t ls = Ls[j];
            uint8_t lm = Lm[j];
            ls = MIN(63, ls);
            lm = MIN(63, lm);
            if (j < 4) {
                y[i].scales[j] = ls;
                y[i].scales[j+4] = lm;
            } else {
                y[i].scales[j+4] = (ls & 0xF) | ((lm & 0xF) << 4);
                y[i].scales[j-4] |= ((ls >> 4) << 6);
                y[i].scales[j-0] |= ((lm >> 4) << 6);
            }
        }
        y[i].d = GGML_FP32_TO_FP16(d_block);
        y[i].dmin = GGML_FP32_TO_FP16(m_block);

        uint8_t sc, m;
        for (int j = 0; j < QK_K/32; ++j) {
            get_scale_min_k4(j, y[i].scales, &sc, &m);
            const float d = GGML_FP16_TO_FP32(y[i].d) * sc;
            if (!d) continue;
            const float dm = GGML_FP16_TO_FP32(y[i].dmin) * m;
            for (int ii = 0; ii < 32; ++ii) {
                int l = nearest_int((x[32*j + ii] + dm)/d);
                l = MAX(0, MIN(31, l));
                L[32*j + ii] = l;
            }
        }

        uint8_t * restrict qh = y[i].qh;
        uint8_t * restrict ql = y[i].qs;
        memset(qh, 0, QK_K/8);

        uint8_t m1 = 1, m2 = 2;
        for (int n = 0; n < QK_K; n += 64) {
            for (int j = 0; j < 32; ++j) {
                int l1 = L[n + j];
                if (l1 > 15) {
                    l1 -= 16; qh[j] |= m1;
                }
                int l2 = L[n + j + 32];
                if (l2 > 15) {
                    l2 -= 16; qh[j] |= m2;
                }
                ql[j] = l1 | (l2 << 4);
            }
            m1 <<= 2; m2 <<= 2;
            ql += 32;
        }

        x += QK_K;

    }
}

static void quantize_row_q6_K_impl(const float * restrict x, block_q6_K * restrict y, int64_t n_per_row, const float * quant_weights) {
    assert(n_per_row % QK_K == 0);
    const int64_t nb = n_per_row / QK_K;

    int8_t L[QK_K];
    float   scales[QK_K/16];
    //float   weights[16];

    for (int i = 0; i < nb; i++) {

        //float sum_x2 = 0;
        //for (int j = 0; j < QK_K; ++j) sum_x2 += x[j]*x[j];
        //float sigma2 = sum_x2/QK_K;

        float max_scale = 0;
        float max_abs_scale = 0;

        for (int ib = 0; ib < QK_K/16; ++ib) {

            float scale;
            if (quant_weights) {
                const float * qw = quant_weights + QK_K*i + 16*ib;
                //for (int j = 0; j < 16; ++j) weights[j] = qw[j] * sqrtf(sigma2 + x[16*ib + j]*x[16*ib + j]);
                //scale = make_qx_quants(16, 32, x + 16*ib, L + 16*ib, 1, weights);
                scale = make_qx_quants(16, 32, x + 16*ib, L + 16*ib, 1, qw);
            } else {
                scale = make_qx_quants(16, 32, x + 16*ib, L + 16*ib, 1, NULL);
            }
            scales[ib] = scale;

            const float abs_scale = fabsf(scale);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }

        }

        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof(block_q6_K));
            y[i].d = GGML_FP32_TO_FP16(0.f);
            x += QK_K;
            continue;
        }

        float iscale = -128.f/max_scale;
        y[i].d = GGML_FP32_TO_FP16(1/iscale);
        for (int ib = 0; ib < QK_K/16; ++ib) {
            y[i].scales[ib] = MIN(127, nearest_int(iscale*scales[ib]));
        }

        for (int j = 0; j < QK_K/16; ++j) {
            float d = GGML_FP16_TO_FP32(y[i].d) * y[i].scales[j];
            if (!d) {
                continue;
            }
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(x[16*j + ii]/d);
                l = MAX(-32, MIN(31, l));
                L[16*j + ii] = l + 32;
            }
        }

        uint8_t * restrict ql = y[i].ql;
        uint8_t * restrict qh = y[i].qh;
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = L[j + l +  0] & 0xF;
                const uint8_t q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF;
                const uint8_t q4 = L[j + l + 96] & 0xF;
                ql[l+ 0] = q1 | (q3 << 4);
                ql[l+32] = q2 | (q4 << 4);
                qh[l] = (L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6);
            }
            ql += 64;
            qh += 32;
        }

        x += QK_K;

    }
}

static void quantize_row_q4_0_impl(const float * restrict x, block_q4_0 * restrict y, int64_t n_per_row, const float * quant_weights) {
    static_assert(QK4_0 == 32, "QK4_0 must be 32");

    if (!quant_weights) {
        quantize_row_q4_0_ref(x, y, n_per_row);
        return;
    }

    float weight[QK4_0];
    int8_t L[QK4_0];

    float sum_x2 = 0;
    for (int j = 0; j < n_per_row; ++j) sum_x2 += x[j]*x[j];
    float sigma2 = sum_x2/n_per_row;

    const int64_t nb = n_per_row/QK4_0;
    for (int ib = 0; ib < nb; ++ib) {
        const float * xb = x + QK4_0 * ib;
        const float * qw = quant_weights + QK4_0 * ib;
        for (int j = 0; j < QK4_0; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j]*xb[j]);
        float d = make_qx_quants(QK4_0, 8, xb, L, 1, weight);
        y[ib].d = GGML_FP32_TO_FP16(d);
        for (int j = 0; j < 16; ++j) {
            y[ib].qs[j] = L[j] | (L[j+16] << 4);
        }
    }
}

static void quantize_row_q4_1_impl(const float * restrict x, block_q4_1 * restrict y, int64_t n_per_row, const float * quant_weights) {
    static_assert(QK4_1 == 32, "QK4_1 must be 32");

    if (!quant_weights) {
        quantize_row_q4_1_ref(x, y, n_per_row);
        return;
    }

    float weight[QK4_1];
    uint8_t L[QK4_1], Laux[QK4_1];

    float sum_x2 = 0;
    for (int j = 0; j < n_per_row; ++j) sum_x2 += x[j]*x[j];
    float sigma2 = sum_x2/n_per_row;

    const int64_t nb = n_per_row/QK4_1;
    for (int ib = 0; ib < nb; ++ib) {
        const float * xb = x + QK4_1 * ib;
        const float * qw = quant_weights + QK4_1 * ib;
        for (int j = 0; j < QK4_1; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j]*xb[j]);
        float min;
        float d = make_qkx3_quants(QK4_1, 15, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
        y[ib].d = GGML_FP32_TO_FP16(d);
        y[ib].m = GGML_FP32_TO_FP16(-min);
        for (int j = 0; j < 16; ++j) {
            y[ib].qs[j] = L[j] | (L[j+16] << 4);
        }
    }
}

static void quantize_row_q5_0_impl(const float * restrict x, block_q5_0 * restrict y, int64_t n_per_row, const float * quant_weights) {
    static_assert(QK5_0 == 32, "QK5_0 must be 32");

    if (!quant_weights) {
        quantize_row_q5_0_ref(x, y, n_per_row);
        return;
    }

    float weight[QK5_0];
    int8_t L[QK5_0];

    float sum_x2 = 0;
    for (int j = 0; j < n_per_row; ++j) sum_x2 += x[j]*x[j];
    float sigma2 = sum_x2/n_per_row;

    const int64_t nb = n_per_row/QK5_0;
    for (int ib = 0; ib < nb; ++ib) {
        const float * xb = x + QK5_0 * ib;
        const float * qw = quant_weights + QK5_0 * ib;
        for (int j = 0; j < QK5_0; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j]*xb[j]);
        float d = make_qx_quants(QK5_0, 16, xb, L, 1, weight);
        y[ib].d = GGML_FP32_TO_FP16(d);

        uint32_t qh = 0;

        for (int j = 0; j < 16; ++j) {
            const uint8_t xi0 = L[j];
            const uint8_t xi1 = L[j+16];
            y[ib].qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);

            // get the 5-th bit and store it in qh at the right position
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + QK5_0/2);
        }

        memcpy(&y[ib].qh, &qh, sizeof(qh));
    }
}

static void quantize_row_q5_1_impl(const float * restrict x, block_q5_1 * restrict y, int64_t n_per_row, const float * quant_weights) {
    static_assert(QK5_1 == 32, "QK5_1 must be 32");

    if (!quant_weights) {
        quantize_row_q5_1_ref(x, y, n_per_row);
        return;
    }

    float weight[QK5_1];
    uint8_t L[QK5_1], Laux[QK5_1];

    float sum_x2 = 0;
    for (int j = 0; j < n_per_row; ++j) sum_x2 += x[j]*x[j];
    float sigma2 = sum_x2/n_per_row;

    const int64_t nb = n_per_row/QK5_1;
    for (int ib = 0; ib < nb; ++ib) {
        const float * xb = x + QK5_1 * ib;
        const float * qw = quant_weights + QK5_1 * ib;
        for (int j = 0; j < QK5_1; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j]*xb[j]);
        float min;
        float d = make_qkx3_quants(QK5_1, 31, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
        y[ib].d = GGML_FP32_TO_FP16(d);
        y[ib].m = GGML_FP32_TO_FP16(-min);

        uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
            const uint8_t xi0 = L[j];
            const uint8_t xi1 = L[j+16];
            y[ib].qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            // get the 5-th bit and store it in qh at the right position
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + QK5_0/2);
        }
        memcpy(&y[ib].qh, &qh, sizeof(qh));
    }
}



typedef void (*quantize_w_fn)(const float * restrict, void * restrict, int64_t, const float * restrict);

static void quantize_row_q2_K_w(const float * restrict x, void * restrict y, int64_t n, const float * restrict qw) {
    quantize_row_q2_K_impl(x, (block_q2_K *) y, (int) n, qw);
}
#define WEIGHTED(T) \
    static void quantize_row_##T##_w(const float * restrict x, void * restrict y, int64_t n, const float * restrict qw) { \
        quantize_row_##T##_impl(x, (block_##T *) y, n, qw); \
    }
WEIGHTED(q3_K)
WEIGHTED(q4_K)
WEIGHTED(q5_K)
WEIGHTED(q6_K)
WEIGHTED(q4_0)
WEIGHTED(q4_1)
WEIGHTED(q5_0)
WEIGHTED(q5_1)

/* ---------------------------------------------------------------------------------------------
 * type table (ids are ggml_type / gguf.GGMLQuantizationType values)
 * ------------------------------------------------------------------------------------------- */

typedef void (*quantize_fn)(const float * restrict, void * restrict, int64_t);
typedef void (*dequantize_fn)(const void * restrict, float * restrict, int64_t);

typedef struct {
    int id;
    const char * name;
    int block_size;
    int type_size;
    quantize_fn quantize;
    dequantize_fn dequantize;
    quantize_w_fn quantize_weighted;  /* NULL: the type has no weighted path (ggml ignores weights) */
} type_traits;

#define TRAITS(ID, NAME, QK, BLOCK, q, dq, qw) \
    { ID, NAME, QK, (int) sizeof(BLOCK), (quantize_fn) (q), (dequantize_fn) (dq), qw }

static const type_traits TRAITS_TABLE[] = {
    TRAITS( 1, "F16",  1,     ggml_half,  quantize_row_f16_ref,  dequantize_row_f16, NULL),
    TRAITS( 2, "Q4_0", QK4_0, block_q4_0, quantize_row_q4_0_ref, dequantize_row_q4_0, quantize_row_q4_0_w),
    TRAITS( 3, "Q4_1", QK4_1, block_q4_1, quantize_row_q4_1_ref, dequantize_row_q4_1, quantize_row_q4_1_w),
    TRAITS( 6, "Q5_0", QK5_0, block_q5_0, quantize_row_q5_0_ref, dequantize_row_q5_0, quantize_row_q5_0_w),
    TRAITS( 7, "Q5_1", QK5_1, block_q5_1, quantize_row_q5_1_ref, dequantize_row_q5_1, quantize_row_q5_1_w),
    TRAITS( 8, "Q8_0", QK8_0, block_q8_0, quantize_row_q8_0_ref, dequantize_row_q8_0, NULL),
    TRAITS(10, "Q2_K", QK_K,  block_q2_K, quantize_row_q2_K_ref, dequantize_row_q2_K, quantize_row_q2_K_w),
    TRAITS(11, "Q3_K", QK_K,  block_q3_K, quantize_row_q3_K_ref, dequantize_row_q3_K, quantize_row_q3_K_w),
    TRAITS(12, "Q4_K", QK_K,  block_q4_K, quantize_row_q4_K_ref, dequantize_row_q4_K, quantize_row_q4_K_w),
    TRAITS(13, "Q5_K", QK_K,  block_q5_K, quantize_row_q5_K_ref, dequantize_row_q5_K, quantize_row_q5_K_w),
    TRAITS(14, "Q6_K", QK_K,  block_q6_K, quantize_row_q6_K_ref, dequantize_row_q6_K, quantize_row_q6_K_w),
};
#define N_TRAITS ((int) (sizeof(TRAITS_TABLE) / sizeof(TRAITS_TABLE[0])))

static const type_traits * find_traits(int id) {
    for (int i = 0; i < N_TRAITS; ++i) {
        if (TRAITS_TABLE[i].id == id) {
            return &TRAITS_TABLE[i];
        }
    }
    return NULL;
}

/* SIMD level in use (never above what the CPU has; "avx2" means AVX2 + F16C); set_simd() lets
 * tests compare the paths. */
enum { SIMD_SCALAR, SIMD_AVX2, SIMD_AVX512, N_SIMD };
static const char * const SIMD_NAMES[N_SIMD] = {"scalar", "avx2", "avx512"};
static int simd_max = SIMD_SCALAR;
static int simd_level = SIMD_SCALAR;

static quantize_fn pick_quantize(const type_traits * t) {
#ifdef CKPT_X86_SIMD
    if (t->id == 1 && simd_level >= SIMD_AVX2) return (quantize_fn) quantize_row_f16_f16c;
    if (t->id == 8 && simd_level >= SIMD_AVX512) return (quantize_fn) quantize_row_q8_0_avx512;
    if (t->id == 8 && simd_level >= SIMD_AVX2) return (quantize_fn) quantize_row_q8_0_avx2;
    if (t->id == 6 && simd_level >= SIMD_AVX2) return (quantize_fn) quantize_row_q5_0_avx2;
#endif
    return t->quantize;
}

/* ---------------------------------------------------------------------------------------------
 * IEEE environment guard: round to nearest, no FTZ/DAZ (a library built with -ffast-math can
 * switch these on process-wide when it is loaded; ggml's reference bytes assume IEEE defaults).
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    int round;
#ifdef CKPT_HAVE_MXCSR
    unsigned int csr;
#endif
} fp_env;

static inline void fp_env_enter(fp_env * e) {
    e->round = fegetround();
    if (e->round != FE_TONEAREST) {
        fesetround(FE_TONEAREST);
    }
#ifdef CKPT_HAVE_MXCSR
    e->csr = _mm_getcsr();
    /* clear FTZ (bit 15), rounding control (bits 13-14) and DAZ (bit 6); mask all exceptions */
    _mm_setcsr((e->csr & ~(0x8000u | 0x6000u | 0x0040u)) | 0x1F80u);
#endif
}

static inline void fp_env_leave(const fp_env * e) {
#ifdef CKPT_HAVE_MXCSR
    _mm_setcsr(e->csr);
#endif
    if (e->round != FE_TONEAREST) {
        fesetround(e->round);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Python glue
 * ------------------------------------------------------------------------------------------- */

static int is_float32_format(const char * fmt) {
    if (fmt == NULL) {
        return 1; /* exporter did not say: treat as raw memory, length is checked */
    }
    if (fmt[0] == '@' || fmt[0] == '=' || fmt[0] == '<') {
        fmt++;
    }
    return strcmp(fmt, "f") == 0;
}

static int is_byte_format(const char * fmt) {
    return fmt == NULL || strcmp(fmt, "B") == 0 || strcmp(fmt, "b") == 0 || strcmp(fmt, "c") == 0;
}

/* Validate arguments; on success fill traits, row_bytes, n_floats, n_bytes. */
static int check_shape(int type_id, Py_ssize_t n_rows, Py_ssize_t n_per_row, const type_traits ** tt,
                       Py_ssize_t * row_bytes, Py_ssize_t * float_bytes, Py_ssize_t * quant_bytes) {
    const type_traits * t = find_traits(type_id);
    if (t == NULL) {
        PyErr_Format(PyExc_ValueError, "unsupported ggml type id %d (supported: F16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 "
                     "Q2_K Q3_K Q4_K Q5_K Q6_K)", type_id);
        return -1;
    }
    if (n_rows < 0 || n_per_row < 0) {
        PyErr_SetString(PyExc_ValueError, "n_rows and n_per_row must be non-negative");
        return -1;
    }
    if (n_per_row % t->block_size != 0) {
        PyErr_Format(PyExc_ValueError, "%s: row length %zd is not a multiple of the block size %d",
                     t->name, n_per_row, t->block_size);
        return -1;
    }
    const Py_ssize_t nblocks = n_per_row / t->block_size;
    if (nblocks > INT_MAX || n_per_row > PY_SSIZE_T_MAX / (Py_ssize_t) sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "row too long");
        return -1;
    }
    const Py_ssize_t rb = nblocks * t->type_size;
    const Py_ssize_t fb = n_per_row * (Py_ssize_t) sizeof(float);
    if (n_rows > 0 && (fb > PY_SSIZE_T_MAX / n_rows || rb > PY_SSIZE_T_MAX / n_rows)) {
        PyErr_SetString(PyExc_ValueError, "tensor too large");
        return -1;
    }
    *tt = t;
    *row_bytes = rb;
    *float_bytes = fb * n_rows;
    *quant_bytes = rb * n_rows;
    return 0;
}

PyDoc_STRVAR(quantize_doc,
"quantize(type_id, src, n_rows, n_per_row, dst, weights=None)\n--\n\n"
"Quantize n_rows rows of n_per_row float32 values (C-contiguous buffer `src`) into the writable\n"
"buffer `dst` (exactly n_rows * row_bytes bytes) with ggml's quantize_row_*_ref. Releases the GIL.");

static PyObject * py_quantize(PyObject * self, PyObject * args) {
    (void) self;
    int type_id;
    PyObject * src_obj;
    PyObject * dst_obj;
    PyObject * weights_obj = Py_None;
    Py_ssize_t n_rows, n_per_row;
    if (!PyArg_ParseTuple(args, "iOnnO|O:quantize", &type_id, &src_obj, &n_rows, &n_per_row, &dst_obj, &weights_obj)) {
        return NULL;
    }
    const type_traits * t;
    Py_ssize_t row_bytes, float_bytes, quant_bytes;
    if (check_shape(type_id, n_rows, n_per_row, &t, &row_bytes, &float_bytes, &quant_bytes) < 0) {
        return NULL;
    }

    Py_buffer src, dst;
    if (PyObject_GetBuffer(src_obj, &src, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return NULL;
    }
    if (!is_float32_format(src.format) && !is_byte_format(src.format)) {
        PyBuffer_Release(&src);
        PyErr_Format(PyExc_ValueError, "src must be a float32 buffer (got format '%s')", src.format);
        return NULL;
    }
    if (src.len != float_bytes) {
        PyBuffer_Release(&src);
        PyErr_Format(PyExc_ValueError, "src has %zd bytes, expected %zd (%zd x %zd float32)",
                     src.len, float_bytes, n_rows, n_per_row);
        return NULL;
    }
    if (PyObject_GetBuffer(dst_obj, &dst, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (dst.len != quant_bytes) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        PyErr_Format(PyExc_ValueError, "dst has %zd bytes, expected %zd (%zd rows x %zd bytes of %s)",
                     dst.len, quant_bytes, n_rows, row_bytes, t->name);
        return NULL;
    }

    /* Importance weights (one float32 per column) select ggml's weighted search where the type has one. */
    float * qw = NULL;
    if (weights_obj != Py_None) {
        Py_buffer wb;
        if (PyObject_GetBuffer(weights_obj, &wb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            PyBuffer_Release(&src);
            PyBuffer_Release(&dst);
            return NULL;
        }
        if (!is_float32_format(wb.format) || wb.len != n_per_row * (Py_ssize_t) sizeof(float)) {
            PyBuffer_Release(&wb);
            PyBuffer_Release(&src);
            PyBuffer_Release(&dst);
            PyErr_Format(PyExc_ValueError, "weights must be %zd float32 values (one per column)", n_per_row);
            return NULL;
        }
        qw = malloc((size_t) wb.len > 0 ? (size_t) wb.len : 1);
        if (qw == NULL) {
            PyBuffer_Release(&wb);
            PyBuffer_Release(&src);
            PyBuffer_Release(&dst);
            return PyErr_NoMemory();
        }
        memcpy(qw, wb.buf, (size_t) wb.len);
        PyBuffer_Release(&wb);
    }
    const quantize_w_fn quantize_weighted = qw != NULL ? t->quantize_weighted : NULL;

    /* Unaligned buffers (possible with memoryview slicing) go through aligned scratch copies. */
    const char * sp = (const char *) src.buf;
    char * dp = (char *) dst.buf;
    void * src_tmp = NULL;
    void * dst_tmp = NULL;
    if (float_bytes > 0 && ((uintptr_t) sp % _Alignof(float)) != 0) {
        src_tmp = malloc((size_t) float_bytes);
        if (src_tmp == NULL) goto nomem;
        memcpy(src_tmp, sp, (size_t) float_bytes);
        sp = (const char *) src_tmp;
    }
    if (quant_bytes > 0 && ((uintptr_t) dp % _Alignof(ggml_half)) != 0) {
        dst_tmp = malloc((size_t) quant_bytes);
        if (dst_tmp == NULL) goto nomem;
        dp = (char *) dst_tmp;
    }

    const quantize_fn quantize_row = pick_quantize(t);
    Py_BEGIN_ALLOW_THREADS
    fp_env env;
    fp_env_enter(&env);
    for (Py_ssize_t r = 0; r < n_rows; ++r) {
        const float * row = (const float *) (sp + r * n_per_row * (Py_ssize_t) sizeof(float));
        if (quantize_weighted != NULL) {
            quantize_weighted(row, dp + r * row_bytes, n_per_row, qw);
        } else {
            quantize_row(row, dp + r * row_bytes, n_per_row);
        }
    }
    fp_env_leave(&env);
    if (dst_tmp != NULL) {
        memcpy(dst.buf, dst_tmp, (size_t) quant_bytes);
    }
    Py_END_ALLOW_THREADS

    free(src_tmp);
    free(dst_tmp);
    free(qw);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    Py_RETURN_NONE;

nomem:
    free(src_tmp);
    free(dst_tmp);
    free(qw);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return PyErr_NoMemory();
}

PyDoc_STRVAR(dequantize_doc,
"dequantize(type_id, src, n_rows, n_per_row, dst)\n--\n\n"
"Dequantize n_rows quantized rows (bytes-like `src`, exactly n_rows * row_bytes bytes) into the\n"
"writable C-contiguous float32 buffer `dst` (n_rows * n_per_row values) with ggml's\n"
"dequantize_row_*. Releases the GIL.");

static PyObject * py_dequantize(PyObject * self, PyObject * args) {
    (void) self;
    int type_id;
    PyObject * src_obj;
    PyObject * dst_obj;
    Py_ssize_t n_rows, n_per_row;
    if (!PyArg_ParseTuple(args, "iOnnO:dequantize", &type_id, &src_obj, &n_rows, &n_per_row, &dst_obj)) {
        return NULL;
    }
    const type_traits * t;
    Py_ssize_t row_bytes, float_bytes, quant_bytes;
    if (check_shape(type_id, n_rows, n_per_row, &t, &row_bytes, &float_bytes, &quant_bytes) < 0) {
        return NULL;
    }

    Py_buffer src, dst;
    if (PyObject_GetBuffer(src_obj, &src, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    if (src.len != quant_bytes) {
        PyBuffer_Release(&src);
        PyErr_Format(PyExc_ValueError, "src has %zd bytes, expected %zd (%zd rows x %zd bytes of %s)",
                     src.len, quant_bytes, n_rows, row_bytes, t->name);
        return NULL;
    }
    if (PyObject_GetBuffer(dst_obj, &dst, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (!is_float32_format(dst.format) && !is_byte_format(dst.format)) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        PyErr_Format(PyExc_ValueError, "dst must be a float32 buffer (got format '%s')", dst.format);
        return NULL;
    }
    if (dst.len != float_bytes) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        PyErr_Format(PyExc_ValueError, "dst has %zd bytes, expected %zd (%zd x %zd float32)",
                     dst.len, float_bytes, n_rows, n_per_row);
        return NULL;
    }

    const char * sp = (const char *) src.buf;
    char * dp = (char *) dst.buf;
    void * src_tmp = NULL;
    void * dst_tmp = NULL;
    if (quant_bytes > 0 && ((uintptr_t) sp % _Alignof(ggml_half)) != 0) {
        src_tmp = malloc((size_t) quant_bytes);
        if (src_tmp == NULL) goto nomem;
        memcpy(src_tmp, sp, (size_t) quant_bytes);
        sp = (const char *) src_tmp;
    }
    if (float_bytes > 0 && ((uintptr_t) dp % _Alignof(float)) != 0) {
        dst_tmp = malloc((size_t) float_bytes);
        if (dst_tmp == NULL) goto nomem;
        dp = (char *) dst_tmp;
    }

    Py_BEGIN_ALLOW_THREADS
    fp_env env;
    fp_env_enter(&env);
    for (Py_ssize_t r = 0; r < n_rows; ++r) {
        t->dequantize(sp + r * row_bytes, (float *) (dp + r * n_per_row * (Py_ssize_t) sizeof(float)), n_per_row);
    }
    fp_env_leave(&env);
    if (dst_tmp != NULL) {
        memcpy(dst.buf, dst_tmp, (size_t) float_bytes);
    }
    Py_END_ALLOW_THREADS

    free(src_tmp);
    free(dst_tmp);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    Py_RETURN_NONE;

nomem:
    free(src_tmp);
    free(dst_tmp);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return PyErr_NoMemory();
}

PyDoc_STRVAR(get_simd_doc,
"get_simd()\n--\n\n"
"Name of the SIMD path quantize() uses where it has one: 'scalar', 'avx2' or 'avx512'.");

static PyObject * py_get_simd(PyObject * self, PyObject * unused) {
    (void) self;
    (void) unused;
    return PyUnicode_FromString(SIMD_NAMES[simd_level]);
}

PyDoc_STRVAR(set_simd_doc,
"set_simd(name)\n--\n\n"
"Use the SIMD path `name` ('scalar' = the reference code only; one of SIMD_AVAILABLE) from now on,\n"
"process-wide. The bytes do not depend on it; it exists to compare the paths. Returns the old name.");

static PyObject * py_set_simd(PyObject * self, PyObject * arg) {
    (void) self;
    const char * name = PyUnicode_AsUTF8(arg);
    if (name == NULL) {
        return NULL;
    }
    for (int level = 0; level <= simd_max; ++level) {
        if (strcmp(name, SIMD_NAMES[level]) == 0) {
            const int old = simd_level;
            simd_level = level;
            return PyUnicode_FromString(SIMD_NAMES[old]);
        }
    }
    PyErr_Format(PyExc_ValueError, "SIMD path '%s' is not available here (best: '%s')", name, SIMD_NAMES[simd_max]);
    return NULL;
}

static PyMethodDef kernels_methods[] = {
    {"quantize", py_quantize, METH_VARARGS, quantize_doc},
    {"dequantize", py_dequantize, METH_VARARGS, dequantize_doc},
    {"get_simd", py_get_simd, METH_NOARGS, get_simd_doc},
    {"set_simd", py_set_simd, METH_O, set_simd_doc},
    {NULL, NULL, 0, NULL},
};

static int kernels_exec(PyObject * module) {
    for (uint32_t h = 0; h < (1u << 16); ++h) {
        table_f32_f16[h] = ggml_compute_fp16_to_fp32((ggml_half) h);
    }
#ifdef CKPT_X86_SIMD
    unsigned int eax, ebx, ecx, edx;
    const int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && f16c) {
        simd_max = SIMD_AVX2;
        if (__builtin_cpu_supports("avx512f")) {
            simd_max = SIMD_AVX512;
        }
    }
#endif
    simd_level = simd_max;
    PyObject * avail = PyTuple_New(simd_max + 1);
    if (avail == NULL) {
        return -1;
    }
    for (int level = 0; level <= simd_max; ++level) {
        PyTuple_SET_ITEM(avail, level, PyUnicode_FromString(SIMD_NAMES[level]));
        if (PyTuple_GET_ITEM(avail, level) == NULL) {
            Py_DECREF(avail);
            return -1;
        }
    }
    if (PyModule_AddObject(module, "SIMD_AVAILABLE", avail) < 0) {
        Py_DECREF(avail);
        return -1;
    }
    PyObject * types = PyDict_New();
    if (types == NULL) {
        return -1;
    }
    for (int i = 0; i < N_TRAITS; ++i) {
        const type_traits * t = &TRAITS_TABLE[i];
        PyObject * key = PyLong_FromLong(t->id);
        PyObject * val = Py_BuildValue("(sii)", t->name, t->block_size, t->type_size);
        if (key == NULL || val == NULL || PyDict_SetItem(types, key, val) < 0) {
            Py_XDECREF(key);
            Py_XDECREF(val);
            Py_DECREF(types);
            return -1;
        }
        Py_DECREF(key);
        Py_DECREF(val);
    }
    if (PyModule_AddObject(module, "TYPES", types) < 0) {
        Py_DECREF(types);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot kernels_slots[] = {
    {Py_mod_exec, kernels_exec},
    {0, NULL},
};

static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT,
    "ckptkit.quant.ggml._kernels",
    "ggml's reference quantizers (quantize_row_*_ref / dequantize_row_*), bit-exact, GIL released.",
    0,
    kernels_methods,
    kernels_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) {
    return PyModuleDef_Init(&kernels_module);
}
