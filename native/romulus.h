/*
 * romulus.h -- RomulusLog durable transactions over a memory-mapped pool file.
 *
 * After Correia, Felber, Ramalhete, "Romulus: Efficient Algorithms for Persistent Transactional
 * Memory" (SPAA 2018), as used by Plinius (DSN 2021) to mirror encrypted models into PM.
 *
 * POOL FILE LAYOUT (all offsets are file offsets; the pool may be mapped at any address, so
 * nothing persistent holds a raw pointer)
 *
 *   [0, 4096)              header page, NOT twinned:
 *                            line 0: magic (written LAST at creation), creating-stamp (written
 *                                    FIRST), version, pool size, region size, main/back offsets
 *                            line 1: pid of the opener (informational, for "pool locked" errors)
 *                            line 2: state word (IDLE / MUTATING / COPYING), used size, commits
 *   [4096, 4096+R)         main: the live data, read and written in place by the application
 *   [4096+R, 4096+2R)      back: the last committed copy of main
 *
 *   main starts with the allocator metadata and the table of named roots (name -> offset, size).
 *   Being inside main, they are twinned like user data: an aborted or rolled-back transaction
 *   also rolls back its allocations and root updates. The used size starts at the size of that
 *   metadata, so full copies always include it.
 *
 *   Allocator: a top pointer; blocks under 64 KiB come in size classes (128..512 B by 64, then
 *   four per doubling: at most 25 % slack) with one free list per class; larger blocks are whole
 *   pages with page-aligned data, kept in one address-ordered free list that is split and
 *   coalesced (and given back to the top), so a model growing one layer at a time reuses what
 *   it frees. Every block has a 64-byte header; every allocator store is logged.
 *
 * TRANSACTIONS AND THE FOUR FENCES
 *
 *   Every store into main inside a transaction is declared with rom_log() (or made by the engine
 *   itself through a logged store): the written range is added, at cache-line granularity and
 *   without duplicates, to a volatile log (a dirty-line bitmap plus a list of line runs).
 *   Nothing about the log is persistent: recovery never needs it, because `back` is a complete
 *   copy of the last committed state and `main` is complete whenever the state says COPYING.
 *
 *   begin    state = MUTATING; flush(state)
 *            FENCE 1: MUTATING must be durable before any store to main can reach PM. Otherwise
 *                     a crash could leave main half-modified under IDLE, and nothing would undo it.
 *   ...      application stores into main, each declared in the log (declare, then write)
 *   commit   used = max(used, allocator top); flush(used)
 *            flush every logged line of main (on log overflow: ALL of main [0, used))
 *            FENCE 2: main must be complete in PM before we claim it is (COPYING makes recovery
 *                     copy main -> back, so an incomplete main would be copied over good data).
 *            state = COPYING; flush(state)
 *            FENCE 3: COPYING must be durable before back is touched: while the state still reads
 *                     MUTATING, recovery copies back -> main, so back must stay the old state.
 *                     From here on the transaction is durable (recovery rolls it forward).
 *            copy the logged ranges main -> back (on overflow: all of [0, used)); in pmem mode
 *            with non-temporal stores, which bypass the cache and need no flush
 *            FENCE 4: back must be complete before the state says IDLE, else the next
 *                     transaction's rollback would copy a torn back into main.
 *            state = IDLE, neither flushed nor fenced (as in the published RomulusLog): if it
 *                     is lost, the state still reads COPYING and recovery redoes the idempotent
 *                     copy main -> back. The next begin's store to the same word supersedes it.
 *   abort    copy the logged ranges back -> main; flush them; fence; state = IDLE (unflushed:
 *            if lost, recovery redoes the same rollback).
 *
 *   Exactly four fences per committed transaction, whatever its size (two per aborted one).
 *
 * BACKGROUND COMMIT (ROM_COMMIT_BACKGROUND, the default; rom_set_commit)
 *
 *   The transaction is durable at FENCE 3. A commit whose copy to back is at least bg_min bytes
 *   hands the copy, FENCE 4 and the IDLE store to the pool's copier thread and returns right
 *   after FENCE 3: the copy leaves the critical path. Until it is done, back is stale but never
 *   needed: the state word reads COPYING, so a crash rolls forward from main (which is
 *   complete since FENCE 2). What needs back waits for the copier: the next rom_begin (before
 *   FENCE 1: MUTATING must never be written while back is incomplete), rom_close, committed
 *   reads (rom_root_get/_at, rom_block_cap with committed=1), rom_get_stats and rom_wait_copy.
 *   Reads of main never wait: main is already the committed state. The copier follows the
 *   same order as a synchronous commit (its own sfence is FENCE 4, the mutex handoff orders
 *   the committing thread's stores before its loads), so the crash protocol is unchanged.
 *   Flushes and copies of 8 MiB or more are split over helper threads (one per CPU): each ends
 *   with its own sfence and is joined before the committing thread's next fence, so the order
 *   above holds for their stores too.
 *
 *   Log overflow: once the logged lines exceed a quarter of the used size, logging stops and the
 *   commit flushes all of main before FENCE 2 (the published code forgot this flush) and copies
 *   [0, used) whole. Flush ranges always start at the cache line holding their first byte (the
 *   published code started at the unaligned address and could miss the last line).
 *
 * RECOVERY (at open, under the pool lock)
 *
 *   IDLE      nothing to do
 *   MUTATING  roll back:    copy back -> main over [0, used); flush; fence; IDLE; flush; fence
 *   COPYING   roll forward: copy main -> back over [0, used); flush; fence; IDLE; flush; fence
 *   Both are idempotent: a crash during recovery leaves the state word unchanged, and the next
 *   open does the same copy again.
 *
 * CREATION
 *
 *   The creating-stamp is written (pwrite + fdatasync) before the file is even sized; then the
 *   layout, the allocator metadata in main and its twin in back are written and fenced; the
 *   magic is written and fenced; last the stamp is cleared and fenced. A file with the stamp
 *   but no magic is an unfinished creation: it is created again automatically, but only if it
 *   never held data (no commit, allocator tables as creation leaves them). Any other file with
 *   content is never written over: a damaged pool (e.g. a zeroed magic under an otherwise valid
 *   header, or a stamp over committed data) is ROM_E_CORRUPT, a foreign file ROM_E_BADMAGIC.
 *   Only ROM_CREATE_FORCE empties a file and creates a new pool in it.
 *
 * VALIDATION (the pool file is attacker-controlled; the process memory is not)
 *
 *   At open, before anything is mapped or written: the size (not past ROM_MAX_POOL, the file
 *   exactly as long as its header says: never mapped past EOF), then every header field. After
 *   mapping, before recovery copies anything: the allocator metadata of the copy recovery reads
 *   from (magic, top, counters, every free list walked with a bound and summed against
 *   free_bytes, root names), and after recovery main's and back's metadata must be equal. At
 *   use: every offset, size, class and link the allocator reads is loaded once and checked
 *   against the validated top before it is followed or written through (an abort restores
 *   lines from back, which the attacker may have changed alone); the large free list must be
 *   strictly address-ordered, so no walk can cycle. The used size lives in process memory after
 *   open. Any violation is ROM_E_CORRUPT with a message naming the field. There is no
 *   persistent log to validate: the log is volatile (see above).
 *
 * DURABILITY MODES (flush + fence)
 *
 *   ROM_MODE_PMEM   clwb / clflushopt / clflush per line + sfence: power-fail durable only on
 *                   real PM or a DAX mapping with MAP_SYNC; on tmpfs it is the paper's emulated PM.
 *   ROM_MODE_MSYNC  flush records the dirty pages; the fence msync()s them: power-fail durable on
 *                   an ordinary file system.
 *   ROM_MODE_NONE   no flush, the fence is a compiler barrier: process-crash durability only (the
 *                   stores are in the page cache, in program order).
 *
 * THREADS
 *
 *   A write transaction holds the pool's mutex from begin to commit/abort: one writer at a time,
 *   and the thread that began it ends it. Readers are not synchronised (a pool is used by one
 *   trainer); the committed state is always readable in back.
 *
 * TUNING (environment, read at open): PLINIUS_PM_MODE, PLINIUS_PM_FLUSH (override the defaults,
 * not explicit arguments), PLINIUS_PM_COMMIT, PLINIUS_PM_BG_MIN (background commit),
 * PLINIUS_PM_THREADS (helpers for big copies), PLINIUS_PM_NT_MIN
 * (smallest copy to back that uses streaming stores; default 0 = all). The device model
 * (rom_device) is chosen by the caller: the Python wrapper reads PLINIUS_PM_DEVICE.
 *
 * THIS HEADER IS THE ENGINE'S API, stated once: build_romulus.py generates the cffi
 * declarations from it (comments and preprocessor lines stripped, every ROM_* constant taken
 * from the compiler), so what is declared below is exactly what the binding sees. Keep it
 * cffi-parsable: plain prototypes, typedefs and object-like #defines. Test hooks and the
 * benchmark loop are not part of it: romulus_sim.h and romulus_bench.h. The code is split by
 * concern, see romulus_internal.h.
 */
#ifndef PLINIUS_ROMULUS_H
#define PLINIUS_ROMULUS_H

#include <stddef.h>
#include <stdint.h>

#define ROM_VERSION 1
#define ROM_LINE 64
#define ROM_MIN_POOL (256u * 1024u)
#define ROM_MAX_POOL (1ULL << 46) /* 64 TiB: more than any mapping gets, far from wrapping */
#define ROM_ROOT_NAME_MAX 64 /* characters, without the NUL */
#define ROM_MAX_ROOTS 128

/* create policy of rom_open */
#define ROM_CREATE_NEVER 0 /* the pool must exist */
#define ROM_CREATE_AUTO 1  /* create a missing or empty file, redo an unfinished creation */
#define ROM_CREATE_FORCE 2 /* empty whatever the file holds and create a new pool */

/* durability modes */
#define ROM_MODE_AUTO (-1)
#define ROM_MODE_PMEM 0
#define ROM_MODE_MSYNC 1
#define ROM_MODE_NONE 2

/* commit modes (rom_set_commit) */
#define ROM_COMMIT_SYNC 0       /* the copy main -> back runs inside rom_commit */
#define ROM_COMMIT_BACKGROUND 1 /* big copies run on the pool's copier thread (default) */

/* flush instructions */
#define ROM_FLUSH_AUTO (-1)
#define ROM_FLUSH_CLWB 0
#define ROM_FLUSH_CLFLUSHOPT 1
#define ROM_FLUSH_CLFLUSH 2
#define ROM_FLUSH_NONE 3 /* a CPU without any (not x86): only msync/none modes work */

/* state word */
#define ROM_IDLE 0
#define ROM_MUTATING 1
#define ROM_COPYING 2

/* what rom_open found */
#define ROM_OPENED 0
#define ROM_CREATED 1
#define ROM_RECREATED 2   /* an unfinished creation was redone */
#define ROM_ROLLED_BACK 3 /* MUTATING at open */
#define ROM_ROLLED_FWD 4  /* COPYING at open */

/* error codes (negative); rom_last_error() has the message */
#define ROM_OK 0
#define ROM_E_IO (-1)        /* a system call failed (errno in the message) */
#define ROM_E_LOCKED (-2)    /* another opener holds the pool */
#define ROM_E_BADMAGIC (-3)  /* not a pool */
#define ROM_E_TRUNCATED (-4) /* shorter than its header says */
#define ROM_E_VERSION (-5)   /* newer format */
#define ROM_E_SIZE (-6)      /* opened with another size than it was created with */
#define ROM_E_FULL (-7)      /* allocation does not fit */
#define ROM_E_NOTXN (-8)     /* needs a transaction */
#define ROM_E_INTXN (-9)     /* a transaction is already open in this thread */
#define ROM_E_RANGE (-10)    /* offset/length outside main */
#define ROM_E_BADOFF (-11)   /* not an allocated block */
#define ROM_E_ROOTS (-12)    /* root table full or bad root name */
#define ROM_E_FLUSH (-13)    /* flush instruction or mode not available */
#define ROM_E_CORRUPT (-14)  /* inconsistent header */
#define ROM_E_INVAL (-15)    /* bad argument */
#define ROM_E_CLOSED (-16)   /* pool already closed */
#define ROM_E_NOSPACE (-17)  /* the file system has no room for the pool */
#define ROM_E_NOENT (-18)    /* no pool file, and the create policy is ROM_CREATE_NEVER */

typedef struct rom_pool rom_pool;

/* Pool statistics (rom_get_stats), declared here only: the Python PoolStats
 * (plinius/backends/romulus/pool.py) is generated from this declaration through cffi, one field
 * per field in this order, under the same name (a *_ns field becomes *_s in seconds; the codes
 * state, mode, flush, opened_as and commit_mode become names, commit_mode as "commit"; dev_on
 * and bg_reserved are not shown). A new field needs no Python change. */
typedef struct rom_stats {
    uint64_t pool_size;    /* bytes of the file */
    uint64_t region_size;  /* bytes of main (= of back) */
    uint64_t main_off;     /* file offset of main */
    uint64_t back_off;     /* file offset of back */
    uint64_t meta_size;    /* allocator + roots at the start of main */
    uint64_t used;         /* bytes of main covered by full copies */
    uint64_t top;          /* first never-allocated byte of main */
    uint64_t free_bytes;   /* bytes available: above top plus free blocks */
    uint64_t alloc_bytes;  /* bytes in allocated blocks (headers included) */
    uint64_t nallocs;      /* allocated blocks */
    uint64_t commits;      /* persistent commit counter */
    uint64_t aborts;       /* this session */
    uint64_t fences;       /* this session */
    uint64_t flushed_lines;/* this session, lines passed to the flush primitive */
    uint64_t last_log_lines;    /* lines logged by the last transaction */
    uint64_t last_copy_bytes;   /* bytes copied main -> back by the last commit */
    uint64_t last_fences;       /* fences of the last transaction */
    uint64_t full_copies;       /* commits that overflowed the log (this session) */
    int32_t state;
    int32_t mode;
    int32_t flush;
    int32_t real_pm;       /* mapped with MAP_SYNC: a DAX file system, real PM */
    int32_t opened_as;     /* ROM_OPENED / CREATED / RECREATED / ROLLED_BACK / ROLLED_FWD */
    int32_t in_txn;
    int32_t dev_on;             /* a device model throttles this pool (rom_open_dev) */
    uint64_t dev_write_bytes;   /* this session: bytes charged to the modelled media at fences */
    uint64_t dev_write_wait_ns; /* this session: ns spent waiting for the modelled media */
    uint64_t dev_read_bytes;    /* this session: bytes charged by rom_model_read */
    uint64_t dev_read_wait_ns;  /* this session: ns spent in rom_model_read */
    int32_t commit_mode;        /* ROM_COMMIT_SYNC / ROM_COMMIT_BACKGROUND */
    int32_t bg_reserved;
    uint64_t bg_min;            /* smallest copy handed to the copier (bytes) */
    uint64_t bg_copies;         /* this session: commits whose copy ran in the background */
    uint64_t bg_copy_ns;        /* this session: ns the copier spent (copy + FENCE 4) */
    uint64_t last_bg_copy_ns;   /* ns of the last background copy */
    uint64_t bg_wait_ns;        /* this session: ns rom_begin/rom_close waited for the copier */
} rom_stats;

/* A persistent-memory DEVICE MODEL (optional; all zero = none, DRAM speed).
 *
 * Emulated PM (a file on tmpfs) runs at DRAM speed. With a model, every byte the protocol makes
 * persistent (each line passed to the flush primitive, each byte streamed to back) is charged
 * to the modelled media, and each fence (the sfence that drains the write-pending queue) waits,
 * busy on CLOCK_MONOTONIC, until
 *       max(now, last drain point + bytes charged since then / write_bps) + fence_ns
 * so the bytes persisted between two drain points never exceed the modelled write bandwidth.
 * Work done between the drain points (e.g. encrypting into main) overlaps with the media time,
 * as stores evicted to real PM would. rom_model_read(n) waits read_ns + n / read_bps: a floor
 * for reading n bytes out of the pool (sequential bandwidth, one access latency). A model only
 * ever adds waiting: it never changes what is written, where, or in which order; the crash
 * protocol and its tests are unchanged. Off, it costs one predictable branch per flush/fence. */
typedef struct rom_device {
    double write_bps; /* bytes per second the media absorbs (> 0 when on) */
    double read_bps;  /* bytes per second read from the media (> 0 when on) */
    uint64_t fence_ns; /* added to every fence (drain of the write-pending queue) */
    uint64_t read_ns;  /* added to every rom_model_read (one random-access latency) */
} rom_device;

/* --- start-up ------------------------------------------------------------------------------- */
int rom_cpu_flush(void);              /* best instruction this CPU has (cpuid), once */
int rom_cpu_has(int flush);           /* 1 if the CPU has that instruction */
const char *rom_flush_name(int flush);
const char *rom_mode_name(int mode);
const char *rom_last_error(void);     /* message of the last failure in this thread */

/* --- pool ------------------------------------------------------------------------------------- */
/* path: path_len bytes, no NUL inside (checked: a NUL would silently name another file).
 * size: 0 = whatever the existing pool has (required to create).
 * create: ROM_CREATE_NEVER / _AUTO / _FORCE. AUTO never writes over a file with content except
 * an unfinished creation that holds no data; a damaged pool is refused (ROM_E_CORRUPT), a
 * foreign file too (ROM_E_BADMAGIC). FORCE empties the file first.
 * mode/flush: ROM_MODE_AUTO / ROM_FLUSH_AUTO = environment (PLINIUS_PM_MODE, PLINIUS_PM_FLUSH)
 * or the default (pmem, best cpuid instruction). */
int rom_open(const char *path, size_t path_len, uint64_t size, int create, int mode, int flush,
             rom_pool **out);
/* rom_open with a device model (NULL or write_bps == 0: none), applied from creation/recovery on.
 * With ROM_CREATE_NEVER a missing file is ROM_E_NOENT and nothing is created. */
int rom_open_dev(const char *path, size_t path_len, uint64_t size, int create, int mode,
                 int flush, const rom_device *dev, rom_pool **out);
/* device model: wait as reading n bytes from the modelled media would (no-op without a model) */
void rom_model_read(rom_pool *p, uint64_t n);
int rom_close(rom_pool *p);    /* abort an open txn, persist, unlock, close the file */
void rom_release(rom_pool *p); /* unmap and free (after rom_close; views die here) */
uint8_t *rom_base(rom_pool *p); /* start of the mapping (the header) */
void rom_get_stats(rom_pool *p, rom_stats *out);

/* --- transactions ----------------------------------------------------------------------------- */
int rom_begin(rom_pool *p);
int rom_commit(rom_pool *p);
int rom_abort(rom_pool *p);
int rom_log(rom_pool *p, uint64_t off, uint64_t len); /* declare main[off, off+len) written */
/* main[off, off+len) is final in this transaction: its whole lines may be flushed now on the
 * pool's reader thread (pmem mode), and the commit flushes only the rest. Never store to the
 * range again in this transaction. A no-op where it cannot help (other modes, crash
 * simulation, device model): the commit flushes everything as always. */
int rom_flush_ahead(rom_pool *p, uint64_t off, uint64_t len);
/* commit: ROM_COMMIT_SYNC or _BACKGROUND; bg_min: smallest copy (bytes) worth handing to the
 * copier (UINT64_MAX: keep the current one). Not inside a transaction. The defaults come from
 * PLINIUS_PM_COMMIT (sync|background) and PLINIUS_PM_BG_MIN at open. */
int rom_set_commit(rom_pool *p, int commit, uint64_t bg_min);
/* wait until back is the last committed state (the background copy is done); ns waited */
uint64_t rom_wait_copy(rom_pool *p);

/* --- read-ahead (a restore's copy out of the pool, off the caller's thread) -------------------- */
/* Copy n bytes at off of main (committed=0) or of back (committed=1: after the background copy)
 * into dst on the pool's reader thread, and return at once; rom_read_wait returns once it is
 * done (ns waited). One read at a time: a second start waits for the first. dst is the
 * caller's private memory and must stay valid until rom_read_wait returns. The caller works
 * (decrypts the previous range) meanwhile: with cffi releasing the GIL in rom_read_wait the
 * copy and the caller's work overlap on two cores. A forked child (no reader) copies inline. */
int rom_read_start(rom_pool *p, void *dst, uint64_t off, uint64_t n, int committed);
uint64_t rom_read_wait(rom_pool *p);
/* this session: out[0] lines flushed ahead (rom_flush_ahead), out[1] jobs the reader thread
 * ran (reads and flushes), out[2] ns it spent on them, out[3] ns callers waited for it (or ran
 * a job themselves), out[4] pieces a caller ran itself because the reader had not claimed
 * them, out[5] jobs left to the caller because the reader had been late (a busy machine) */
void rom_reader_stats(rom_pool *p, uint64_t *out);

/* --- allocator (offsets are relative to main; 0 means none) ----------------------------------- */
int rom_alloc(rom_pool *p, uint64_t size, uint64_t *off);
int rom_free(rom_pool *p, uint64_t off);
int rom_capacity(rom_pool *p, uint64_t off, uint64_t *cap); /* usable bytes of a block */
/* the same for the committed copy (back) when committed is 1 */
int rom_block_cap(rom_pool *p, uint64_t off, int committed, uint64_t *cap);

/* --- named roots ------------------------------------------------------------------------------ */
/* committed: read the table of the last commit (in back), not main's. 1 found, 0 not */
int rom_root_get(rom_pool *p, const char *name, int committed, uint64_t *off,
                 uint64_t *size);
int rom_root_set(rom_pool *p, const char *name, uint64_t off, uint64_t size);
int rom_root_del(rom_pool *p, const char *name);
int rom_root_at(rom_pool *p, int index, int committed, char *name, uint64_t *off,
                uint64_t *size); /* 1 used, 0 free slot */

#endif /* PLINIUS_ROMULUS_H */
