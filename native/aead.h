/*
 * aead.h -- AES-GCM-128 sealing and opening of many buffers at once, on a pool of threads.
 *
 * The cipher is OpenSSL's libcrypto (EVP): nothing here implements AES or GHASH. What this adds
 * is the batch: one call seals (or opens) a list of buffers on every core, with one
 * EVP_CIPHER_CTX per worker keyed once per engine, so Python pays one call (GIL released) for a
 * whole model instead of one GIL-holding call per buffer.
 *
 * RECORD LAYOUT (the same as plinius/crypto.py): [IV 12 B][ciphertext n B][tag 16 B].
 *
 * THREADS: the engine's workers are created on the first batch that needs them and sleep on a
 * condition variable between batches; the calling thread works too. Jobs are claimed
 * largest first through one atomic index, so a few big jobs do not end up on one core. One
 * batch runs at a time per engine; single-buffer calls take a spare context and may run from
 * several threads at once. An engine must not be used in a child after fork() (the workers do
 * not exist there): the Python wrapper makes a new one in the child.
 *
 * LIBCRYPTO AT RUN TIME: the ten EVP/ERR functions used are resolved through a plx_crypto table,
 * loaded from a path with dlopen(RTLD_NOW | RTLD_LOCAL) and never closed. The default is the
 * libcrypto the headers describe (the system one); another (a newer OpenSSL with VAES AES-GCM,
 * e.g. the one a wheel bundles) is often several times faster on the same CPU, and which is
 * faster here is measured, not assumed (plinius/core/crypto_ways.py). OpenSSL's headers are used
 * for types and constants only; records are the same whichever library seals them.
 */
#ifndef PLINIUS_AEAD_H
#define PLINIUS_AEAD_H

#include <stddef.h>
#include <stdint.h>

typedef struct plx_aead plx_aead;
typedef struct plx_crypto plx_crypto;

/* Load the libcrypto at `path` (NULL or "": the default one) and resolve its functions; NULL on
 * failure, with the reason (dlerror or the missing symbol) in `err`. A table lives for the
 * process: load each library once and share it between engines. */
plx_crypto *plx_crypto_load(const char *path, char *err, size_t errlen);
/* OpenSSL_version(OPENSSL_VERSION) of that library ("OpenSSL 3.5.9 30 Sep 2025"), and the path
 * the dynamic loader actually opened. */
const char *plx_crypto_version(const plx_crypto *lib);
const char *plx_crypto_path(const plx_crypto *lib);

/* One buffer of a batch. Seal: `src` is the plaintext (`len` bytes), `dst` the record
 * (len + 28 bytes; the IV is written to its first 12 bytes). Open: `src` is the record
 * (len + 28 bytes), `dst` the plaintext (`len` bytes). */
typedef struct {
    const uint8_t *aad;
    size_t aad_len;
    const uint8_t *src;
    size_t len;
    uint8_t *dst;
} plx_aead_job;

/* A 16-byte key, the number of threads a batch may use (>= 1, the caller included) and the
 * libcrypto every call goes through; NULL when libcrypto fails or memory runs out. `spawn` != 0
 * starts fresh threads for every batch instead of keeping workers (kept only to measure the
 * difference). */
plx_aead *plx_aead_new(const uint8_t *key, size_t key_len, int threads, int spawn,
                       const plx_crypto *lib);
/* Stops and joins the workers, wipes the key. */
void plx_aead_free(plx_aead *engine);
int plx_aead_threads(const plx_aead *engine);

/* One buffer: 0 on success; 1 when the tag does not verify (open only); -1 on an OpenSSL or
 * memory error. `ct_and_tag` holds n + 16 bytes. */
int plx_aead_seal(plx_aead *engine, const uint8_t *iv, const uint8_t *aad, size_t aad_len,
                  const uint8_t *plaintext, size_t n, uint8_t *ct_and_tag);
int plx_aead_open(plx_aead *engine, const uint8_t *iv, const uint8_t *aad, size_t aad_len,
                  const uint8_t *ct_and_tag, size_t n, uint8_t *out);

/* A batch. Seal: `ivs` holds 12 bytes per job (the caller's random IVs). Both return -1 when
 * every job succeeded, -2 on an OpenSSL or thread error, else the lowest index of a job whose
 * tag did not verify (every job is still processed). */
int64_t plx_aead_seal_many(plx_aead *engine, const plx_aead_job *jobs, size_t count,
                           const uint8_t *ivs);
int64_t plx_aead_open_many(plx_aead *engine, const plx_aead_job *jobs, size_t count);

#endif
