/* The libraries' quantizers on the CPU, each one pass with the GIL released and the same bytes as
 * the library's own, which runs as several torch passes: bitsandbytes' default kernels
 * (bitsandbytes/backends/default/ops.py) for 4-bit blockwise (NF4/FP4) and LLM.int8's row-wise
 * int8, and optimum-quanto's qint8 weights (AbsmaxOptimizer + quantize_symmetric).
 *
 * 4-bit blockwise quantization, the same bytes as its default kernel
 * (bitsandbytes/backends/default/ops.py, "bitsandbytes::quantize_4bit"), which runs as several
 * float32 torch passes (absmax, scale, clamp, bucketize, pack): about 20 ns a value on these
 * machines. This is one pass, with the GIL released so ckptkit's workers quantize in parallel.
 *
 * Per block of `blocksize` float32 values: absmax = max |x|; every x is scaled by
 * 1 / max(absmax, 1e-38) (a multiplication by the reciprocal, as there), clamped to [-1, 1] and
 * replaced by the number of `bounds` (the 15 midpoints of the sorted 16-value code) below it,
 * remapped through `order` for FP4; two values a byte, the first in the high nibble. A last
 * partial block divides by its clamped absmax instead (as there), and its absmax is stored
 * clamped. An odd count is padded with one 0.0. Callers pass finite values only (non-finite ones
 * go to bitsandbytes itself: quant/bnb.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

static inline float clamp1(float v) {
    return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
}

#define MAX_BLOCK 4096

static void quantize(const float * x, Py_ssize_t n, Py_ssize_t blocksize, const float * bounds, const uint8_t * order,
                     uint8_t * out, float * absmax) {
    Py_ssize_t full = n - n % blocksize;
    Py_ssize_t nq = n + (n & 1);
    float b[16];
    memcpy(b, bounds, 15 * sizeof(float));
    b[15] = INFINITY;
    uint8_t q[MAX_BLOCK];
    float v[MAX_BLOCK];
    for (Py_ssize_t start = 0; start < nq; start += blocksize) {
        Py_ssize_t end = start + blocksize < n ? start + blocksize : n;
        Py_ssize_t stop = start + blocksize < nq ? start + blocksize : nq;
        float am = 0.0f;
        for (Py_ssize_t i = start; i < end; i++) {
            float a = x[i] < 0 ? -x[i] : x[i];
            am = a > am ? a : am;
        }
        int tail = start >= full;
        float floor = 1e-38f;
        float clamped = am < floor ? floor : am;
        float inv = 1.0f / clamped;
        absmax[start / blocksize] = tail ? clamped : am;
        Py_ssize_t len = stop - start;
        if (!tail) {
            for (Py_ssize_t j = 0; j < len; j++) {
                v[j] = clamp1(x[start + j] * inv);
            }
        } else {
            for (Py_ssize_t j = 0; j < len; j++) {
                v[j] = start + j < n ? clamp1(x[start + j] / clamped) : 0.0f;
            }
        }
        /* torch.bucketize(right=False): how many bounds lie below each value, by a branchless
           binary search over the 15 bounds (+inf as a 16th) */
        for (Py_ssize_t j = 0; j < len; j++) {
            float x1 = v[j];
            int i = b[7] < x1 ? 8 : 0;
            i += b[i + 3] < x1 ? 4 : 0;
            i += b[i + 1] < x1 ? 2 : 0;
            i += b[i] < x1 ? 1 : 0;
            q[j] = (uint8_t) i;
        }
        if (order) {
            for (Py_ssize_t j = 0; j < len; j++) {
                q[j] = order[q[j]];
            }
        }
        for (Py_ssize_t j = 0; j < len; j += 2) {
            out[(start + j) >> 1] = (uint8_t) (q[j] << 4) | q[j + 1];
        }
    }
}

static int get(PyObject * obj, Py_buffer * view, int writable, Py_ssize_t len, const char * what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        return -1;
    }
    if (view->len != len) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", what, view->len, len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(quantize_4bit_doc,
"quantize_4bit(src, n, blocksize, bounds, order, dst, absmax)\n\n"
"src: n float32 values; bounds: 15 float32; order: 16 uint8 or None (NF4);\n"
"dst: (n + 1) // 2 bytes; absmax: ceil(n / blocksize) float32. Fills dst and absmax.");

static PyObject * py_quantize_4bit(PyObject * self, PyObject * args) {
    (void) self;
    PyObject *src_obj, *bounds_obj, *order_obj, *dst_obj, *absmax_obj;
    Py_ssize_t n, blocksize;
    if (!PyArg_ParseTuple(args, "OnnOOOO:quantize_4bit", &src_obj, &n, &blocksize, &bounds_obj, &order_obj, &dst_obj,
                          &absmax_obj)) {
        return NULL;
    }
    if (n < 0 || blocksize <= 0 || blocksize > MAX_BLOCK || blocksize % 2) {
        PyErr_SetString(PyExc_ValueError, "n must be >= 0 and blocksize even, in 2..4096");
        return NULL;
    }
    Py_buffer src, bounds, order, dst, absmax;
    int have_order = order_obj != Py_None;
    if (get(src_obj, &src, 0, n * 4, "src") < 0) {
        return NULL;
    }
    if (get(bounds_obj, &bounds, 0, 15 * 4, "bounds") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (have_order && get(order_obj, &order, 0, 16, "order") < 0) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&bounds);
        return NULL;
    }
    if (get(dst_obj, &dst, 1, (n + 1) / 2, "dst") < 0) {
        goto fail_dst;
    }
    if (get(absmax_obj, &absmax, 1, ((n + blocksize - 1) / blocksize) * 4, "absmax") < 0) {
        PyBuffer_Release(&dst);
        goto fail_dst;
    }
    Py_BEGIN_ALLOW_THREADS
    quantize((const float *) src.buf, n, blocksize, (const float *) bounds.buf,
             have_order ? (const uint8_t *) order.buf : NULL, (uint8_t *) dst.buf, (float *) absmax.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&absmax);
    PyBuffer_Release(&dst);
    if (have_order) {
        PyBuffer_Release(&order);
    }
    PyBuffer_Release(&bounds);
    PyBuffer_Release(&src);
    Py_RETURN_NONE;
fail_dst:
    if (have_order) {
        PyBuffer_Release(&order);
    }
    PyBuffer_Release(&bounds);
    PyBuffer_Release(&src);
    return NULL;
}

/* LLM.int8's row-wise quantization of an fp16 matrix, the same bytes as bitsandbytes' default
 * "bitsandbytes::int8_vectorwise_quant" with threshold 0 (what Int8Params does to a weight):
 *
 *     row_stats = torch.max(A.abs(), dim=1).values.float()
 *     out_row = torch.round(A * (127.0 / row_stats.unsqueeze(-1))).to(torch.int8)
 *
 * `127.0 / t` is torch's Tensor.__rtruediv__, t.reciprocal() * 127.0, both rounded in float32, and
 * A * scale promotes the fp16 value to float32 before the product; torch.round rounds half to even.
 * A finite fp16 value's magnitude orders as its bits & 0x7fff do, so the row maximum is found on the
 * integers. Rows holding a value that is not finite, and all-zero rows (127 / 0 is inf and 0 * inf
 * is NaN, cast to int8 as the platform casts NaN), are not quantized here: the function returns
 * False and the caller hands the whole matrix to bitsandbytes.
 */
static inline float half_to_float(uint16_t h) {
    /* the 15 magnitude bits placed where a float's exponent and mantissa start, times 2^112 (the
       exponent bias difference, 127 - 15): exact for normal and subnormal halves alike */
    union { uint32_t u; float f; } v = {(uint32_t) (h & 0x7fff) << 13};
    v.f *= 0x1p112f;
    v.u |= (uint32_t) (h & 0x8000) << 16;  /* the sign by its bit: no branch, so callers' loops vectorize */
    return v.f;
}

static int quantize_int8_rows(const uint16_t * a, Py_ssize_t rows, Py_ssize_t cols, int8_t * out, float * stats) {
    const float magic = 12582912.0f;  /* 1.5 * 2^23: x + magic - magic rounds |x| < 2^22 half to even */
    for (Py_ssize_t r = 0; r < rows; r++) {
        const uint16_t * row = a + r * cols;
        uint16_t top = 0;
        for (Py_ssize_t c = 0; c < cols; c++) {
            uint16_t m = row[c] & 0x7fff;
            top = m > top ? m : top;
        }
        if (top == 0 || top >= 0x7c00) {
            return 0;
        }
        float absmax = half_to_float(top);
        float scale = (1.0f / absmax) * 127.0f;  /* two roundings, as torch: reciprocal, then * 127 */
        stats[r] = absmax;
        int8_t * q = out + r * cols;
        for (Py_ssize_t c = 0; c < cols; c++) {
            float x = half_to_float(row[c]) * scale;
            q[c] = (int8_t) (int) ((x + magic) - magic);
        }
    }
    return 1;
}

PyDoc_STRVAR(quantize_int8_doc,
"quantize_int8(src, rows, cols, dst, stats) -> bool\n\n"
"src: rows * cols float16 values (their bits); dst: rows * cols int8; stats: rows float32.\n"
"Fills dst and stats and returns True, or returns False (dst and stats partly written) when a\n"
"row is all zeros or holds a value that is not finite.");

static PyObject * py_quantize_int8(PyObject * self, PyObject * args) {
    (void) self;
    PyObject *src_obj, *dst_obj, *stats_obj;
    Py_ssize_t rows, cols;
    if (!PyArg_ParseTuple(args, "OnnOO:quantize_int8", &src_obj, &rows, &cols, &dst_obj, &stats_obj)) {
        return NULL;
    }
    if (rows < 0 || cols < 0) {
        PyErr_SetString(PyExc_ValueError, "rows and cols must be >= 0");
        return NULL;
    }
    Py_buffer src, dst, stats;
    if (get(src_obj, &src, 0, rows * cols * 2, "src") < 0) {
        return NULL;
    }
    if (get(dst_obj, &dst, 1, rows * cols, "dst") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (get(stats_obj, &stats, 1, rows * 4, "stats") < 0) {
        PyBuffer_Release(&dst);
        PyBuffer_Release(&src);
        return NULL;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = quantize_int8_rows((const uint16_t *) src.buf, rows, cols, (int8_t *) dst.buf, (float *) stats.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&stats);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    return PyBool_FromLong(ok);
}

/* optimum-quanto's qint8 weight, per output row, in the weight's own dtype (quant/quanto.py
 * _quantize_8bit holds the torch steps this reproduces, checked against a frozen QLinear):
 *
 *     scale = amax(|w|, dim=1) / 127          (rounded to the weight's dtype)
 *     data  = clamp(round(w / scale), -128, 127).to(int8)
 *
 * torch computes each bf16/fp16 operation in float32 and rounds the result to the dtype (to
 * nearest, ties to even); round() is ties to even. dtype: 0 float32, 1 float16, 2 bfloat16. A
 * finite value's magnitude orders as its bits without the sign do, so the row maximum is found on
 * the integers. A row that is all zeros (0 / 0), holds a value that is not finite, or whose scale
 * rounds to 0 is not quantized here: the function returns False and the caller runs the torch steps.
 */
static inline float bits_to_float(uint32_t u) {
    union { uint32_t u; float f; } v = {u};
    return v.f;
}

static inline uint32_t float_to_bits(float f) {
    union { float f; uint32_t u; } v = {f};
    return v.u;
}

static inline uint16_t float_to_bf16(float f) {  /* finite f: to nearest, ties to even */
    uint32_t u = float_to_bits(f);
    return (uint16_t) ((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

static inline float bf16_to_float(uint16_t h) {
    return bits_to_float((uint32_t) h << 16);
}

static inline uint16_t float_to_half(float f) {
    /* finite f: to nearest, ties to even (F. Giesen's float_to_half_fast3_rtne), both cases computed
       and one selected, so that the loops calling it vectorize */
    uint32_t u = float_to_bits(f);
    uint32_t sign = u & 0x80000000u;
    u ^= sign;
    float magic = bits_to_float(((127u - 15) + (23 - 10) + 1) << 23);
    /* below 2^-14: a subnormal half or zero, rounded by a float addition */
    uint32_t sub = float_to_bits(bits_to_float(u) + magic) - float_to_bits(magic);
    uint32_t normal = (u + ((uint32_t) (15 - 127) << 23) + 0xfff + ((u >> 13) & 1)) >> 13;
    uint32_t small = 0u - (uint32_t) (u < (113u << 23)), huge = 0u - (uint32_t) (u >= (127u + 16) << 23);
    uint32_t o = (((sub & small) | (normal & ~small)) & ~huge) | (0x7c00 & huge);  /* 65536 or more: inf */
    return (uint16_t) (o | (sign >> 16));
}

static inline float load(const void * src, int dtype, Py_ssize_t i) {
    if (dtype == 0) {
        return ((const float *) src)[i];
    }
    uint16_t h = ((const uint16_t *) src)[i];
    return dtype == 1 ? half_to_float(h) : bf16_to_float(h);
}

static inline float to_dtype(float f, int dtype) {  /* f rounded to the dtype, as a float */
    return dtype == 0 ? f : (dtype == 1 ? half_to_float(float_to_half(f)) : bf16_to_float(float_to_bf16(f)));
}

static inline uint32_t magnitude(const void * src, int dtype, Py_ssize_t i) {
    return dtype == 0 ? ((const uint32_t *) src)[i] & 0x7fffffffu : ((const uint16_t *) src)[i] & 0x7fffu;
}

/* one row; inlined with dtype a constant, so that each dtype's loop is compiled (and vectorized) apart */
static inline __attribute__((always_inline)) int quantize_qint8_row(const void * src, const int dtype, Py_ssize_t base,
                                                                     Py_ssize_t cols, int8_t * q, void * scales,
                                                                     Py_ssize_t r) {
    const uint32_t inf = dtype == 0 ? 0x7f800000u : (dtype == 1 ? 0x7c00u : 0x7f80u);
    const float magic = 12582912.0f;  /* 1.5 * 2^23: x + magic - magic rounds |x| < 2^22 half to even */
    uint32_t top = 0;
    for (Py_ssize_t c = 0; c < cols; c++) {
        uint32_t m = magnitude(src, dtype, base + c);
        top = m > top ? m : top;
    }
    if (top == 0 || top >= inf) {
        return 0;
    }
    float amax = dtype == 0 ? bits_to_float(top) : (dtype == 1 ? half_to_float((uint16_t) top)
                                                                 : bf16_to_float((uint16_t) top));
    float scale = to_dtype(amax / 127.0f, dtype);
    if (scale == 0.0f) {
        return 0;
    }
    if (dtype == 0) {
        ((float *) scales)[r] = scale;
    } else {
        ((uint16_t *) scales)[r] = dtype == 1 ? float_to_half(scale) : float_to_bf16(scale);
    }
    for (Py_ssize_t c = 0; c < cols; c++) {
        float x = to_dtype(load(src, dtype, base + c) / scale, dtype);
        x = (x + magic) - magic;
        q[c] = (int8_t) (x < -128.0f ? -128 : (x > 127.0f ? 127 : (int) x));
    }
    return 1;
}

static int quantize_qint8_rows(const void * src, int dtype, Py_ssize_t rows, Py_ssize_t cols, int8_t * out,
                               void * scales) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        int ok = dtype == 0 ? quantize_qint8_row(src, 0, r * cols, cols, out + r * cols, scales, r)
               : dtype == 1 ? quantize_qint8_row(src, 1, r * cols, cols, out + r * cols, scales, r)
                            : quantize_qint8_row(src, 2, r * cols, cols, out + r * cols, scales, r);
        if (!ok) {
            return 0;
        }
    }
    return 1;
}

PyDoc_STRVAR(quantize_qint8_doc,
"quantize_qint8(src, dtype, rows, cols, dst, scales) -> bool\n\n"
"src: rows * cols values of dtype (0 float32, 1 float16, 2 bfloat16); dst: rows * cols int8;\n"
"scales: rows values of dtype. Fills dst and scales and returns True, or returns False (partly\n"
"written) when a row is all zeros, holds a value that is not finite, or its scale rounds to 0.");

static PyObject * py_quantize_qint8(PyObject * self, PyObject * args) {
    (void) self;
    PyObject *src_obj, *dst_obj, *scales_obj;
    Py_ssize_t rows, cols;
    int dtype;
    if (!PyArg_ParseTuple(args, "OinnOO:quantize_qint8", &src_obj, &dtype, &rows, &cols, &dst_obj, &scales_obj)) {
        return NULL;
    }
    if (rows < 0 || cols < 0 || dtype < 0 || dtype > 2) {
        PyErr_SetString(PyExc_ValueError, "rows and cols must be >= 0 and dtype 0, 1 or 2");
        return NULL;
    }
    Py_ssize_t size = dtype == 0 ? 4 : 2;
    Py_buffer src, dst, scales;
    if (get(src_obj, &src, 0, rows * cols * size, "src") < 0) {
        return NULL;
    }
    if (get(dst_obj, &dst, 1, rows * cols, "dst") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (get(scales_obj, &scales, 1, rows * size, "scales") < 0) {
        PyBuffer_Release(&dst);
        PyBuffer_Release(&src);
        return NULL;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = quantize_qint8_rows(src.buf, dtype, rows, cols, (int8_t *) dst.buf, scales.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&scales);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"quantize_4bit", py_quantize_4bit, METH_VARARGS, quantize_4bit_doc},
    {"quantize_int8", py_quantize_int8, METH_VARARGS, quantize_int8_doc},
    {"quantize_qint8", py_quantize_qint8, METH_VARARGS, quantize_qint8_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_libkernels", "bitsandbytes' and optimum-quanto's quantizers, one pass each.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__libkernels(void) {
    return PyModule_Create(&module);
}
