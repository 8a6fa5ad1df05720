/*
 * aead.c -- batches of AES-GCM-128 records on a pool of threads, the cipher from libcrypto (EVP).
 * See aead.h for the record layout, the threading rules and why libcrypto is loaded at run time.
 */
#define _GNU_SOURCE /* dladdr */
#include "aead.h"

#include <dlfcn.h>
#include <openssl/crypto.h> /* types and constants only: every call goes through a plx_crypto */
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <pthread.h>
#include <stdio.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define IV_BYTES 12
#define TAG_BYTES 16
#define KEY_BYTES 16
/* EVP_CipherUpdate takes an int length: bigger buffers go through in pieces of this size. */
#define UPDATE_MAX ((size_t)1 << 30)
/* Below this many bytes in a batch, waking the workers costs more than it saves. */
#define PARALLEL_MIN_BYTES ((size_t)256 << 10)

/* ---- libcrypto, loaded by path ------------------------------------------------------------ */

/* The soname of the libcrypto the headers describe (libcrypto.so.3): the default library. */
#define PLX_STR2(x) #x
#define PLX_STR(x) PLX_STR2(x)
#define DEFAULT_LIBCRYPTO "libcrypto.so." PLX_STR(OPENSSL_SHLIB_VERSION)

struct plx_crypto {
    EVP_CIPHER_CTX *(*ctx_new)(void);
    void (*ctx_free)(EVP_CIPHER_CTX *);
    int (*init_ex)(EVP_CIPHER_CTX *, const EVP_CIPHER *, ENGINE *, const unsigned char *,
                   const unsigned char *, int);
    int (*update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int);
    int (*final_ex)(EVP_CIPHER_CTX *, unsigned char *, int *);
    int (*ctrl)(EVP_CIPHER_CTX *, int, int, void *);
    const EVP_CIPHER *(*aes_128_gcm)(void);
    void (*clear_error)(void);
    void (*cleanse)(void *, size_t);
    const char *(*version)(int);
    char path[4096];
};

static void *find(void *handle, const char *name, char *err, size_t errlen, int *missing) {
    void *sym = dlsym(handle, name);
    if (sym == NULL && !*missing) {
        *missing = 1;
        snprintf(err, errlen, "no symbol %s in it", name);
    }
    return sym;
}

plx_crypto *plx_crypto_load(const char *path, char *err, size_t errlen) {
    const char *name = (path != NULL && path[0] != '\0') ? path : DEFAULT_LIBCRYPTO;
    if (errlen) err[0] = '\0';
    /* never dlclose: engines, and libcrypto's own thread-local state, outlive any caller */
    void *handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        const char *why = dlerror();
        snprintf(err, errlen, "%s", why ? why : "dlopen failed");
        return NULL;
    }
    plx_crypto *c = calloc(1, sizeof *c);
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int missing = 0;
    *(void **)&c->ctx_new = find(handle, "EVP_CIPHER_CTX_new", err, errlen, &missing);
    *(void **)&c->ctx_free = find(handle, "EVP_CIPHER_CTX_free", err, errlen, &missing);
    *(void **)&c->init_ex = find(handle, "EVP_CipherInit_ex", err, errlen, &missing);
    *(void **)&c->update = find(handle, "EVP_CipherUpdate", err, errlen, &missing);
    *(void **)&c->final_ex = find(handle, "EVP_CipherFinal_ex", err, errlen, &missing);
    *(void **)&c->ctrl = find(handle, "EVP_CIPHER_CTX_ctrl", err, errlen, &missing);
    *(void **)&c->aes_128_gcm = find(handle, "EVP_aes_128_gcm", err, errlen, &missing);
    *(void **)&c->clear_error = find(handle, "ERR_clear_error", err, errlen, &missing);
    *(void **)&c->cleanse = find(handle, "OPENSSL_cleanse", err, errlen, &missing);
    *(void **)&c->version = find(handle, "OpenSSL_version", err, errlen, &missing);
    if (missing) {
        free(c);
        return NULL;
    }
    Dl_info info;
    const char *where = name;
    if (dladdr(*(void **)&c->ctx_new, &info) != 0 && info.dli_fname != NULL)
        where = info.dli_fname;
    snprintf(c->path, sizeof c->path, "%s", where);
    return c;
}

const char *plx_crypto_version(const plx_crypto *c) { return c->version(OPENSSL_VERSION); }

const char *plx_crypto_path(const plx_crypto *c) { return c->path; }

/* ---- batches: state ------------------------------------------------------------------------ */

typedef struct {
    const plx_crypto *c;
    const plx_aead_job *jobs;
    const uint8_t *ivs; /* NULL when opening */
    size_t count;
    const size_t *order; /* job indices, largest first; NULL: list order */
    atomic_size_t next;
    atomic_llong first_fail; /* lowest failing job index, or count */
    atomic_int error;
} batch;

struct plx_aead {
    const plx_crypto *c; /* the libcrypto every call of this engine goes through */
    uint8_t key[KEY_BYTES];
    int threads;
    int spawn;
    pthread_mutex_t lock; /* spare contexts and the worker hand-off below */
    pthread_cond_t wake;
    pthread_cond_t idle;
    pthread_mutex_t batch_lock; /* one batch at a time */
    EVP_CIPHER_CTX **spare;
    size_t nspare, capspare;
    pthread_t *workers;
    EVP_CIPHER_CTX **worker_ctx;
    int nworkers;
    int started;
    batch *current;
    unsigned long gen;
    int pending;
    int stop;
};

/* ---- one record ---------------------------------------------------------------------------- */

static int update(const plx_crypto *c, EVP_CIPHER_CTX *ctx, uint8_t *out, const uint8_t *in, size_t n) {
    while (n > 0) {
        size_t piece = n < UPDATE_MAX ? n : UPDATE_MAX;
        int outl = 0;
        if (c->update(ctx, out, &outl, in, (int)piece) != 1) return -1;
        if (out != NULL) {
            if ((size_t)outl != piece) return -1;
            out += piece;
        }
        in += piece;
        n -= piece;
    }
    return 0;
}

static int fail(const plx_crypto *c) {
    c->clear_error(); /* leave no stale error for other OpenSSL users of this thread */
    return -1;
}

static int seal_one(const plx_crypto *c, EVP_CIPHER_CTX *ctx, const uint8_t *iv, const uint8_t *aad, size_t aad_len,
                    const uint8_t *in, size_t n, uint8_t *ct_and_tag) {
    int outl = 0;
    if (c->init_ex(ctx, NULL, NULL, NULL, iv, 1) != 1) return fail(c);
    if (aad_len && update(c, ctx, NULL, aad, aad_len) != 0) return fail(c);
    if (n && update(c, ctx, ct_and_tag, in, n) != 0) return fail(c);
    if (c->final_ex(ctx, ct_and_tag + n, &outl) != 1 || outl != 0) return fail(c);
    if (c->ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, ct_and_tag + n) != 1)
        return fail(c);
    return 0;
}

static int open_one(const plx_crypto *c, EVP_CIPHER_CTX *ctx, const uint8_t *iv, const uint8_t *aad, size_t aad_len,
                    const uint8_t *ct_and_tag, size_t n, uint8_t *out) {
    uint8_t tag[TAG_BYTES];
    uint8_t last[16]; /* GCM's final writes nothing; never let it write into `out` */
    int outl = 0;
    memcpy(tag, ct_and_tag + n, TAG_BYTES);
    if (c->init_ex(ctx, NULL, NULL, NULL, iv, 0) != 1) return fail(c);
    if (aad_len && update(c, ctx, NULL, aad, aad_len) != 0) return fail(c);
    if (n && update(c, ctx, out, ct_and_tag, n) != 0) return fail(c);
    if (c->ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, tag) != 1) return fail(c);
    if (c->final_ex(ctx, last, &outl) <= 0) { /* constant-time compare inside EVP */
        c->clear_error();
        return 1;
    }
    return 0;
}

/* ---- contexts ------------------------------------------------------------------------------ */

static EVP_CIPHER_CTX *new_ctx(const plx_aead *e) {
    const plx_crypto *c = e->c;
    EVP_CIPHER_CTX *ctx = c->ctx_new();
    if (ctx == NULL) return NULL;
    /* the key schedule is computed here, once per context; jobs only set the IV */
    if (c->init_ex(ctx, c->aes_128_gcm(), NULL, e->key, NULL, 1) != 1) {
        c->ctx_free(ctx);
        c->clear_error();
        return NULL;
    }
    return ctx;
}

static EVP_CIPHER_CTX *acquire(plx_aead *e) {
    EVP_CIPHER_CTX *ctx = NULL;
    pthread_mutex_lock(&e->lock);
    if (e->nspare) ctx = e->spare[--e->nspare];
    pthread_mutex_unlock(&e->lock);
    return ctx ? ctx : new_ctx(e);
}

static void release(plx_aead *e, EVP_CIPHER_CTX *ctx) {
    pthread_mutex_lock(&e->lock);
    if (e->nspare == e->capspare) {
        size_t cap = e->capspare ? 2 * e->capspare : 4;
        EVP_CIPHER_CTX **grown = realloc(e->spare, cap * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&e->lock);
            e->c->ctx_free(ctx);
            return;
        }
        e->spare = grown;
        e->capspare = cap;
    }
    e->spare[e->nspare++] = ctx;
    pthread_mutex_unlock(&e->lock);
}

/* ---- batches ------------------------------------------------------------------------------- */

static void run_batch(batch *b, EVP_CIPHER_CTX *ctx) {
    for (;;) {
        size_t k = atomic_fetch_add_explicit(&b->next, 1, memory_order_relaxed);
        if (k >= b->count) return;
        size_t i = b->order ? b->order[k] : k;
        const plx_aead_job *j = &b->jobs[i];
        int rc;
        if (b->ivs != NULL) {
            const uint8_t *iv = b->ivs + IV_BYTES * i;
            memcpy(j->dst, iv, IV_BYTES);
            rc = seal_one(b->c, ctx, iv, j->aad, j->aad_len, j->src, j->len, j->dst + IV_BYTES);
        } else {
            rc = open_one(b->c, ctx, j->src, j->aad, j->aad_len, j->src + IV_BYTES, j->len, j->dst);
        }
        if (rc < 0) {
            atomic_store(&b->error, 1);
        } else if (rc > 0) {
            long long cur = atomic_load(&b->first_fail);
            while ((long long)i < cur &&
                   !atomic_compare_exchange_weak(&b->first_fail, &cur, (long long)i)) {
            }
        }
    }
}

typedef struct {
    plx_aead *engine;
    int index;
    unsigned long seen; /* the batch generation when it was created: it waits for the next */
} worker_arg;

static void *worker_main(void *p) {
    worker_arg *arg = p;
    plx_aead *e = arg->engine;
    EVP_CIPHER_CTX *ctx = e->worker_ctx[arg->index];
    unsigned long seen = arg->seen;
    free(arg);
    pthread_mutex_lock(&e->lock);
    for (;;) {
        while (!e->stop && e->gen == seen) pthread_cond_wait(&e->wake, &e->lock);
        if (e->stop) break;
        seen = e->gen;
        batch *b = e->current;
        pthread_mutex_unlock(&e->lock);
        run_batch(b, ctx);
        pthread_mutex_lock(&e->lock);
        if (--e->pending == 0) pthread_cond_signal(&e->idle);
    }
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

/* Workers never take signals: the interpreter's handlers run on its own threads. */
static int create_thread(pthread_t *tid, void *(*fn)(void *), void *arg) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(tid, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* Called with batch_lock held. Fewer workers than asked is not an error: the batch still runs. */
static void start_workers(plx_aead *e) {
    int want = e->threads - 1;
    e->started = 1;
    e->workers = calloc((size_t)want, sizeof *e->workers);
    e->worker_ctx = calloc((size_t)want, sizeof *e->worker_ctx);
    if (e->workers == NULL || e->worker_ctx == NULL) return;
    for (int i = 0; i < want; i++) {
        worker_arg *arg = malloc(sizeof *arg);
        EVP_CIPHER_CTX *ctx = new_ctx(e);
        if (arg == NULL || ctx == NULL) {
            free(arg);
            e->c->ctx_free(ctx);
            return;
        }
        arg->engine = e;
        arg->index = i;
        e->worker_ctx[i] = ctx;
        pthread_mutex_lock(&e->lock);
        arg->seen = e->gen;
        int rc = create_thread(&e->workers[i], worker_main, arg);
        if (rc == 0) e->nworkers++;
        pthread_mutex_unlock(&e->lock);
        if (rc != 0) {
            free(arg);
            e->c->ctx_free(ctx);
            e->worker_ctx[i] = NULL;
            return;
        }
    }
}

typedef struct {
    batch *b;
    EVP_CIPHER_CTX *ctx;
} spawn_arg;

static void *spawn_main(void *p) {
    spawn_arg *a = p;
    run_batch(a->b, a->ctx);
    return NULL;
}

static void run_spawned(plx_aead *e, batch *b, EVP_CIPHER_CTX *ctx, int threads) {
    pthread_t tids[threads];
    spawn_arg args[threads];
    int made = 0;
    for (int i = 0; i < threads - 1; i++) {
        args[made].b = b;
        args[made].ctx = acquire(e);
        if (args[made].ctx == NULL) break;
        if (create_thread(&tids[made], spawn_main, &args[made]) != 0) {
            release(e, args[made].ctx);
            break;
        }
        made++;
    }
    run_batch(b, ctx);
    for (int i = 0; i < made; i++) {
        pthread_join(tids[i], NULL);
        release(e, args[i].ctx);
    }
}

typedef struct {
    size_t len;
    size_t index;
} sort_key;

static int larger_first(const void *a, const void *b) {
    const sort_key *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? 1 : -1;
    return x->index < y->index ? -1 : (x->index > y->index);
}

static int64_t run_many(plx_aead *e, const plx_aead_job *jobs, size_t count,
                        const uint8_t *ivs) {
    if (count == 0) return -1;
    size_t total = 0;
    for (size_t i = 0; i < count; i++) total += jobs[i].len;
    int threads = e->threads;
    if ((size_t)threads > count) threads = (int)count;
    if (total < PARALLEL_MIN_BYTES) threads = 1;

    size_t *order = NULL;
    if (threads > 1) {
        sort_key *keys = malloc(count * sizeof *keys);
        order = malloc(count * sizeof *order);
        if (keys == NULL || order == NULL) {
            free(keys);
            free(order);
            return -2;
        }
        for (size_t i = 0; i < count; i++) {
            keys[i].len = jobs[i].len;
            keys[i].index = i;
        }
        qsort(keys, count, sizeof *keys, larger_first);
        for (size_t i = 0; i < count; i++) order[i] = keys[i].index;
        free(keys);
    }
    batch b = {.c = e->c, .jobs = jobs, .ivs = ivs, .count = count, .order = order};
    atomic_init(&b.next, 0);
    atomic_init(&b.first_fail, (long long)count);
    atomic_init(&b.error, 0);

    EVP_CIPHER_CTX *ctx = acquire(e);
    if (ctx == NULL) {
        free(order);
        return -2;
    }
    pthread_mutex_lock(&e->batch_lock);
    if (threads > 1 && e->spawn) {
        run_spawned(e, &b, ctx, threads);
    } else if (threads > 1) {
        if (!e->started) start_workers(e);
        pthread_mutex_lock(&e->lock);
        e->current = &b;
        e->pending = e->nworkers;
        e->gen++;
        pthread_cond_broadcast(&e->wake);
        pthread_mutex_unlock(&e->lock);
        run_batch(&b, ctx);
        pthread_mutex_lock(&e->lock);
        while (e->pending > 0) pthread_cond_wait(&e->idle, &e->lock);
        e->current = NULL;
        pthread_mutex_unlock(&e->lock);
    } else {
        run_batch(&b, ctx);
    }
    pthread_mutex_unlock(&e->batch_lock);
    release(e, ctx);
    free(order);
    if (atomic_load(&b.error)) return -2;
    long long first = atomic_load(&b.first_fail);
    return first < (long long)count ? (int64_t)first : -1;
}

/* ---- API ----------------------------------------------------------------------------------- */

plx_aead *plx_aead_new(const uint8_t *key, size_t key_len, int threads, int spawn,
                       const plx_crypto *c) {
    if (key_len != KEY_BYTES || threads < 1 || c == NULL) return NULL;
    plx_aead *e = calloc(1, sizeof *e);
    if (e == NULL) return NULL;
    e->c = c;
    memcpy(e->key, key, KEY_BYTES);
    e->threads = threads;
    e->spawn = spawn != 0;
    pthread_mutex_init(&e->lock, NULL);
    pthread_mutex_init(&e->batch_lock, NULL);
    pthread_cond_init(&e->wake, NULL);
    pthread_cond_init(&e->idle, NULL);
    EVP_CIPHER_CTX *ctx = new_ctx(e); /* fail now, not at the first call, when libcrypto does */
    if (ctx == NULL) {
        plx_aead_free(e);
        return NULL;
    }
    release(e, ctx);
    return e;
}

void plx_aead_free(plx_aead *e) {
    if (e == NULL) return;
    pthread_mutex_lock(&e->lock);
    e->stop = 1;
    pthread_cond_broadcast(&e->wake);
    pthread_mutex_unlock(&e->lock);
    for (int i = 0; i < e->nworkers; i++) pthread_join(e->workers[i], NULL);
    if (e->worker_ctx != NULL)
        for (int i = 0; i < e->threads - 1; i++) e->c->ctx_free(e->worker_ctx[i]);
    for (size_t i = 0; i < e->nspare; i++) e->c->ctx_free(e->spare[i]);
    free(e->spare);
    free(e->workers);
    free(e->worker_ctx);
    pthread_mutex_destroy(&e->lock);
    pthread_mutex_destroy(&e->batch_lock);
    pthread_cond_destroy(&e->wake);
    pthread_cond_destroy(&e->idle);
    e->c->cleanse(e->key, sizeof e->key);
    free(e);
}

int plx_aead_threads(const plx_aead *e) { return e->threads; }

int plx_aead_seal(plx_aead *e, const uint8_t *iv, const uint8_t *aad, size_t aad_len,
                  const uint8_t *plaintext, size_t n, uint8_t *ct_and_tag) {
    EVP_CIPHER_CTX *ctx = acquire(e);
    if (ctx == NULL) return -1;
    int rc = seal_one(e->c, ctx, iv, aad, aad_len, plaintext, n, ct_and_tag);
    release(e, ctx);
    return rc;
}

int plx_aead_open(plx_aead *e, const uint8_t *iv, const uint8_t *aad, size_t aad_len,
                  const uint8_t *ct_and_tag, size_t n, uint8_t *out) {
    EVP_CIPHER_CTX *ctx = acquire(e);
    if (ctx == NULL) return -1;
    int rc = open_one(e->c, ctx, iv, aad, aad_len, ct_and_tag, n, out);
    release(e, ctx);
    return rc;
}

int64_t plx_aead_seal_many(plx_aead *e, const plx_aead_job *jobs, size_t count,
                           const uint8_t *ivs) {
    return run_many(e, jobs, count, ivs);
}

int64_t plx_aead_open_many(plx_aead *e, const plx_aead_job *jobs, size_t count) {
    return run_many(e, jobs, count, NULL);
}
