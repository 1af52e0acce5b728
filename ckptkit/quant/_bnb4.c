/* bitsandbytes' 4-bit blockwise quantization on the CPU, the same bytes as its default kernel
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

static PyMethodDef methods[] = {
    {"quantize_4bit", py_quantize_4bit, METH_VARARGS, quantize_4bit_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_bnb4", "bitsandbytes' 4-bit quantization, one pass.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__bnb4(void) {
    return PyModule_Create(&module);
}
