/* l2bridge.core._sealer: the DATA datagram's AEAD, a batch per call (optional).
 *
 * The same bytes as the pure-Python path in l2bridge/core/noise.py (``seal`` and
 * ``open_data``), without a Python object per step: one call seals a whole batch
 * of plaintexts under consecutive counters, with one cipher context that keeps
 * its key.  Layout of a DATA datagram (noise.py):
 *
 *     type 4 | lane u8 | 2 zero | receiver index u32le | counter u64le |
 *     ChaCha20-Poly1305(plaintext), nonce = 4 zero bytes || counter u64le,
 *     associated data = the 16-byte header
 *
 * ChaCha20-Poly1305 is OpenSSL's libcrypto (EVP_chacha20_poly1305), as the
 * ``cryptography`` package the pure path uses.  Built by setuptools as an
 * optional extension: without a compiler or the headers, noise.py runs alone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <string.h>

#define KEY_LEN 32
#define HEADER_LEN 16
#define TAG_LEN 16
#define MSG_DATA 4

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *ctx;
    int encrypt;
} Sealer;

static void
put_u32le(unsigned char *p, uint32_t v)
{
    p[0] = v & 0xff; p[1] = (v >> 8) & 0xff; p[2] = (v >> 16) & 0xff; p[3] = (v >> 24) & 0xff;
}

static void
put_u64le(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (v >> (8 * i)) & 0xff;
    }
}

static int
Sealer_init(Sealer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key", "encrypt", NULL};
    Py_buffer key;
    int encrypt;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*p", kwlist, &key, &encrypt)) {
        return -1;
    }
    if (key.len != KEY_LEN) {
        PyBuffer_Release(&key);
        PyErr_Format(PyExc_ValueError, "a key of %zd bytes: expected %d", key.len, KEY_LEN);
        return -1;
    }
    if (self->ctx == NULL) {
        self->ctx = EVP_CIPHER_CTX_new();
    }
    self->encrypt = encrypt;
    int ok = self->ctx != NULL
        && EVP_CipherInit_ex(self->ctx, EVP_chacha20_poly1305(), NULL, NULL, NULL, encrypt)
        && EVP_CIPHER_CTX_ctrl(self->ctx, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL)
        && EVP_CipherInit_ex(self->ctx, NULL, NULL, (const unsigned char *)key.buf, NULL, -1);
    PyBuffer_Release(&key);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto refused the ChaCha20-Poly1305 key");
        return -1;
    }
    return 0;
}

static void
Sealer_dealloc(Sealer *self)
{
    if (self->ctx != NULL) {
        EVP_CIPHER_CTX_free(self->ctx);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* One AEAD pass: nonce from the counter, the header as associated data. */
static int
crypt_one(EVP_CIPHER_CTX *ctx, const unsigned char *header, uint64_t counter,
          const unsigned char *in, int in_len, unsigned char *out)
{
    unsigned char nonce[12] = {0};
    int len = 0;
    put_u64le(nonce + 4, counter);
    if (!EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, -1)) {
        return 0;
    }
    if (!EVP_CipherUpdate(ctx, NULL, &len, header, HEADER_LEN)) {
        return 0;
    }
    if (in_len > 0 && !EVP_CipherUpdate(ctx, out, &len, in, in_len)) {
        return 0;
    }
    return 1;
}

/* seal_many(kind_byte, remote_index, counter, stride, plaintexts) -> list of datagrams */
static PyObject *
Sealer_seal_many(Sealer *self, PyObject *args)
{
    unsigned int first, remote;
    unsigned long long counter, stride;
    PyObject *plaintexts;
    if (!self->encrypt) {
        PyErr_SetString(PyExc_TypeError, "this sealer opens; it does not seal");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "IIKKO!", &first, &remote, &counter, &stride, &PyList_Type,
                          &plaintexts)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(plaintexts);
    PyObject *out = PyList_New(count);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(plaintexts, i);
        char *data;
        Py_ssize_t size;
        if (PyBytes_AsStringAndSize(item, &data, &size) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        if (size > INT_MAX - HEADER_LEN - TAG_LEN) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_ValueError, "a plaintext too large to seal");
            return NULL;
        }
        PyObject *datagram = PyBytes_FromStringAndSize(NULL, HEADER_LEN + size + TAG_LEN);
        if (datagram == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(datagram);
        uint64_t c = counter + (uint64_t)i * stride;
        p[0] = first & 0xff;
        p[1] = (first >> 8) & 0xff;
        p[2] = p[3] = 0;
        put_u32le(p + 4, remote);
        put_u64le(p + 8, c);
        int len = 0;
        if (!crypt_one(self->ctx, p, c, (const unsigned char *)data, (int)size, p + HEADER_LEN)
            || !EVP_CipherFinal_ex(self->ctx, p + HEADER_LEN + size, &len)
            || !EVP_CIPHER_CTX_ctrl(self->ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN,
                                    p + HEADER_LEN + size)) {
            Py_DECREF(datagram);
            Py_DECREF(out);
            PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to seal");
            return NULL;
        }
        PyList_SET_ITEM(out, i, datagram);
    }
    return out;
}

/* open(datagram) -> plaintext, or None when the tag is wrong (the caller counts it). */
static PyObject *
Sealer_open(Sealer *self, PyObject *arg)
{
    Py_buffer view;
    if (self->encrypt) {
        PyErr_SetString(PyExc_TypeError, "this sealer seals; it does not open");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (view.len < HEADER_LEN + TAG_LEN || view.len > INT_MAX) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    const unsigned char *d = (const unsigned char *)view.buf;
    uint64_t counter = 0;
    for (int i = 7; i >= 0; i--) {
        counter = (counter << 8) | d[8 + i];
    }
    int size = (int)view.len - HEADER_LEN - TAG_LEN;
    PyObject *plain = PyBytes_FromStringAndSize(NULL, size);
    if (plain == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    unsigned char tag[TAG_LEN];
    memcpy(tag, d + HEADER_LEN + size, TAG_LEN);
    int len = 0;
    int ok = crypt_one(self->ctx, d, counter, d + HEADER_LEN, size,
                       (unsigned char *)PyBytes_AS_STRING(plain))
        && EVP_CIPHER_CTX_ctrl(self->ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag)
        && EVP_CipherFinal_ex(self->ctx, (unsigned char *)PyBytes_AS_STRING(plain) + size, &len)
           > 0;
    PyBuffer_Release(&view);
    if (!ok) {
        Py_DECREF(plain);
        Py_RETURN_NONE;
    }
    return plain;
}

static PyMethodDef Sealer_methods[] = {
    {"seal_many", (PyCFunction)Sealer_seal_many, METH_VARARGS,
     "seal_many(first_two_bytes, remote_index, counter, stride, plaintexts) -> datagrams"},
    {"open", (PyCFunction)Sealer_open, METH_O,
     "open(datagram) -> plaintext, or None when it does not authenticate"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SealerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "l2bridge.core._sealer.Sealer",
    .tp_doc = "Sealer(key, encrypt): the ChaCha20-Poly1305 of one direction of a session",
    .tp_basicsize = sizeof(Sealer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sealer_init,
    .tp_dealloc = (destructor)Sealer_dealloc,
    .tp_methods = Sealer_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sealer",
    "The DATA datagram's ChaCha20-Poly1305, a batch per call (libcrypto).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__sealer(void)
{
    if (PyType_Ready(&SealerType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&SealerType);
    if (PyModule_AddObject(m, "Sealer", (PyObject *)&SealerType) < 0) {
        Py_DECREF(&SealerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
