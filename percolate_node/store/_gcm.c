/* AES-256-GCM sealing for the encrypted store, in one C call per value.
 *
 * Why native: the store seals and opens one small value per RocksDB key. Through
 * `cryptography`'s AESGCM each call builds a fresh cipher context (key schedule
 * included) and Python joins header, nonce and associated data around it: about
 * 0.5 us of overhead per value, which costs more than RocksDB itself for small values.
 * Here each DEK keeps its cipher state initialised, so a call only sets the nonce; the
 * associated data is fed in pieces, and the sealed value is built in one allocation.
 * Where the CPU has AES-NI that state is OpenSSL's GCM mode (CRYPTO_gcm128_*) over the
 * AES instructions (_aes_ni.h): OpenSSL 3.0's EVP layer alone cost about 120 of the 210
 * ns a 64-byte seal took (the store's put of 1,000 such values went from 0.60x to 0.73x
 * plaintext RocksDB); values over AES_NI_MAX_BYTES still go through EVP, whose stitched
 * assembly is faster there. Without AES-NI, or after _use_aes_ni(False), EVP does all.
 * Both produce the same bytes (tests/test_store.py checks both against
 * `cryptography`'s AES-GCM). Nonces come from OpenSSL's CSPRNG through a per-object pool that no
 * clone of the process can reuse: the pool lives in a page marked MADV_WIPEONFORK, which
 * the kernel hands to any child (fork(), a raw fork/clone syscall that skips
 * pthread_atfork) zeroed, so the child finds it empty and draws its own. Where the kernel
 * lacks MADV_WIPEONFORK (before Linux 4.14) the pid is compared on every seal instead
 * (getpid() is a ~150 ns syscall here, as much as the seal itself, hence not the default).
 * Neither covers a checkpoint/restore or VM-snapshot clone of the same pid.
 *
 * seal_batch() does a whole write batch in one call: for small values the Python loop
 * around seal() (attribute reads, the call, WriteBatch.put, the change-log framing) cost
 * several times the sealing itself. It seals exactly as seal() does (same nonces, budget
 * and fork guard), frames the change-log operations in the batch's order, then calls the
 * batch's put/delete back in key order per column family: RocksDB's memtable inserts
 * ascending keys much faster than random ones (it keeps the last insert position), and
 * the sort is stable, so the last of several operations on one key still wins.
 *
 * Put and Delete, the operations the store's write() takes, are native objects here too:
 * a dataclass instance costs about six times as much to make, and a batch makes one per
 * value.
 *
 * Each object also carries a seal budget (``budget``): the store reserves seals in blocks
 * in its keyring and sets it, and seal refuses once it is spent, so no DEK seals more
 * values than the keyring recorded (GCM's random-nonce bound).
 *
 * The format is crypto.py's (version 1):
 *   sealed = version (1) | DEK id (4, big-endian) | nonce (12) | ciphertext | tag (16)
 *   associated data = version | DEK id | context | key, where context = tenant 0 cf 0.
 * Every call runs holding the GIL, which serialises use of the shared contexts, the pool
 * and the budget: this module relies on it (it declares no free-threading support, so a
 * free-threaded interpreter re-enables the GIL to import it); add a lock per object before
 * ever declaring Py_MOD_GIL_NOT_USED.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#include "structmember.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/modes.h>
#include <openssl/rand.h>

#include "_aes_ni.h"

#define FORMAT_VERSION 1
#define HEADER_BYTES 5
#define NONCE_BYTES 12
#define TAG_BYTES 16
#define KEY_BYTES 32
#define BODY_BYTES (HEADER_BYTES + NONCE_BYTES)
#define NONCE_POOL 256 /* nonces drawn from the CSPRNG at a time */
/* The longest sealed value open() accepts, so every length fits OpenSSL's int; seal()
 * refuses values whose sealed form would be longer, so whatever seals also opens. */
#define MAX_SEALED_BYTES (INT_MAX / 2)
#define MAX_VALUE_BYTES (MAX_SEALED_BYTES - BODY_BYTES - TAG_BYTES)
#define AES_NI_MAX_BYTES 4096 /* longer values go through EVP (see Dek) */

static int force_pid_check = 0; /* tests: use the fallback even where WIPEONFORK works */
static int use_aes_ni = 0;      /* set at import where the CPU has AES-NI; tests can turn it off */

typedef struct {
    unsigned int available; /* nonces left; 0 in a clone's copy, since the page is wiped */
    pid_t pid;              /* owner of the pool, checked only without WIPEONFORK */
    unsigned char nonces[NONCE_BYTES * NONCE_POOL];
} NoncePool;

/* One DEK's cipher state: an EVP context per direction, and where the CPU has AES-NI also
 * OpenSSL's GCM mode over it (gcm and schedule, see _aes_ni.h), which seals and opens the
 * values of up to AES_NI_MAX_BYTES. Past that EVP's stitched AES-GCM assembly is as fast or
 * faster (a review measured 1.0x at 4 KB, 1.2x at 16 KB-1 MB), and the change-log records
 * are that large. */
typedef struct {
    unsigned char header[HEADER_BYTES];
    EVP_CIPHER_CTX *encrypt;
    EVP_CIPHER_CTX *decrypt;
    GCM128_CONTEXT *gcm;  /* holds a pointer to schedule, which must outlive it */
    void *schedule;       /* AesNiKey */
} Dek;

typedef struct {
    PyObject_HEAD
    Py_ssize_t count;
    Dek *deks;
    Dek *active;
    NoncePool *pool;   /* its own mapping: a whole page, so it can be wiped on fork */
    size_t pool_size;
    int check_pid;     /* 1 where the page could not be marked MADV_WIPEONFORK */
    long long budget;  /* seals left before the store must reserve more; < 0: no limit */
    int destroyed;
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

/* Frees every context (cleansing the key schedules) and the nonce pool. */
static void
forget_keys(Keys *self)
{
    self->active = NULL; /* first: nothing seals or opens from here on */
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Dek *dek = &self->deks[i];
        EVP_CIPHER_CTX_free(dek->encrypt); /* frees and cleanses the key schedule */
        EVP_CIPHER_CTX_free(dek->decrypt);
        if (dek->gcm != NULL)
            CRYPTO_gcm128_release(dek->gcm); /* cleanses H and its table */
#if HAVE_AES_NI_CODE
        if (dek->schedule != NULL) {
            OPENSSL_cleanse(dek->schedule, sizeof(AesNiKey));
            PyMem_Free(dek->schedule);
        }
#endif
    }
    self->count = 0;
    PyMem_Free(self->deks);
    self->deks = NULL;
    if (self->pool != NULL) {
        OPENSSL_cleanse(self->pool, self->pool_size);
        munmap(self->pool, self->pool_size);
        self->pool = NULL;
    }
}

static void
Keys_dealloc(Keys *self)
{
    forget_keys(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A page of its own for the nonce pool, wiped in any child the kernel forks. */
static int
map_pool(Keys *self)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t size = sizeof(NoncePool);
    if (page > 0)
        size = (size + (size_t)page - 1) / (size_t)page * (size_t)page;
    void *pool = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pool == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->pool = pool; /* zero-filled: empty */
    self->pool_size = size;
    self->check_pid = force_pid_check;
#ifdef MADV_WIPEONFORK
    if (madvise(pool, size, MADV_WIPEONFORK) != 0)
        self->check_pid = 1;
#else
    self->check_pid = 1;
#endif
#ifdef MADV_DONTDUMP
    (void)madvise(pool, size, MADV_DONTDUMP); /* nonces are no secret, but keep cores small */
#endif
    self->pool->pid = getpid();
    return 0;
}

/* The DEK's cipher state for key (see Dek); -1 with an exception set, what was made so far
 * left for forget_keys. */
static int
init_cipher(Dek *dek, const unsigned char *key)
{
    dek->encrypt = EVP_CIPHER_CTX_new();
    dek->decrypt = EVP_CIPHER_CTX_new();
    if (dek->encrypt == NULL || dek->decrypt == NULL
        || EVP_EncryptInit_ex(dek->encrypt, EVP_aes_256_gcm(), NULL, key, NULL) != 1
        || EVP_DecryptInit_ex(dek->decrypt, EVP_aes_256_gcm(), NULL, key, NULL) != 1) {
        openssl_error("initialise an AES-256-GCM context");
        return -1;
    }
#if HAVE_AES_NI_CODE
    if (use_aes_ni) {
        if ((dek->schedule = PyMem_Calloc(1, sizeof(AesNiKey))) == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        aes_ni_expand_key(dek->schedule, key);
        if ((dek->gcm = CRYPTO_gcm128_new(dek->schedule, aes_ni_block)) == NULL) {
            openssl_error("initialise an AES-256-GCM context");
            return -1;
        }
    }
#endif
    return 0;
}

static int
Keys_init(Keys *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"deks", "active", "budget", NULL};
    PyObject *deks, *active_obj;
    long long budget = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!|L", names, &PyDict_Type, &deks, &PyLong_Type, &active_obj,
                                     &budget))
        return -1;
    unsigned long active = PyLong_AsUnsignedLong(active_obj);
    if ((active == (unsigned long)-1 && PyErr_Occurred()) || active > 0xFFFFFFFFUL) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "DEK ids are integers in [0, 2**32)");
        return -1;
    }
    if (self->deks != NULL || self->destroyed) {
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
        if (init_cipher(dek, key) < 0)
            return -1;
        if (dek_id == active)
            active_dek = dek;
    }
    if (active_dek == NULL) {
        PyErr_Format(PyExc_ValueError, "the active DEK %lu is not among the DEKs", active);
        return -1;
    }
    if (map_pool(self) < 0)
        return -1;
    self->budget = budget;
    self->active = active_dek; /* last: only a fully initialised object seals and opens */
    return 0;
}

/* 12 fresh bytes from the CSPRNG, or NULL with an exception set. */
static const unsigned char *
next_nonce(Keys *self)
{
    NoncePool *pool = self->pool;
    if (self->check_pid) {
        pid_t pid = getpid();
        if (pool->pid != pid) { /* a clone: never hand out the parent's pool */
            pool->available = 0;
            pool->pid = pid;
        }
    }
    if (pool->available == 0) { /* OpenSSL's DRBG reseeds itself in a new pid */
        if (RAND_bytes(pool->nonces, sizeof(pool->nonces)) != 1) {
            openssl_error("draw random nonces");
            return NULL;
        }
        pool->available = NONCE_POOL;
    }
    return pool->nonces + NONCE_BYTES * (NONCE_POOL - pool->available--);
}

static int
check_bytes(Keys *self, PyObject *const *args, Py_ssize_t nargs, const char *name)
{
    if (self->active == NULL) { /* made by __new__ without __init__, or destroyed */
        PyErr_SetString(PyExc_RuntimeError, self->destroyed ? "these keys were destroyed (store closed or shredded)"
                                                            : "Keys object was not initialised");
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
        if (i < 2 && PyBytes_GET_SIZE(args[i]) > INT_MAX / 2) {
            PyErr_Format(PyExc_OverflowError, "%s: %s too large", name, i == 0 ? "context" : "key");
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

#if HAVE_AES_NI_CODE
/* Associated data up to this size is fed to GHASH in one piece, from the stack: OpenSSL's
 * CRYPTO_gcm128_aad folds a piece that does not end on a 16-byte block in byte by byte, so
 * three short pieces (header 5, context about 20, key 16 bytes) cost more than the value's
 * own GHASH. The bytes hashed are the same either way. */
#define AAD_JOINED_BYTES 128

/* Starts a message on dek's GCM mode: nonce, then header | context | key as associated data. */
static int
gcm_start(Dek *dek, const unsigned char *nonce, PyObject *context, PyObject *key)
{
    CRYPTO_gcm128_setiv(dek->gcm, nonce, NONCE_BYTES);
    size_t context_size = (size_t)PyBytes_GET_SIZE(context), key_size = (size_t)PyBytes_GET_SIZE(key);
    if (context_size + key_size <= AAD_JOINED_BYTES - HEADER_BYTES) {
        unsigned char joined[AAD_JOINED_BYTES]; /* not secret: header, tenant, family, key */
        memcpy(joined, dek->header, HEADER_BYTES);
        memcpy(joined + HEADER_BYTES, PyBytes_AS_STRING(context), context_size);
        memcpy(joined + HEADER_BYTES + context_size, PyBytes_AS_STRING(key), key_size);
        return CRYPTO_gcm128_aad(dek->gcm, joined, HEADER_BYTES + context_size + key_size) == 0;
    }
    return CRYPTO_gcm128_aad(dek->gcm, dek->header, HEADER_BYTES) == 0
        && CRYPTO_gcm128_aad(dek->gcm, (const unsigned char *)PyBytes_AS_STRING(context),
                             (size_t)PyBytes_GET_SIZE(context)) == 0
        && CRYPTO_gcm128_aad(dek->gcm, (const unsigned char *)PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key)) == 0;
}
#endif

/* value sealed under the active DEK with a fresh nonce, bound to context and key; NULL with an
 * exception set (RuntimeError: not initialised, destroyed, budget spent or OpenSSL failed;
 * OverflowError: too large). The caller has checked that all three are exact bytes. */
static PyObject *
seal_value(Keys *self, PyObject *context, PyObject *key, PyObject *value)
{
    if (self->active == NULL) { /* checked on every value: seal_batch calls back into Python */
        PyErr_SetString(PyExc_RuntimeError, self->destroyed ? "these keys were destroyed (store closed or shredded)"
                                                            : "Keys object was not initialised");
        return NULL;
    }
    if (PyBytes_GET_SIZE(context) > INT_MAX / 2 || PyBytes_GET_SIZE(key) > INT_MAX / 2) {
        PyErr_SetString(PyExc_OverflowError, "seal: context or key too large");
        return NULL;
    }
    if (PyBytes_GET_SIZE(value) > MAX_VALUE_BYTES) {
        PyErr_Format(PyExc_OverflowError, "a value of %zd bytes is over the %d a sealed value can hold",
                     PyBytes_GET_SIZE(value), MAX_VALUE_BYTES);
        return NULL;
    }
    if (self->budget == 0) {
        PyErr_SetString(PyExc_RuntimeError, "seal budget spent: the store reserves seals before sealing");
        return NULL;
    }
    int length = (int)PyBytes_GET_SIZE(value);
    const unsigned char *nonce = next_nonce(self);
    if (nonce == NULL)
        return NULL;
    if (self->budget > 0)
        self->budget--; /* counted once the nonce is drawn, whatever happens next */
    PyObject *sealed = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)BODY_BYTES + length + TAG_BYTES);
    if (sealed == NULL)
        return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(sealed);
    Dek *dek = self->active;
    memcpy(out, dek->header, HEADER_BYTES);
    memcpy(out + HEADER_BYTES, nonce, NONCE_BYTES);
#if HAVE_AES_NI_CODE
    if (dek->gcm != NULL && length <= AES_NI_MAX_BYTES) {
        if (!gcm_start(dek, nonce, context, key)
            || CRYPTO_gcm128_encrypt_ctr32(dek->gcm, (const unsigned char *)PyBytes_AS_STRING(value), out + BODY_BYTES,
                                           (size_t)length, aes_ni_ctr32) != 0) {
            Py_DECREF(sealed);
            return openssl_error("seal a value");
        }
        CRYPTO_gcm128_tag(dek->gcm, out + BODY_BYTES + length, TAG_BYTES);
        return sealed;
    }
#endif
    EVP_CIPHER_CTX *ctx = dek->encrypt;
    int written = 0, final = 0;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1
        || !feed_associated_data(ctx, dek->header, context, key, 1)
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

PyDoc_STRVAR(seal_doc, "seal(context, key, value) -> sealed bytes, with the active DEK and a fresh nonce.");

static PyObject *
Keys_seal(Keys *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_bytes(self, args, nargs, "seal") < 0)
        return NULL;
    return seal_value(self, args[0], args[1], args[2]);
}

/* --- seal_batch: a whole write batch in one call ------------------------------------ */

static PyObject *BatchError; /* _gcm.BatchError(index, error): seal_batch stopped at ops[index] */

/* Change-log operation codes and framing: durability/changelog.py's (tests compare them). */
#define LOG_PUT 1
#define LOG_DELETE 2

typedef struct {
    unsigned char *data;
    size_t size, capacity;
    size_t hint; /* the first allocation's size, when the caller can guess the total */
} Buffer;

static int
buffer_grow(Buffer *buffer, size_t more)
{
    if (buffer->size + more <= buffer->capacity)
        return 0;
    size_t capacity = buffer->capacity ? buffer->capacity : (buffer->hint > 4096 ? buffer->hint : 4096);
    while (capacity < buffer->size + more) {
        if (capacity > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        capacity *= 2;
    }
    unsigned char *data = PyMem_Realloc(buffer->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    buffer->data = data;
    buffer->capacity = capacity;
    return 0;
}

static void
put_u32(unsigned char *out, size_t value)
{
    out[0] = (unsigned char)(value >> 24);
    out[1] = (unsigned char)(value >> 16);
    out[2] = (unsigned char)(value >> 8);
    out[3] = (unsigned char)value;
}

/* Appends op | family | key_len u32 | key | value_len u32 | value (value NULL: a delete, length 0). */
static int
log_operation(Buffer *log, int family, PyObject *key, PyObject *value)
{
    size_t key_size = (size_t)PyBytes_GET_SIZE(key);
    size_t value_size = value == NULL ? 0 : (size_t)PyBytes_GET_SIZE(value);
    if (buffer_grow(log, 2 + 4 + key_size + 4 + value_size) < 0)
        return -1;
    unsigned char *out = log->data + log->size;
    out[0] = value == NULL ? LOG_DELETE : LOG_PUT;
    out[1] = (unsigned char)family;
    put_u32(out + 2, key_size);
    memcpy(out + 6, PyBytes_AS_STRING(key), key_size);
    put_u32(out + 6 + key_size, value_size);
    if (value_size)
        memcpy(out + 10 + key_size, PyBytes_AS_STRING(value), value_size);
    log->size += 10 + key_size + value_size;
    return 0;
}

/* One operation of a batch, sealed and waiting for its put/delete callback. */
typedef struct {
    PyObject *target;  /* new reference: targets[cf] = (handle, context, log code) */
    PyObject *key;     /* new reference */
    PyObject *sealed;  /* new reference; NULL for a delete */
    Py_ssize_t group;  /* the target's rank by first appearance in the batch */
    Py_ssize_t index;  /* the operation's place in ops */
    uint64_t prefix;   /* the key's first 8 bytes, big-endian, zero-padded: orders most pairs alone */
} Entry;

static uint64_t
key_prefix(PyObject *key)
{
    const unsigned char *bytes = (const unsigned char *)PyBytes_AS_STRING(key);
    Py_ssize_t size = PyBytes_GET_SIZE(key);
    uint64_t prefix = 0;
    for (Py_ssize_t i = 0; i < 8; i++)
        prefix = (prefix << 8) | (i < size ? bytes[i] : 0);
    return prefix;
}

/* Callback order: by family (first appearance), then key bytewise (RocksDB's default
 * comparator: memcmp, shorter first on a tie), then place in the batch (a stable sort).
 * Zero padding keeps the prefix order bytewise; equal prefixes fall through to memcmp. */
static int
entry_order(const Entry *a, const Entry *b)
{
    if (a->group != b->group)
        return a->group < b->group ? -1 : 1;
    if (a->prefix != b->prefix)
        return a->prefix < b->prefix ? -1 : 1;
    Py_ssize_t a_size = PyBytes_GET_SIZE(a->key), b_size = PyBytes_GET_SIZE(b->key);
    int order = memcmp(PyBytes_AS_STRING(a->key), PyBytes_AS_STRING(b->key),
                       (size_t)(a_size < b_size ? a_size : b_size));
    if (order != 0)
        return order;
    if (a_size != b_size)
        return a_size < b_size ? -1 : 1;
    return a->index < b->index ? -1 : a->index > b->index;
}

/* What the sort moves: an entry's rank fields and its place. Sorting these small copies with
 * the comparison inlined costs about a third of qsort over whole entries through a callback
 * (a tenth of seal_batch's time for 1,000 small values); most pairs differ in group or prefix,
 * and only ties read the keys. */
typedef struct {
    uint64_t prefix;
    Py_ssize_t group;
    Py_ssize_t index;
} Rank;

static inline int
rank_before(const Rank *a, const Rank *b, const Entry *entries)
{
    if (a->group != b->group)
        return a->group < b->group;
    if (a->prefix != b->prefix)
        return a->prefix < b->prefix;
    return entry_order(&entries[a->index], &entries[b->index]) < 0;
}

#define RANK_RUN 16

/* Sorts ranks[0:count] into entry_order: insertion sort of runs of RANK_RUN, then bottom-up
 * merges through scratch (count ranks). Stable, though entry_order is total anyway. */
static void
sort_ranks(Rank *ranks, Rank *scratch, Py_ssize_t count, const Entry *entries)
{
    for (Py_ssize_t start = 0; start < count; start += RANK_RUN) {
        Py_ssize_t end = start + RANK_RUN < count ? start + RANK_RUN : count;
        for (Py_ssize_t i = start + 1; i < end; i++) {
            Rank moving = ranks[i];
            Py_ssize_t j = i;
            for (; j > start && rank_before(&moving, &ranks[j - 1], entries); j--)
                ranks[j] = ranks[j - 1];
            ranks[j] = moving;
        }
    }
    Rank *from = ranks, *to = scratch;
    for (Py_ssize_t width = RANK_RUN; width < count; width *= 2) {
        for (Py_ssize_t left = 0; left < count; left += 2 * width) {
            Py_ssize_t middle = left + width < count ? left + width : count;
            Py_ssize_t right = middle + width < count ? middle + width : count;
            Py_ssize_t i = left, j = middle, k = left;
            while (i < middle && j < right)
                to[k++] = rank_before(&from[j], &from[i], entries) ? from[j++] : from[i++];
            while (i < middle)
                to[k++] = from[i++];
            while (j < right)
                to[k++] = from[j++];
        }
        Rank *swap = from;
        from = to;
        to = swap;
    }
    if (from != ranks)
        memcpy(ranks, from, (size_t)count * sizeof(Rank));
}

typedef struct {
    PyObject_HEAD
    PyObject *cf;
    PyObject *key;
    PyObject *value; /* NULL in a Delete */
} Op;

static PyTypeObject PutType, DeleteType;

/* Checks, seals and frames ops[index] into entry; -1 with an exception set. ``seen`` lists the
 * targets met so far (``*groups`` of them), which ranks families by first appearance. */
static int
prepare_operation(Keys *self, PyObject *op, Py_ssize_t index, PyObject *targets, PyTypeObject *put_type,
                  PyTypeObject *delete_type, Buffer *log, Py_ssize_t *logged, Entry *entry, PyObject **seen,
                  Py_ssize_t *groups)
{
    static PyObject *cf_name, *key_name, *value_name; /* interned once, kept for the process */
    if (cf_name == NULL && ((cf_name = PyUnicode_InternFromString("cf")) == NULL
                            || (key_name = PyUnicode_InternFromString("key")) == NULL
                            || (value_name = PyUnicode_InternFromString("value")) == NULL))
        return -1;
    int is_put = Py_TYPE(op) == put_type;
    if (!is_put && Py_TYPE(op) != delete_type) {
        PyErr_Format(PyExc_TypeError, "write takes Put and Delete operations, not %.100s", Py_TYPE(op)->tp_name);
        return -1;
    }
    int status = -1;
    PyObject *cf = NULL, *key = NULL, *value = NULL, *sealed = NULL;
    if (Py_TYPE(op) == &PutType || Py_TYPE(op) == &DeleteType) { /* the store's own: read the fields directly */
        is_put = Py_TYPE(op) == &PutType; /* by what it is, whichever of the two types it was passed as */
        cf = Py_NewRef(((Op *)op)->cf);
        key = Py_NewRef(((Op *)op)->key);
        value = Py_XNewRef(((Op *)op)->value);
    } else if ((cf = PyObject_GetAttr(op, cf_name)) == NULL || (key = PyObject_GetAttr(op, key_name)) == NULL
               || (is_put && (value = PyObject_GetAttr(op, value_name)) == NULL)) {
        goto done;
    }
    PyObject *target = PyDict_GetItemWithError(targets, cf); /* borrowed */
    if (target == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "unknown column family");
        goto done;
    }
    if (!PyTuple_Check(target) || PyTuple_GET_SIZE(target) != 3 || !PyBytes_CheckExact(PyTuple_GET_ITEM(target, 1))
        || !PyLong_Check(PyTuple_GET_ITEM(target, 2))) {
        PyErr_SetString(PyExc_SystemError, "targets map a family to (handle, context bytes, log code)");
        goto done;
    }
    long family = PyLong_AsLong(PyTuple_GET_ITEM(target, 2));
    if (family == -1 && PyErr_Occurred())
        goto done;
    if (!PyBytes_CheckExact(key) || PyBytes_GET_SIZE(key) == 0) {
        PyErr_SetString(PyExc_TypeError, "keys are non-empty bytes");
        goto done;
    }
    if (is_put) {
        if (!PyBytes_CheckExact(value)) {
            PyErr_SetString(PyExc_TypeError, "values are bytes");
            goto done;
        }
        if ((sealed = seal_value(self, PyTuple_GET_ITEM(target, 1), key, value)) == NULL)
            goto done;
    }
    if (family >= 0) { /* < 0: a family left out of the change log */
        if (family > 255 || log_operation(log, (int)family, key, sealed) < 0)
            goto done;
        (*logged)++;
    }
    Py_ssize_t group = 0;
    while (group < *groups && seen[group] != target)
        group++;
    if (group == *groups)
        seen[(*groups)++] = target;
    entry->target = Py_NewRef(target); /* held: a callback could change the targets dict */
    entry->key = key;
    entry->sealed = sealed;
    entry->group = group;
    entry->index = index;
    entry->prefix = key_prefix(key);
    key = sealed = NULL; /* the entry holds them now */
    status = 0;
done:
    Py_XDECREF(cf);
    Py_XDECREF(key);
    Py_XDECREF(value);
    Py_XDECREF(sealed);
    return status;
}

/* Raises BatchError(index, the exception now set). */
static void
raise_batch_error(Py_ssize_t index)
{
    PyObject *type, *error, *traceback;
    PyErr_Fetch(&type, &error, &traceback);
    PyErr_NormalizeException(&type, &error, &traceback);
    if (traceback != NULL && error != NULL)
        PyException_SetTraceback(error, traceback);
    PyObject *place = PyLong_FromSsize_t(index);
    if (place != NULL && error != NULL) {
        PyObject *pair = PyTuple_Pack(2, place, error);
        if (pair != NULL) {
            PyErr_SetObject(BatchError, pair);
            Py_DECREF(pair);
        }
    }
    Py_XDECREF(place);
    Py_XDECREF(type);
    Py_XDECREF(error);
    Py_XDECREF(traceback);
}

PyDoc_STRVAR(seal_batch_doc,
             "seal_batch(ops, targets, put_type, delete_type, put, delete) -> (logged, log_ops)\n\n"
             "For each op (an instance of exactly put_type or delete_type, with .cf, .key and for a put\n"
             ".value), looks up targets[op.cf] = (handle, context, log code) and seals a put's value like\n"
             "seal(context, key, value). Then, in key order per family (families in order of first\n"
             "appearance, a stable sort), calls put(key, sealed, handle) or delete(key, handle).\n"
             "Returns how many operations went to the change log (log code >= 0) and their encoding in\n"
             "the batch's order (durability/changelog.py's operation framing, sealed values as stored).\n"
             "On the first failure raises BatchError(index in ops, error), error being what seal or the\n"
             "callback raised (KeyError: unknown family; TypeError: not a Put/Delete, key or value not\n"
             "bytes, empty key); no callback runs before every operation is sealed.");

static PyObject *
Keys_seal_batch(Keys *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "seal_batch(ops, targets, put_type, delete_type, put, delete) takes 6 "
                                         "arguments");
        return NULL;
    }
    if (!PyDict_Check(args[1]) || !PyType_Check(args[2]) || !PyType_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "seal_batch: targets is a dict, put_type and delete_type types");
        return NULL;
    }
    PyObject *ops = PySequence_Tuple(args[0]); /* a copy: the callbacks cannot change what we walk */
    if (ops == NULL)
        return NULL;
    Py_ssize_t logged = 0, count = PyTuple_GET_SIZE(ops), prepared = 0, groups = 0;
    Buffer log = {NULL, 0, 0, 0};
    if (count > 0 && (Py_TYPE(PyTuple_GET_ITEM(ops, 0)) == &PutType)) { /* size the log for ops like the first */
        Op *first = (Op *)PyTuple_GET_ITEM(ops, 0);
        if (PyBytes_Check(first->key) && PyBytes_Check(first->value)) {
            size_t each = 10 + (size_t)PyBytes_GET_SIZE(first->key) + BODY_BYTES + TAG_BYTES
                        + (size_t)PyBytes_GET_SIZE(first->value);
            if (each <= (size_t)PY_SSIZE_T_MAX / 2 / (size_t)count)
                log.hint = each * (size_t)count + each / 8 * (size_t)count; /* one allocation, most batches */
            if (log.hint > ((size_t)64 << 20))
                log.hint = (size_t)64 << 20; /* a guess from one value: never a huge allocation on it alone */
        }
    }
    PyObject *result = NULL;
    Entry *entries = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Entry));
    PyObject **seen = PyMem_Calloc(count ? (size_t)count : 1, sizeof(PyObject *));
    Rank *ranks = PyMem_Malloc((count ? (size_t)count : 1) * 2 * sizeof(Rank)); /* and the sort's scratch */
    if (entries == NULL || seen == NULL || ranks == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; prepared < count; prepared++) { /* seal and frame, in the batch's order */
        if (prepare_operation(self, PyTuple_GET_ITEM(ops, prepared), prepared, args[1], (PyTypeObject *)args[2],
                              (PyTypeObject *)args[3], &log, &logged, &entries[prepared], seen, &groups) < 0) {
            raise_batch_error(prepared);
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++)
        ranks[i] = (Rank){entries[i].prefix, entries[i].group, i};
    sort_ranks(ranks, ranks + count, count, entries);
    for (Py_ssize_t i = 0; i < count; i++) { /* into the batch, in key order per family */
        Entry *entry = &entries[ranks[i].index];
        PyObject *handle = PyTuple_GET_ITEM(entry->target, 0), *called;
        if (entry->sealed != NULL) {
            PyObject *call[3] = {entry->key, entry->sealed, handle};
            called = PyObject_Vectorcall(args[4], call, 3, NULL);
        } else {
            PyObject *call[2] = {entry->key, handle};
            called = PyObject_Vectorcall(args[5], call, 2, NULL);
        }
        if (called == NULL) {
            raise_batch_error(entry->index);
            goto done;
        }
        Py_DECREF(called);
    }
    result = Py_BuildValue("(ny#)", logged, log.data == NULL ? "" : (const char *)log.data, (Py_ssize_t)log.size);
done:
    for (Py_ssize_t i = 0; entries != NULL && i < prepared; i++) {
        Py_DECREF(entries[i].target);
        Py_DECREF(entries[i].key);
        Py_XDECREF(entries[i].sealed);
    }
    PyMem_Free(entries);
    PyMem_Free(seen);
    PyMem_Free(ranks);
    PyMem_Free(log.data);
    Py_DECREF(ops);
    return result;
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
    if (size > MAX_SEALED_BYTES) {
        PyErr_SetString(PyExc_ValueError, "longer than any sealed value");
        return NULL;
    }
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
    enum { OPENED, OPENSSL_FAILED, TAG_MISMATCH } outcome = OPENED;
#if HAVE_AES_NI_CODE
    if (dek->gcm != NULL && length <= AES_NI_MAX_BYTES) {
        if (!gcm_start(dek, sealed + HEADER_BYTES, args[0], args[1])
            || CRYPTO_gcm128_decrypt_ctr32(dek->gcm, sealed + BODY_BYTES, out, (size_t)length, aes_ni_ctr32) != 0)
            outcome = OPENSSL_FAILED;
        else if (CRYPTO_gcm128_finish(dek->gcm, sealed + BODY_BYTES + length, TAG_BYTES) != 0) /* constant time */
            outcome = TAG_MISMATCH;
    } else
#endif
    {
        EVP_CIPHER_CTX *ctx = dek->decrypt;
        int written = 0, final = 0;
        if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, sealed + HEADER_BYTES) != 1
            || !feed_associated_data(ctx, dek->header, args[0], args[1], 0)
            || EVP_DecryptUpdate(ctx, out, &written, sealed + BODY_BYTES, length) != 1
            || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, (void *)(sealed + BODY_BYTES + length)) != 1)
            outcome = OPENSSL_FAILED;
        else if (EVP_DecryptFinal_ex(ctx, out + written, &final) != 1 || written + final != length) {
            ERR_clear_error();
            outcome = TAG_MISMATCH;
        }
    }
    if (outcome == OPENED)
        return value;
    OPENSSL_cleanse(out, (size_t)length); /* unauthenticated plaintext never leaves here */
    Py_DECREF(value);
    if (outcome == OPENSSL_FAILED)
        return openssl_error("open a value");
    PyErr_SetString(PyExc_ValueError, "authentication tag mismatch");
    return NULL;
}

PyDoc_STRVAR(destroy_doc, "destroy(): free and cleanse every key schedule now; seal and open refuse afterwards.");

static PyObject *
Keys_destroy(Keys *self, PyObject *Py_UNUSED(ignored))
{
    self->destroyed = 1;
    forget_keys(self);
    Py_RETURN_NONE;
}

static PyObject *
Keys_get_fork_guard(Keys *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(self->check_pid ? "pid check" : "wipe-on-fork");
}

static PyObject *
Keys_get_engine(Keys *self, void *Py_UNUSED(closure))
{
    if (self->count == 0)
        Py_RETURN_NONE;
    return PyUnicode_FromString(self->deks[0].gcm != NULL ? "aes-ni" : "evp");
}

static PyMethodDef Keys_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))Keys_seal, METH_FASTCALL, seal_doc},
    {"seal_batch", (PyCFunction)(void (*)(void))Keys_seal_batch, METH_FASTCALL, seal_batch_doc},
    {"open", (PyCFunction)(void (*)(void))Keys_open, METH_FASTCALL, open_doc},
    {"destroy", (PyCFunction)Keys_destroy, METH_NOARGS, destroy_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Keys_members[] = {
    {"budget", T_LONGLONG, offsetof(Keys, budget), 0, "seals left before more must be reserved (< 0: no limit)"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Keys_getset[] = {
    {"engine", (getter)Keys_get_engine, NULL, "'aes-ni' (values up to AES_NI_MAX_BYTES through OpenSSL's GCM mode over "
     "AES-NI, longer ones through EVP) or 'evp'; None once destroyed",
     NULL},
    {"fork_guard", (getter)Keys_get_fork_guard, NULL, "how a cloned process is kept from reusing pooled nonces",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(use_pid_check_doc, "_use_pid_check(on): new Keys check the pid on every seal (tests the fallback).");

static PyObject *
use_pid_check(PyObject *Py_UNUSED(module), PyObject *on)
{
    force_pid_check = PyObject_IsTrue(on);
    if (force_pid_check < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(use_aes_ni_doc, "_use_aes_ni(on): new Keys use AES-NI under OpenSSL's GCM mode (on, where the CPU has it) "
                              "or EVP (off); returns whether AES-NI is now used. Tests compare the two.");

static PyObject *
use_aes_ni_set(PyObject *Py_UNUSED(module), PyObject *on)
{
    int wanted = PyObject_IsTrue(on);
    if (wanted < 0)
        return NULL;
#if HAVE_AES_NI_CODE
    use_aes_ni = wanted && aes_ni_available();
#else
    use_aes_ni = 0;
#endif
    return PyBool_FromLong(use_aes_ni);
}

static PyMethodDef module_methods[] = {
    {"_use_pid_check", use_pid_check, METH_O, use_pid_check_doc},
    {"_use_aes_ni", use_aes_ni_set, METH_O, use_aes_ni_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Keys_doc, "Keys(deks: dict[int, bytes], active: int, budget: int = -1): AES-256-GCM contexts for one "
                       "keyring's DEKs.");

static PyTypeObject KeysType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "percolate_node.store._gcm.Keys",
    .tp_basicsize = sizeof(Keys),
    .tp_dealloc = (destructor)Keys_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Keys_doc,
    .tp_methods = Keys_methods,
    .tp_members = Keys_members,
    .tp_getset = Keys_getset,
    .tp_init = (initproc)Keys_init,
    .tp_new = PyType_GenericNew,
};


/* --- Put and Delete ---------------------------------------------------------------------- */

/* A new operation holding the fields. The cyclic GC tracks it only when a field could lead
 * back to it (anything but exact str and bytes): the store's own operations are never
 * tracked, which keeps them as cheap as an untracked tuple, and nothing leaks in a cycle. */
static PyObject *
op_create(PyTypeObject *type, PyObject *cf, PyObject *key, PyObject *value)
{
    Op *op = PyObject_GC_New(Op, type);
    if (op == NULL)
        return NULL;
    op->cf = Py_NewRef(cf);
    op->key = Py_NewRef(key);
    op->value = Py_XNewRef(value);
    if (!PyUnicode_CheckExact(cf) || !PyBytes_CheckExact(key) || (value != NULL && !PyBytes_CheckExact(value)))
        PyObject_GC_Track(op);
    return (PyObject *)op;
}

static PyObject *
Op_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *put_names[] = {"cf", "key", "value", NULL}, *delete_names[] = {"cf", "key", NULL};
    PyObject *cf, *key, *value = NULL;
    if (type == &PutType ? !PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:Put", put_names, &cf, &key, &value)
                         : !PyArg_ParseTupleAndKeywords(args, kwargs, "OO:Delete", delete_names, &cf, &key))
        return NULL;
    return op_create(type, cf, key, value);
}

/* Put(cf, key, value) and Delete(cf, key) called positionally, as the store's callers do:
 * no argument tuple is built. Anything else takes Op_new's parsing (and its messages). */
static PyObject *
Op_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    int is_put = (PyTypeObject *)type == &PutType;
    if (kwnames == NULL && nargs == (is_put ? 3 : 2))
        return op_create((PyTypeObject *)type, args[0], args[1], is_put ? args[2] : NULL);
    PyObject *positional = PyTuple_New(nargs), *keywords = NULL, *result = NULL;
    if (positional == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++)
        PyTuple_SET_ITEM(positional, i, Py_NewRef(args[i]));
    if (kwnames != NULL) {
        if ((keywords = PyDict_New()) == NULL)
            goto done;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++)
            if (PyDict_SetItem(keywords, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0)
                goto done;
    }
    result = Op_new((PyTypeObject *)type, positional, keywords);
done:
    Py_DECREF(positional);
    Py_XDECREF(keywords);
    return result;
}

static int
Op_traverse(Op *self, visitproc visit, void *arg)
{
    Py_VISIT(self->cf);
    Py_VISIT(self->key);
    Py_VISIT(self->value);
    return 0;
}

/* No tp_clear: the fields are set once, at creation, so any cycle through an operation also
 * runs through a mutable object the collector clears; the fields are therefore never NULL. */
static void
Op_dealloc(Op *self)
{
    PyObject_GC_UnTrack(self);
    Py_TRASHCAN_BEGIN(self, Op_dealloc) /* Put(value=Put(value=...)) nested deeply frees iteratively */
    Py_XDECREF(self->cf);
    Py_XDECREF(self->key);
    Py_XDECREF(self->value);
    PyObject_GC_Del(self);
    Py_TRASHCAN_END
}

static PyObject *
Op_repr(Op *self)
{
    if (self->value == NULL)
        return PyUnicode_FromFormat("Delete(cf=%R, key=%R)", self->cf, self->key);
    return PyUnicode_FromFormat("Put(cf=%R, key=%R, value=%R)", self->cf, self->key, self->value);
}

/* Equal when of the same type with equal fields, as the dataclasses they replace were. */
static PyObject *
Op_richcompare(PyObject *self, PyObject *other, int op)
{
    if ((op != Py_EQ && op != Py_NE) || Py_TYPE(self) != Py_TYPE(other))
        Py_RETURN_NOTIMPLEMENTED;
    Op *a = (Op *)self, *b = (Op *)other;
    int equal = PyObject_RichCompareBool(a->cf, b->cf, Py_EQ);
    if (equal == 1)
        equal = PyObject_RichCompareBool(a->key, b->key, Py_EQ);
    if (equal == 1 && a->value != NULL)
        equal = PyObject_RichCompareBool(a->value, b->value, Py_EQ);
    if (equal < 0)
        return NULL;
    return PyBool_FromLong(op == Py_EQ ? equal : !equal);
}

static PyObject *
Op_reduce(Op *self, PyObject *Py_UNUSED(ignored))
{
    if (self->value == NULL)
        return Py_BuildValue("O(OO)", Py_TYPE(self), self->cf, self->key);
    return Py_BuildValue("O(OOO)", Py_TYPE(self), self->cf, self->key, self->value);
}

static PyMethodDef Op_methods[] = {
    {"__reduce__", (PyCFunction)Op_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Put_members[] = {
    {"cf", T_OBJECT, offsetof(Op, cf), READONLY, "the column family"},
    {"key", T_OBJECT, offsetof(Op, key), READONLY, "the RocksDB key (bytes, no user content)"},
    {"value", T_OBJECT, offsetof(Op, value), READONLY, "the plaintext value (bytes), sealed on write"},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef Delete_members[] = {
    {"cf", T_OBJECT, offsetof(Op, cf), READONLY, "the column family"},
    {"key", T_OBJECT, offsetof(Op, key), READONLY, "the RocksDB key"},
    {NULL, 0, 0, 0, NULL},
};

/* Put and Delete differ in name, doc and fields only. */
#define OP_TYPE(NAME, DOC, MEMBERS)                                  \
    {                                                                \
        PyVarObject_HEAD_INIT(NULL, 0)                               \
        .tp_name = "percolate_node.store." NAME,                     \
        .tp_basicsize = sizeof(Op),                                  \
        .tp_dealloc = (destructor)Op_dealloc,                        \
        .tp_repr = (reprfunc)Op_repr,                                \
        .tp_hash = PyObject_HashNotImplemented,                      \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,         \
        .tp_traverse = (traverseproc)Op_traverse,                    \
        .tp_doc = DOC,                                               \
        .tp_richcompare = Op_richcompare,                            \
        .tp_methods = Op_methods,                                    \
        .tp_members = MEMBERS,                                       \
        .tp_new = Op_new,                                            \
        .tp_vectorcall = Op_vectorcall,                              \
    }

static PyTypeObject PutType = OP_TYPE("Put", "Put(cf, key, value): store value (sealed) under key in column family "
                                             "cf; an operation of EncryptedStore.write.", Put_members);
static PyTypeObject DeleteType = OP_TYPE("Delete", "Delete(cf, key): remove key from column family cf; an "
                                                   "operation of EncryptedStore.write.", Delete_members);

static struct PyModuleDef gcm_module = {
    PyModuleDef_HEAD_INIT, "_gcm", "AES-256-GCM sealing of store values with reused OpenSSL contexts.", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__gcm(void)
{
    if (PyType_Ready(&KeysType) < 0 || PyType_Ready(&PutType) < 0 || PyType_Ready(&DeleteType) < 0)
        return NULL;
#if HAVE_AES_NI_CODE
    use_aes_ni = aes_ni_available();
#endif
    PyObject *module = PyModule_Create(&gcm_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "MAX_VALUE_BYTES", MAX_VALUE_BYTES) < 0
        || PyModule_AddIntConstant(module, "AES_NI_MAX_BYTES", AES_NI_MAX_BYTES) < 0
        || PyModule_AddIntConstant(module, "AES_NI_BUILT", HAVE_AES_NI_CODE) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    BatchError = PyErr_NewExceptionWithDoc("percolate_node.store._gcm.BatchError",
                                           "seal_batch stopped: args are (index of the operation, its error)",
                                           NULL, NULL);
    if (BatchError == NULL || PyModule_AddObjectRef(module, "BatchError", BatchError) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Keys", (PyObject *)&KeysType) < 0
        || PyModule_AddObjectRef(module, "Put", (PyObject *)&PutType) < 0
        || PyModule_AddObjectRef(module, "Delete", (PyObject *)&DeleteType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
