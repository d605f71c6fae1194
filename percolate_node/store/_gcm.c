/* AES-256-GCM sealing for the encrypted store, in one C call per value.
 *
 * Why native: the store seals and opens one small value per RocksDB key. Through
 * `cryptography`'s AESGCM each call builds a fresh cipher context (key schedule
 * included) and Python joins header, nonce and associated data around it: about
 * 0.5 us of overhead per value, which costs more than RocksDB itself for small values.
 * Here each DEK keeps an initialised OpenSSL context per direction, so a call only sets
 * the nonce; the associated data is fed in pieces, and the sealed value is built in
 * one allocation. Nonces come from OpenSSL's CSPRNG through a per-object pool that is
 * thrown away in a forked child.
 *
 * The format is crypto.py's (version 1):
 *   sealed = version (1) | DEK id (4, big-endian) | nonce (12) | ciphertext | tag (16)
 *   associated data = version | DEK id | context | key, where context = tenant 0 cf 0.
 * Every call runs holding the GIL, which serialises use of the shared contexts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define FORMAT_VERSION 1
#define HEADER_BYTES 5
#define NONCE_BYTES 12
#define TAG_BYTES 16
#define KEY_BYTES 32
#define BODY_BYTES (HEADER_BYTES + NONCE_BYTES)
#define NONCE_POOL 256 /* nonces drawn from the CSPRNG at a time */

static volatile unsigned long fork_generation = 0;

static void
after_fork_in_child(void)
{
    fork_generation++; /* a child must never hand out its parent's pooled nonces */
}

typedef struct {
    unsigned char header[HEADER_BYTES];
    EVP_CIPHER_CTX *encrypt;
    EVP_CIPHER_CTX *decrypt;
} Dek;

typedef struct {
    PyObject_HEAD
    Py_ssize_t count;
    Dek *deks;
    Dek *active;
    unsigned char pool[NONCE_BYTES * NONCE_POOL];
    int pool_used; /* nonces already handed out of pool */
    unsigned long pool_generation;
} Keys;

static void
put_header(unsigned char *out, unsigned long dek_id)
{
    out[0] = FORMAT_VERSION;
    out[1] = (unsigned char)(dek_id >> 24);
    out[2] = (unsigned char)(dek_id >> 16);
    out[3] = (unsigned char)(dek_id >> 8);
    out[4] = (unsigned char)dek_id;
}

static PyObject *
openssl_error(const char *what)
{
    ERR_clear_error(); /* leave nothing queued for the next OpenSSL user in this thread */
    PyErr_Format(PyExc_RuntimeError, "OpenSSL failed to %s", what);
    return NULL;
}

static void
Keys_dealloc(Keys *self)
{
    for (Py_ssize_t i = 0; i < self->count; i++) {
        EVP_CIPHER_CTX_free(self->deks[i].encrypt); /* frees and cleanses the key schedule */
        EVP_CIPHER_CTX_free(self->deks[i].decrypt);
    }
    PyMem_Free(self->deks);
    OPENSSL_cleanse(self->pool, sizeof(self->pool));
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Keys_init(Keys *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"deks", "active", NULL};
    PyObject *deks, *active_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!", names, &PyDict_Type, &deks, &PyLong_Type, &active_obj))
        return -1;
    unsigned long active = PyLong_AsUnsignedLong(active_obj);
    if ((active == (unsigned long)-1 && PyErr_Occurred()) || active > 0xFFFFFFFFUL) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "DEK ids are integers in [0, 2**32)");
        return -1;
    }
    if (self->deks != NULL) {
        PyErr_SetString(PyExc_TypeError, "Keys objects are immutable: build a new one");
        return -1;
    }
    Py_ssize_t count = PyDict_Size(deks);
    if (count == 0) {
        PyErr_SetString(PyExc_ValueError, "at least one DEK is needed");
        return -1;
    }
    self->deks = PyMem_Calloc((size_t)count, sizeof(Dek));
    if (self->deks == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject *id_obj, *key_obj;
    Py_ssize_t pos = 0;
    Dek *active_dek = NULL;
    while (PyDict_Next(deks, &pos, &id_obj, &key_obj)) {
        unsigned long dek_id = PyLong_AsUnsignedLong(id_obj);
        if (PyErr_Occurred() || dek_id > 0xFFFFFFFFUL) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "DEK ids are integers in [0, 2**32)");
            return -1;
        }
        if (!PyBytes_Check(key_obj) || PyBytes_GET_SIZE(key_obj) != KEY_BYTES) {
            PyErr_SetString(PyExc_ValueError, "DEKs are 32-byte bytes objects");
            return -1;
        }
        const unsigned char *key = (const unsigned char *)PyBytes_AS_STRING(key_obj);
        Dek *dek = &self->deks[self->count++]; /* counted now so dealloc frees it on failure */
        put_header(dek->header, dek_id);
        dek->encrypt = EVP_CIPHER_CTX_new();
        dek->decrypt = EVP_CIPHER_CTX_new();
        if (dek->encrypt == NULL || dek->decrypt == NULL
            || EVP_EncryptInit_ex(dek->encrypt, EVP_aes_256_gcm(), NULL, key, NULL) != 1
            || EVP_DecryptInit_ex(dek->decrypt, EVP_aes_256_gcm(), NULL, key, NULL) != 1) {
            openssl_error("initialise an AES-256-GCM context");
            return -1;
        }
        if (dek_id == active)
            active_dek = dek;
    }
    if (active_dek == NULL) {
        PyErr_Format(PyExc_ValueError, "the active DEK %lu is not among the DEKs", active);
        return -1;
    }
    self->pool_used = NONCE_POOL; /* empty: filled on the first seal */
    self->active = active_dek;     /* last: only a fully initialised object seals and opens */
    return 0;
}

/* 12 fresh bytes from the CSPRNG, or NULL with an exception set. */
static const unsigned char *
next_nonce(Keys *self)
{
    if (self->pool_used == NONCE_POOL || self->pool_generation != fork_generation) {
        if (RAND_bytes(self->pool, sizeof(self->pool)) != 1) {
            openssl_error("draw random nonces");
            return NULL;
        }
        self->pool_used = 0;
        self->pool_generation = fork_generation;
    }
    const unsigned char *nonce = self->pool + NONCE_BYTES * self->pool_used++;
    return nonce;
}

static int
check_bytes(Keys *self, PyObject *const *args, Py_ssize_t nargs, const char *name)
{
    if (self->active == NULL) { /* made by __new__ without __init__ */
        PyErr_SetString(PyExc_ValueError, "Keys object was not initialised");
        return -1;
    }
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s(context, key, value) takes 3 arguments", name);
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        if (!PyBytes_CheckExact(args[i])) {
            PyErr_Format(PyExc_TypeError, "%s takes bytes, got %.100s", name, Py_TYPE(args[i])->tp_name);
            return -1;
        }
        if (PyBytes_GET_SIZE(args[i]) > INT_MAX / 2) {
            PyErr_Format(PyExc_OverflowError, "%s: value too large", name);
            return -1;
        }
    }
    return 0;
}

/* Feeds header | context | key to ctx as associated data: in one update when it fits
 * a small buffer (each EVP call costs tens of nanoseconds), else in three. */
static int
feed_associated_data(EVP_CIPHER_CTX *ctx, const unsigned char *header, PyObject *context, PyObject *key,
                     int encrypting)
{
    int (*update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int) =
        encrypting ? EVP_EncryptUpdate : EVP_DecryptUpdate;
    const unsigned char *context_bytes = (const unsigned char *)PyBytes_AS_STRING(context);
    const unsigned char *key_bytes = (const unsigned char *)PyBytes_AS_STRING(key);
    size_t context_size = (size_t)PyBytes_GET_SIZE(context), key_size = (size_t)PyBytes_GET_SIZE(key);
    int written;
    unsigned char joined[256];
    if (HEADER_BYTES + context_size + key_size <= sizeof(joined)) {
        memcpy(joined, header, HEADER_BYTES);
        memcpy(joined + HEADER_BYTES, context_bytes, context_size);
        memcpy(joined + HEADER_BYTES + context_size, key_bytes, key_size);
        return update(ctx, NULL, &written, joined, (int)(HEADER_BYTES + context_size + key_size)) == 1;
    }
    return update(ctx, NULL, &written, header, HEADER_BYTES) == 1
        && update(ctx, NULL, &written, context_bytes, (int)context_size) == 1
        && update(ctx, NULL, &written, key_bytes, (int)key_size) == 1;
}

PyDoc_STRVAR(seal_doc, "seal(context, key, value) -> sealed bytes, with the active DEK and a fresh nonce.");

static PyObject *
Keys_seal(Keys *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_bytes(self, args, nargs, "seal") < 0)
        return NULL;
    PyObject *value = args[2];
    int length = (int)PyBytes_GET_SIZE(value);
    const unsigned char *nonce = next_nonce(self);
    if (nonce == NULL)
        return NULL;
    PyObject *sealed = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)BODY_BYTES + length + TAG_BYTES);
    if (sealed == NULL)
        return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(sealed);
    Dek *dek = self->active;
    EVP_CIPHER_CTX *ctx = dek->encrypt;
    memcpy(out, dek->header, HEADER_BYTES);
    memcpy(out + HEADER_BYTES, nonce, NONCE_BYTES);
    int written = 0, final = 0;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1
        || !feed_associated_data(ctx, dek->header, args[0], args[1], 1)
        || EVP_EncryptUpdate(ctx, out + BODY_BYTES, &written, (const unsigned char *)PyBytes_AS_STRING(value),
                             length) != 1
        || EVP_EncryptFinal_ex(ctx, out + BODY_BYTES + written, &final) != 1
        || written + final != length
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, out + BODY_BYTES + length) != 1) {
        Py_DECREF(sealed);
        return openssl_error("seal a value");
    }
    return sealed;
}

PyDoc_STRVAR(open_doc,
             "open(context, key, sealed) -> the value; ValueError saying why when it does not open here.");

static PyObject *
Keys_open(Keys *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_bytes(self, args, nargs, "open") < 0)
        return NULL;
    PyObject *sealed_obj = args[2];
    const unsigned char *sealed = (const unsigned char *)PyBytes_AS_STRING(sealed_obj);
    Py_ssize_t size = PyBytes_GET_SIZE(sealed_obj);
    if (size < HEADER_BYTES || sealed[0] != FORMAT_VERSION) {
        PyErr_SetString(PyExc_ValueError, "malformed header");
        return NULL;
    }
    Dek *dek = NULL;
    for (Py_ssize_t i = 0; i < self->count; i++) {
        if (memcmp(self->deks[i].header, sealed, HEADER_BYTES) == 0) {
            dek = &self->deks[i];
            break;
        }
    }
    if (dek == NULL) {
        unsigned long dek_id = ((unsigned long)sealed[1] << 24) | ((unsigned long)sealed[2] << 16)
                             | ((unsigned long)sealed[3] << 8) | (unsigned long)sealed[4];
        PyErr_Format(PyExc_ValueError, "sealed with DEK %lu, which this keyring does not hold", dek_id);
        return NULL;
    }
    if (size < BODY_BYTES + TAG_BYTES) {
        PyErr_SetString(PyExc_ValueError, "truncated: shorter than a nonce and a tag");
        return NULL;
    }
    int length = (int)(size - BODY_BYTES - TAG_BYTES);
    PyObject *value = PyBytes_FromStringAndSize(NULL, length);
    if (value == NULL)
        return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(value);
    EVP_CIPHER_CTX *ctx = dek->decrypt;
    int written = 0, final = 0;
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, sealed + HEADER_BYTES) != 1
        || !feed_associated_data(ctx, dek->header, args[0], args[1], 0)
        || EVP_DecryptUpdate(ctx, out, &written, sealed + BODY_BYTES, length) != 1
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, (void *)(sealed + BODY_BYTES + length)) != 1) {
        OPENSSL_cleanse(out, (size_t)length);
        Py_DECREF(value);
        return openssl_error("open a value");
    }
    if (EVP_DecryptFinal_ex(ctx, out + written, &final) != 1 || written + final != length) {
        ERR_clear_error();
        OPENSSL_cleanse(out, (size_t)length); /* unauthenticated plaintext never leaves here */
        Py_DECREF(value);
        PyErr_SetString(PyExc_ValueError, "authentication tag mismatch");
        return NULL;
    }
    return value;
}

static PyMethodDef Keys_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))Keys_seal, METH_FASTCALL, seal_doc},
    {"open", (PyCFunction)(void (*)(void))Keys_open, METH_FASTCALL, open_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Keys_doc, "Keys(deks: dict[int, bytes], active: int): AES-256-GCM contexts for one keyring's DEKs.");

static PyTypeObject KeysType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "percolate_node.store._gcm.Keys",
    .tp_basicsize = sizeof(Keys),
    .tp_dealloc = (destructor)Keys_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Keys_doc,
    .tp_methods = Keys_methods,
    .tp_init = (initproc)Keys_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef gcm_module = {
    PyModuleDef_HEAD_INIT, "_gcm", "AES-256-GCM sealing of store values with reused OpenSSL contexts.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__gcm(void)
{
    if (PyType_Ready(&KeysType) < 0)
        return NULL;
    static int atfork_registered = 0;
    if (!atfork_registered) {
        if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
            PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
            return NULL;
        }
        atfork_registered = 1;
    }
    PyObject *module = PyModule_Create(&gcm_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&KeysType);
    if (PyModule_AddObject(module, "Keys", (PyObject *)&KeysType) < 0) {
        Py_DECREF(&KeysType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
