/*
 * romulus_pool.c -- a pool's life cycle: open (validate the header before anything is mapped or
 * written), create, recover from a crash in any state (the protocol's recover(), in
 * romulus_txn.c), close, statistics. The protocol and the pool layout are documented in
 * romulus.h.
 */
#include "romulus_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif
#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif

/* ---------------------------------------------------------------------------------------------
 * Open, create, recover, close
 * ------------------------------------------------------------------------------------------- */

static uint64_t region_of(uint64_t pool_size) { return ((pool_size - HDR_PAGE) / 2) & ~(uint64_t)(PAGE - 1); }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void set_layout(rom_pool *p) {
    p->hdr = (struct rom_hdr *)p->base;
    p->region = region_of(p->map_size);
    p->main = p->base + HDR_PAGE;
    p->back = p->main + p->region;
    p->meta = (struct rom_meta *)p->main;
}

static void fsync_dir(const char *path) {
    char *dir = strdup(path);
    if (!dir)
        return;
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = 0;
    else if (slash)
        *slash = 0;
    int fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

static void create_pool(rom_pool *p) {
    struct rom_hdr *h = p->hdr; /* the creating-stamp is already on disk (rom_open) */
    h->version = ROM_VERSION;
    h->hdr_size = (uint32_t)sizeof *h;
    h->pool_size = p->map_size;
    h->region_size = p->region;
    h->main_off = HDR_PAGE;
    h->back_off = HDR_PAGE + p->region;
    h->created_ns = now_ns();
    h->state = ROM_IDLE;
    h->used = META_SIZE; /* from creation on, full copies include the allocator metadata */
    h->commits = 0;
    p->used = META_SIZE;
    memset(p->main, 0, META_SIZE);
    p->meta->magic = META_MAGIC;
    p->meta->top = META_SIZE;
    memcpy(p->back, p->main, META_SIZE);
    pm_flush(p, h, sizeof *h);
    pm_flush(p, p->main, META_SIZE);
    pm_flush(p, p->back, META_SIZE);
    pm_fence(p);
    h->magic = POOL_MAGIC; /* last: only a complete pool carries it */
    pm_flush(p, &h->magic, 8);
    pm_fence(p);
    /* then the stamp goes: a pool whose magic is later damaged must not pass for an unfinished
     * creation (which is re-created automatically) */
    h->creating = 0;
    pm_flush(p, &h->creating, 8);
    pm_fence(p);
    fsync(p->fd); /* the file's size and blocks, for msync mode on a disk file system */
    fsync_dir(p->path);
}

/* what is wrong with a header that carries the magic, or NULL */
static const char *header_problem(const struct rom_hdr *h) {
    if (h->version == 0)
        return "version 0";
    if (h->hdr_size != sizeof *h)
        return "header size";
    if (h->pool_size < ROM_MIN_POOL || h->pool_size > ROM_MAX_POOL || h->pool_size % PAGE)
        return "pool size";
    if (h->region_size != region_of(h->pool_size))
        return "region size";
    if (h->main_off != HDR_PAGE || h->back_off != HDR_PAGE + h->region_size)
        return "main/back offsets";
    if (h->state > ROM_COPYING)
        return "state word";
    if (h->used < META_SIZE || h->used > h->region_size || h->used % LINE)
        return "used size";
    return NULL;
}

/* A file stamped "creating" but without the magic is re-created only if it never held data:
 * no commit, and the allocator metadata of main and back (where the file has them) as
 * creation leaves it, zeros or a fresh table. Anything else is a damaged pool. */
static int unfinished_is_pristine(int fd, uint64_t fsize, const struct rom_hdr *h, char *why,
                                  size_t n) {
    if (h->commits || h->state) {
        snprintf(why, n, "its header records %llu commits, state %llu",
                 (unsigned long long)h->commits, (unsigned long long)h->state);
        return 0;
    }
    struct rom_meta *m = malloc(sizeof *m);
    if (!m) {
        snprintf(why, n, "out of memory");
        return 0;
    }
    uint64_t at[2] = {HDR_PAGE, fsize >= ROM_MIN_POOL ? HDR_PAGE + region_of(fsize) : 0};
    int ok = 1;
    for (int i = 0; i < 2 && ok && at[i]; i++) {
        memset(m, 0, sizeof *m);
        if (at[i] < fsize && pread(fd, m, sizeof *m, (off_t)at[i]) < 0) {
            snprintf(why, n, "cannot read it: %s", strerror(errno));
            ok = 0;
            break;
        }
        uint64_t magic = m->magic, top = m->top;
        m->magic = 0;
        m->top = 0;
        static const struct rom_meta zero;
        if ((magic && magic != META_MAGIC) || (top && top != META_SIZE) ||
            memcmp(m, &zero, sizeof *m) != 0) {
            snprintf(why, n, "the allocator metadata of %s holds allocations or roots",
                     i ? "back" : "main");
            ok = 0;
        }
    }
    free(m);
    return ok;
}

static int open_fail(rom_pool *p, int rc) {
    hooks_closing(p);
    if (p->base)
        munmap(p->base, p->map_size);
    if (p->fd >= 0)
        close(p->fd); /* drops the flock */
    free(p->bitmap);
    free(p->runs);
    free(p->sync);
    free(p->path);
    free(p);
    return rc;
}

static int read_hdr(int fd, struct rom_hdr *h, uint64_t fsize) {
    memset(h, 0, sizeof *h);
    size_t want = fsize < sizeof *h ? (size_t)fsize : sizeof *h;
    return pread(fd, h, want, 0) == (ssize_t)want ? 0 : -1;
}


int rom_open(const char *path, size_t path_len, uint64_t size, int create, int mode, int flush,
             rom_pool **out) {
    return rom_open_dev(path, path_len, size, create, mode, flush, NULL, out);
}

int rom_open_dev(const char *path, size_t path_len, uint64_t size, int create, int mode,
                 int flush, const rom_device *dev, rom_pool **out) {
    *out = NULL;
    if (dev && dev->write_bps != 0.0) {
        int drc = dev_check(dev);
        if (drc)
            return drc;
    } else {
        dev = NULL;
    }
    /* a path is a counted string: a NUL inside it would silently open another file */
    if (!path || path_len == 0 || strnlen(path, path_len + 1) != path_len)
        return fail(ROM_E_INVAL, "pool path is empty or contains a NUL byte");
    if (create < ROM_CREATE_NEVER || create > ROM_CREATE_FORCE)
        return fail(ROM_E_INVAL, "unknown create policy %d", create);
    int rc = resolve_env(&mode, &flush);
    if (rc)
        return rc;
    if (size > ROM_MAX_POOL) /* before align_up, which would wrap near 2^64 */
        return fail(ROM_E_INVAL, "pool size %llu is too large: at most %llu bytes",
                    (unsigned long long)size, (unsigned long long)ROM_MAX_POOL);
    if (size)
        size = align_up(size, PAGE);
    if (size && size < ROM_MIN_POOL)
        return fail(ROM_E_INVAL, "pool size %llu is too small: at least %u bytes",
                    (unsigned long long)size, ROM_MIN_POOL);
    rom_pool *p = calloc(1, sizeof *p);
    if (!p)
        return fail(ROM_E_IO, "out of memory");
    p->fd = -1;
    p->mode = mode;
    p->flush = flush;
    if (dev)
        dev_init(p, dev);
    p->path = strdup(path);
    if (!p->path)
        return open_fail(p, fail(ROM_E_IO, "out of memory"));
    persist_init(p); /* PLINIUS_PM_NT_MIN, PLINIUS_PM_THREADS */
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(&p->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    bg_init(p);

    p->fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
    if (p->fd < 0) {
        int e = errno;
        if (e == ENOENT && create == ROM_CREATE_NEVER) /* nothing created, nothing to open */
            return open_fail(p, fail(ROM_E_NOENT, "no pool at %s (not created: create=never)",
                                     path));
        return open_fail(p, fail(ROM_E_IO, "cannot open pool %s: %s", path, strerror(e)));
    }
    struct stat st;
    if (fstat(p->fd, &st) != 0 || !S_ISREG(st.st_mode))
        return open_fail(p, fail(ROM_E_IO, "pool %s is not a regular file", path));
    if (flock(p->fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        struct rom_hdr h;
        unsigned long long pid = 0;
        if (fstat(p->fd, &st) == 0 && read_hdr(p->fd, &h, (uint64_t)st.st_size) == 0 &&
            h.magic == POOL_MAGIC)
            pid = h.holder_pid;
        if (e == EWOULDBLOCK) {
            if (pid == (unsigned long long)getpid())
                return open_fail(p, fail(ROM_E_LOCKED,
                                         "pool %s is already open in this process: close it "
                                         "first", path));
            if (pid)
                return open_fail(p, fail(ROM_E_LOCKED,
                                         "pool %s is in use by another process (pid %llu)",
                                         path, pid));
            return open_fail(p, fail(ROM_E_LOCKED, "pool %s is in use by another opener",
                                     path));
        }
        return open_fail(p, fail(ROM_E_IO, "cannot lock pool %s: %s", path, strerror(e)));
    }
    if (fstat(p->fd, &st) != 0)
        return open_fail(p, fail(ROM_E_IO, "cannot stat pool %s: %s", path, strerror(errno)));
    uint64_t fsize = (uint64_t)st.st_size;
    struct rom_hdr h;
    if (read_hdr(p->fd, &h, fsize) != 0)
        return open_fail(p, fail(ROM_E_IO, "cannot read pool %s: %s", path, strerror(errno)));

    /* Decide from the header copy alone (nothing is mapped or written yet) whether this is an
     * empty file, a creation that never finished, a damaged pool or a foreign file: only the
     * first two are ever (re)created without create=force. */
    int creating = 0;
    static const char force_hint[] = "; to overwrite it with a new empty pool, open it once "
                                     "with create=force (spec option ?create=force)";
    if (create == ROM_CREATE_FORCE) {
        if (!size) {
            if (fsize < ROM_MIN_POOL || fsize > ROM_MAX_POOL)
                return open_fail(p, fail(ROM_E_INVAL, "creating pool %s needs a size", path));
            size = align_up(fsize, PAGE);
        }
        creating = ROM_CREATED;
    } else if (fsize == 0) {
        if (!create)
            return open_fail(p, fail(ROM_E_BADMAGIC,
                                     "%s is not a plinius pool (empty file)", path));
        if (!size)
            return open_fail(p, fail(ROM_E_INVAL, "creating pool %s needs a size", path));
        creating = ROM_CREATED;
    } else if (h.magic != POOL_MAGIC) {
        char why[160];
        if (fsize >= 16 && h.magic == 0 && h.creating == CREATING_MAGIC) {
            if (!unfinished_is_pristine(p->fd, fsize, &h, why, sizeof why))
                return open_fail(p, fail(ROM_E_CORRUPT,
                                         "pool %s is corrupt: it has no magic but is not an "
                                         "unfinished creation (%s)%s",
                                         path, why, force_hint));
            if (!create)
                return open_fail(p, fail(ROM_E_BADMAGIC,
                                         "%s is an unfinished pool creation (opened without "
                                         "create)", path));
            creating = ROM_RECREATED; /* a creation that died before writing the magic */
            if (!size)
                size = fsize <= ROM_MAX_POOL ? align_up(fsize, PAGE) : 0;
            if (size < ROM_MIN_POOL)
                return open_fail(p, fail(ROM_E_INVAL, "pool %s is an unfinished creation of "
                                                      "unknown size: open it with a size",
                                         path));
        } else if (fsize >= sizeof h && h.version >= 1 && h.version <= ROM_VERSION &&
                   h.hdr_size == sizeof h && h.main_off == HDR_PAGE) {
            return open_fail(p, fail(ROM_E_CORRUPT,
                                     "pool %s is corrupt: its magic is 0x%llx, not 0x%llx, but "
                                     "the rest of its header is a pool's; refusing to touch it%s",
                                     path, (unsigned long long)h.magic,
                                     (unsigned long long)POOL_MAGIC, force_hint));
        } else {
            return open_fail(p, fail(ROM_E_BADMAGIC,
                                     "%s is not a plinius pool (bad magic); refusing to touch "
                                     "it%s",
                                     path, force_hint));
        }
    } else {
        if (fsize < sizeof h)
            return open_fail(p, fail(ROM_E_TRUNCATED,
                                     "pool %s is truncated: %llu bytes, shorter than its header",
                                     path, (unsigned long long)fsize));
        if (h.version > ROM_VERSION)
            return open_fail(p, fail(ROM_E_VERSION,
                                     "pool %s has format version %u, this plinius reads up to "
                                     "%u: upgrade plinius",
                                     path, h.version, ROM_VERSION));
        const char *bad = header_problem(&h);
        if (bad)
            return open_fail(p, fail(ROM_E_CORRUPT,
                                     "pool %s is corrupt: inconsistent header (%s)", path, bad));
        if (fsize < h.pool_size)
            return open_fail(p, fail(ROM_E_TRUNCATED,
                                     "pool %s is truncated: %llu bytes, created with %llu",
                                     path, (unsigned long long)fsize,
                                     (unsigned long long)h.pool_size));
        if (fsize > h.pool_size)
            return open_fail(p, fail(ROM_E_CORRUPT,
                                     "pool %s is corrupt: %llu bytes, but was created with %llu",
                                     path, (unsigned long long)fsize,
                                     (unsigned long long)h.pool_size));
        if (size && size != h.pool_size)
            return open_fail(p, fail(ROM_E_SIZE,
                                     "pool %s was created with %llu bytes, not %llu: pools "
                                     "cannot be resized; open it without a size or use a new "
                                     "file",
                                     path, (unsigned long long)h.pool_size,
                                     (unsigned long long)size));
        size = h.pool_size;
    }
    if (creating) {
        /* A forced creation first empties the file: a crash from here on leaves an empty file
         * or an unfinished (pristine) one, never old data under a creating-stamp. */
        if (creating == ROM_CREATED && fsize && (ftruncate(p->fd, 0) != 0 || fsync(p->fd) != 0)) {
            int e = errno;
            return open_fail(p, fail(ROM_E_IO, "cannot empty pool %s: %s", path, strerror(e)));
        }
        /* The stamp goes to the file before it is sized or mapped: from here on a crash, even
         * a power failure, leaves a file recognisable as an unfinished pool, never a file of
         * zeros that could not be told from someone else's. */
        const uint64_t stamp[2] = {0, CREATING_MAGIC};
        if (pwrite(p->fd, stamp, sizeof stamp, 0) != (ssize_t)sizeof stamp ||
            fdatasync(p->fd) != 0) {
            int e = errno;
            return open_fail(p, fail(ROM_E_IO, "cannot write pool %s: %s", path, strerror(e)));
        }
        if (ftruncate(p->fd, (off_t)size) != 0) {
            int e = errno;
            return open_fail(p, fail(e == ENOSPC || e == EFBIG ? ROM_E_NOSPACE : ROM_E_IO,
                                     "cannot size pool %s to %llu bytes: %s", path,
                                     (unsigned long long)size, strerror(e)));
        }
    }
    /* Every page of the file gets its blocks now, for an existing pool too (a sparse copy):
     * a hole that cannot be filled later would be a SIGBUS at a store, not an error here. */
    int e = 0;
    if (creating)
        e = posix_fallocate(p->fd, 0, (off_t)size);
    else if (fallocate(p->fd, 0, 0, (off_t)size) != 0) /* no slow emulation: EOPNOTSUPP is ok */
        e = errno;
    if (e == ENOSPC || e == EFBIG || e == EDQUOT) {
        if (creating == ROM_CREATED && ftruncate(p->fd, 0) != 0) { /* leave it empty */
        }
        fsync(p->fd);
        return open_fail(p, fail(ROM_E_NOSPACE, "no room for a %llu-byte pool at %s: %s",
                                 (unsigned long long)size, path, strerror(e)));
    }
    if (fstat(p->fd, &st) != 0 || (uint64_t)st.st_size != size) /* changed under the lock */
        return open_fail(p, fail(ROM_E_TRUNCATED, "pool %s changed size while being opened",
                                 path));
    p->map_size = size;
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_SHARED_VALIDATE | MAP_SYNC | MAP_POPULATE, p->fd, 0);
    if (m != MAP_FAILED) {
        p->real_pm = 1; /* MAP_SYNC works only on DAX: flushes reach the media themselves */
    } else {
        m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, p->fd, 0);
        if (m == MAP_FAILED) {
            int e2 = errno;
            return open_fail(p, fail(ROM_E_IO, "cannot map pool %s: %s", path, strerror(e2)));
        }
    }
    p->base = m;
    set_layout(p);
    p->nwords = (p->region / LINE + 63) / 64;
    p->bitmap = calloc(p->nwords, sizeof(uint64_t));
    p->cap_runs = 1024;
    p->runs = malloc(p->cap_runs * sizeof *p->runs);
    p->cap_sync = 256;
    p->sync = malloc(p->cap_sync * sizeof *p->sync);
    if (!p->bitmap || !p->runs || !p->sync)
        return open_fail(p, fail(ROM_E_IO, "out of memory opening pool %s", path));
    hooks_opened(p); /* before creation and recovery, so crashes there can be tested */
    if (creating) {
        create_pool(p);
        p->opened_as = creating;
    } else {
        /* the header copy was validated above: use it, not the mapping, from here on */
        p->used = h.used;
        p->opened_as = ROM_OPENED;
        /* what recovery copies from must be sound before it overwrites the other copy */
        rc = check_meta(p, h.state == ROM_MUTATING ? p->back : p->main);
        if (rc)
            return open_fail(p, rc);
        recover(p, h.state, h.used);
        if (memcmp(p->main, p->back, META_SIZE) != 0)
            return open_fail(p, corrupt(p, "the committed copy of the allocator metadata and "
                                           "root table (back) differs from main"));
        if (h.creating) { /* pools of older versions kept their creating-stamp */
            p->hdr->creating = 0;
            pm_flush(p, &p->hdr->creating, 8);
            pm_fence(p);
        }
    }
    p->hdr->holder_pid = (uint64_t)getpid();
    *out = p;
    return ROM_OK;
}

int rom_close(rom_pool *p) {
    if (p->closed)
        return ROM_OK;
    if (p->in_txn)
        abort_txn(p);
    bg_shutdown(p); /* back complete, the copier joined */
    rd_shutdown(p); /* no read-ahead still copying out of the mapping */
    p->hdr->holder_pid = 0;
    pm_fence(p); /* orders the last IDLE (and, in msync mode, writes the pending pages) */
    hooks_closing(p);
    flock(p->fd, LOCK_UN);
    close(p->fd);
    p->fd = -1;
    p->closed = 1;
    return ROM_OK;
}

void rom_release(rom_pool *p) {
    if (!p)
        return;
    rom_close(p);
    munmap(p->base, p->map_size);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->bg_cv);
    pthread_mutex_destroy(&p->bg_mu);
    pthread_cond_destroy(&p->rd_cv);
    pthread_mutex_destroy(&p->rd_mu);
    free(p->bitmap);
    free(p->runs);
    free(p->sync);
    free(p->path);
    free(p);
}

uint8_t *rom_base(rom_pool *p) { return p->base; }

void rom_get_stats(rom_pool *p, rom_stats *s) {
    bg_wait(p, 0); /* the copier's counters are its own until it is done */
    memset(s, 0, sizeof *s);
    s->pool_size = p->map_size;
    s->region_size = p->region;
    s->main_off = HDR_PAGE;
    s->back_off = HDR_PAGE + p->region;
    s->meta_size = META_SIZE;
    s->used = p->used;
    s->top = LD(p->meta->top);
    s->free_bytes = avail(p);
    s->alloc_bytes = p->meta->alloc_bytes;
    s->nallocs = p->meta->nallocs;
    s->commits = p->hdr->commits;
    s->aborts = p->aborts;
    s->fences = p->fences;
    s->flushed_lines = p->flushed_lines;
    s->last_log_lines = p->last_log_lines;
    s->last_copy_bytes = p->last_copy_bytes;
    s->last_fences = p->last_fences;
    s->full_copies = p->full_copies;
    s->state = (int32_t)p->hdr->state;
    s->mode = p->mode;
    s->flush = p->flush;
    s->real_pm = p->real_pm;
    s->opened_as = p->opened_as;
    s->in_txn = p->in_txn;
    s->dev_on = p->dev_on;
    s->dev_write_bytes = p->dev_write_bytes;
    s->dev_write_wait_ns = p->dev_write_wait_ns;
    s->dev_read_bytes = p->dev_read_bytes;
    s->dev_read_wait_ns = p->dev_read_wait_ns;
    s->commit_mode = p->commit_bg ? ROM_COMMIT_BACKGROUND : ROM_COMMIT_SYNC;
    s->bg_min = p->bg_min;
    pthread_mutex_lock(&p->bg_mu);
    s->bg_copies = p->bg_copies;
    s->bg_copy_ns = p->bg_copy_ns;
    s->last_bg_copy_ns = p->last_bg_copy_ns;
    s->bg_wait_ns = p->bg_wait_ns;
    pthread_mutex_unlock(&p->bg_mu);
}

void rom_reader_stats(rom_pool *p, uint64_t *out) {
    out[0] = p->ahead_lines;
    pthread_mutex_lock(&p->rd_mu);
    out[1] = p->rd_copies;
    out[2] = p->rd_copy_ns;
    out[3] = p->rd_wait_ns;
    out[4] = p->rd_taken_back;
    out[5] = p->rd_inline;
    pthread_mutex_unlock(&p->rd_mu);
}
