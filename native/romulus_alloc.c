/*
 * romulus_alloc.c -- the allocator and the named roots. All their state is in main (twinned
 * like user data, so an abort or a rollback also undoes allocations and root updates), every
 * store to it is logged, and every word of it read from the pool is validated before use
 * (romulus.h, VALIDATION).
 */
#include "romulus_internal.h"

#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * Allocator (all its state in main, every store logged)
 *
 * Every offset, size, class and link read from the pool is hostile until checked (the attacker
 * owns the file, and an abort restores logged lines from `back`, which may differ from `main`).
 * Each is loaded once (LD), checked against the validated top of the heap, and only then used;
 * list walks are address-ordered or bounded by how many blocks fit. A violation is
 * ROM_E_CORRUPT naming the field, never a wild access or an endless loop.
 * ------------------------------------------------------------------------------------------- */

static uint64_t class_size(unsigned c) {
    if (c < 7)
        return 128 + 64 * (uint64_t)c; /* 128 .. 512 */
    c -= 7;
    unsigned k = 9 + c / 4, i = c % 4 + 1;
    return (1ULL << k) + (uint64_t)i * (1ULL << (k - 2)); /* four per doubling */
}

static int class_of(uint64_t total) {
    for (unsigned c = 0; c < NCLASSES; c++)
        if (class_size(c) >= total)
            return (int)c;
    return -1;
}

static struct rom_blk *blk_in(uint8_t *region, uint64_t off) {
    return (struct rom_blk *)(region + off);
}
static struct rom_blk *blk_at(rom_pool *p, uint64_t off) { return blk_in(p->main, off); }

static void blk_init(rom_pool *p, uint64_t b, uint64_t size, uint64_t cls, uint64_t magic) {
    struct rom_blk *k = blk_at(p, b);
    log_range(p, b, BLK_HDR);
    k->magic = magic;
    k->size = size;
    k->next = 0;
    k->cls = cls;
}

uint64_t avail(rom_pool *p) {
    uint64_t top = LD(p->meta->top), fr = LD(p->meta->free_bytes);
    return (top <= p->region ? p->region - top : 0) + fr; /* statistics only */
}

/* large blocks start one header before a page boundary, so user data is page-aligned */
static uint64_t large_start(uint64_t top) { return align_up(top + BLK_HDR, PAGE) - BLK_HDR; }

static const char *region_name(rom_pool *p, const uint8_t *region) {
    return region == p->back ? " (committed copy)" : "";
}

/* the validated top of the heap of `region` (main or back) */
static int top_of(rom_pool *p, uint8_t *region, uint64_t *out) {
    uint64_t top = LD(((struct rom_meta *)region)->top);
    if (top < META_SIZE || top > p->region || top % LINE)
        return corrupt(p,
                       "allocator top%s 0x%llx is outside the heap [0x%llx, 0x%llx] or not "
                       "%u-byte aligned",
                       region_name(p, region), (unsigned long long)top,
                       (unsigned long long)META_SIZE, (unsigned long long)p->region, LINE);
    *out = top;
    return ROM_OK;
}

/* "free-list head of size class 3" / "link of free block 0x... in size class 3" */
static void list_field(char *buf, size_t n, uint64_t c, uint64_t from) {
    if (c == LARGE_CLASS && !from)
        snprintf(buf, n, "large free-list head");
    else if (c == LARGE_CLASS)
        snprintf(buf, n, "link of large free block 0x%llx", (unsigned long long)from);
    else if (!from)
        snprintf(buf, n, "free-list head of size class %u", (unsigned)c);
    else
        snprintf(buf, n, "link of free block 0x%llx in size class %u", (unsigned long long)from,
                 (unsigned)c);
}

static int bad_link(rom_pool *p, uint8_t *region, uint64_t c, uint64_t from, uint64_t b,
                    const char *why) {
    char field[96];
    list_field(field, sizeof field, c, from);
    return corrupt(p, "%s%s %s (offset 0x%llx)", field, region_name(p, region), why,
                   (unsigned long long)b);
}

/* b, read from a small free list of class c, is a free block of that class under top */
static int chk_small(rom_pool *p, uint8_t *region, unsigned c, uint64_t from, uint64_t b,
                     uint64_t top) {
    uint64_t cs = class_size(c);
    if (b < META_SIZE || b % LINE || b > top || top - b < cs)
        return bad_link(p, region, c, from, b, "points outside the heap");
    struct rom_blk *k = blk_in(region, b);
    if (LD(k->magic) != BLK_FREE)
        return bad_link(p, region, c, from, b, "points at a block that is not free");
    if (LD(k->size) != cs || LD(k->cls) != c)
        return bad_link(p, region, c, from, b, "points at a block of another size");
    return ROM_OK;
}

/* b, read from the large free list, is a free large block in [lo, top); its size in *size */
static int chk_large(rom_pool *p, uint8_t *region, uint64_t from, uint64_t b, uint64_t lo,
                     uint64_t top, uint64_t *size) {
    if (b < META_SIZE || (b + BLK_HDR) % PAGE || b > top || top - b < PAGE)
        return bad_link(p, region, LARGE_CLASS, from, b, "points outside the heap");
    if (b < lo)
        return bad_link(p, region, LARGE_CLASS, from, b,
                        "goes backwards (the list must be address-ordered)");
    struct rom_blk *k = blk_in(region, b);
    uint64_t s = LD(k->size);
    if (LD(k->magic) != BLK_FREE || LD(k->cls) != LARGE_CLASS)
        return bad_link(p, region, LARGE_CLASS, from, b, "points at a block that is not free");
    if (s < PAGE || s % PAGE || s > top - b)
        return bad_link(p, region, LARGE_CLASS, from, b,
                        "points at a block whose size runs past the heap");
    *size = s;
    return ROM_OK;
}

/* first fit in the address-ordered large list, else from the top; *out 0 when full */
static int alloc_large(rom_pool *p, uint64_t total, uint64_t *out) {
    struct rom_meta *m = p->meta;
    uint64_t top;
    int rc = top_of(p, p->main, &top);
    if (rc)
        return rc;
    *out = 0;
    uint64_t prev = 0, cur = LD(m->large_free), lo = META_SIZE;
    while (cur) { /* strictly increasing addresses: at most region / PAGE steps */
        uint64_t ksize;
        if ((rc = chk_large(p, p->main, prev, cur, lo, top, &ksize)))
            return rc;
        struct rom_blk *k = blk_at(p, cur);
        uint64_t next = LD(k->next);
        if (ksize >= total) {
            if (ksize - total >= LARGE_MIN) { /* split: the tail stays free in place */
                uint64_t tail = cur + total;
                blk_init(p, tail, ksize - total, LARGE_CLASS, BLK_FREE);
                st64(p, &blk_at(p, tail)->next, next);
                next = tail;
            } else {
                total = ksize;
            }
            if (prev)
                st64(p, &blk_at(p, prev)->next, next);
            else
                st64(p, &m->large_free, next);
            st64(p, &m->free_bytes, LD(m->free_bytes) - total);
            blk_init(p, cur, total, LARGE_CLASS, BLK_USED);
            *out = cur;
            return ROM_OK;
        }
        prev = cur;
        lo = cur + ksize;
        cur = next;
    }
    uint64_t b = large_start(top);
    if (b > p->region || total > p->region - b)
        return ROM_OK;
    st64(p, &m->top, b + total);
    blk_init(p, b, total, LARGE_CLASS, BLK_USED);
    *out = b;
    return ROM_OK;
}

/* pop the head of small list c after checking it */
static int pop_small(rom_pool *p, unsigned c, uint64_t top, uint64_t *out) {
    struct rom_meta *m = p->meta;
    uint64_t b = LD(m->free_head[c]);
    int rc = chk_small(p, p->main, c, 0, b, top);
    if (rc)
        return rc;
    uint64_t next = LD(blk_at(p, b)->next);
    if (next == b)
        return bad_link(p, p->main, c, b, next, "points at itself");
    st64(p, &m->free_head[c], next);
    st64(p, &m->free_bytes, LD(m->free_bytes) - class_size(c));
    *out = b;
    return ROM_OK;
}

static int alloc_small(rom_pool *p, unsigned c, uint64_t *out) {
    struct rom_meta *m = p->meta;
    uint64_t cs = class_size(c), top, b = 0;
    int rc = top_of(p, p->main, &top);
    if (rc)
        return rc;
    *out = 0;
    if (LD(m->free_head[c])) {
        if ((rc = pop_small(p, c, top, &b)))
            return rc;
    } else if (cs <= p->region - top) {
        b = top;
        st64(p, &m->top, b + cs);
    } else {
        for (unsigned d = c + 1; d < NCLASSES && !b; d++) /* a bigger free block, whole */
            if (LD(m->free_head[d])) {
                if ((rc = pop_small(p, d, top, &b)))
                    return rc;
                c = d;
                cs = class_size(d);
            }
        if (!b) /* last resort: carve it from the coalesced large free blocks */
            return alloc_large(p, align_up(cs, PAGE), out);
    }
    blk_init(p, b, cs, c, BLK_USED);
    *out = b;
    return ROM_OK;
}

int rom_alloc(rom_pool *p, uint64_t size, uint64_t *off) {
    int rc = check_txn(p);
    if (rc)
        return rc;
    *off = 0;
    uint64_t total = size + BLK_HDR;
    if (total < size || total > p->region)
        return fail(ROM_E_FULL, "pool full: %llu bytes needed, %llu free in %s",
                    (unsigned long long)size, (unsigned long long)avail(p), p->path);
    int c = total < LARGE_MIN ? class_of(total) : -1;
    uint64_t need = c >= 0 ? class_size((unsigned)c) : align_up(total, PAGE), b;
    rc = c >= 0 ? alloc_small(p, (unsigned)c, &b) : alloc_large(p, need, &b);
    if (rc)
        return rc;
    if (!b) {
        uint64_t fr = avail(p);
        return fail(ROM_E_FULL, "pool full: %llu bytes needed, %llu free in %s%s",
                    (unsigned long long)need, (unsigned long long)fr, p->path,
                    fr >= need ? " (free space is fragmented)" : "");
    }
    struct rom_meta *m = p->meta;
    st64(p, &m->alloc_bytes, LD(m->alloc_bytes) + blk_at(p, b)->size);
    st64(p, &m->nallocs, LD(m->nallocs) + 1);
    *off = b + BLK_HDR;
    return ROM_OK;
}

/* off (a user offset, from the caller or a root) is an allocated block of `region` under its
 * top: 1 with its header's checked size and class, 0 if not (an error only for a bad top) */
static int block_of(rom_pool *p, uint8_t *region, uint64_t off, uint64_t *size, uint64_t *cls,
                    int *rc) {
    uint64_t top;
    *rc = top_of(p, region, &top);
    if (*rc)
        return 0;
    if (off < META_SIZE + BLK_HDR || off % LINE || off > top)
        return 0;
    uint64_t b = off - BLK_HDR;
    struct rom_blk *k = blk_in(region, b);
    uint64_t s = LD(k->size), c = LD(k->cls);
    if (LD(k->magic) != BLK_USED || s < 2 * BLK_HDR || s > top - b)
        return 0;
    if (c == LARGE_CLASS) {
        if (s % PAGE || off % PAGE)
            return 0;
    } else if (c >= NCLASSES || class_size((unsigned)c) != s) {
        return 0;
    }
    *size = s;
    *cls = c;
    return 1;
}

static int free_large(rom_pool *p, uint64_t b, uint64_t size, uint64_t top) {
    struct rom_meta *m = p->meta;
    uint64_t pp = 0, prev = 0, psize = 0, cur = LD(m->large_free), csize = 0, lo = META_SIZE;
    int rc;
    while (cur) { /* find the neighbours of [b, b+size) in the address-ordered list */
        if ((rc = chk_large(p, p->main, prev, cur, lo, top, &csize)))
            return rc;
        if (cur >= b)
            break;
        if (cur + csize > b)
            return bad_link(p, p->main, LARGE_CLASS, prev, cur,
                            "points at a free block overlapping an allocated one");
        pp = prev;
        prev = cur;
        psize = csize;
        lo = cur + csize;
        cur = LD(blk_at(p, cur)->next);
    }
    if (cur && cur < b + size)
        return bad_link(p, p->main, LARGE_CLASS, prev, cur,
                        "points at a free block overlapping an allocated one");
    uint64_t fb = LD(m->free_bytes);
    /* merge with the following free block */
    if (cur && b + size == cur) {
        cur = LD(blk_at(p, cur)->next);
        fb -= csize;
        size += csize;
    }
    /* merge into the preceding free block */
    if (prev && prev + psize == b) {
        fb -= psize;
        b = prev;
        size += psize;
        prev = pp;
    }
    if (b + size == top) { /* give it back to the top */
        st64(p, &m->top, b);
        if (prev)
            st64(p, &blk_at(p, prev)->next, cur);
        else
            st64(p, &m->large_free, cur);
        st64(p, &m->free_bytes, fb);
        log_range(p, b, BLK_HDR);
        blk_at(p, b)->magic = BLK_FREE;
        return ROM_OK;
    }
    blk_init(p, b, size, LARGE_CLASS, BLK_FREE);
    st64(p, &blk_at(p, b)->next, cur);
    if (prev)
        st64(p, &blk_at(p, prev)->next, b);
    else
        st64(p, &m->large_free, b);
    st64(p, &m->free_bytes, fb + size);
    return ROM_OK;
}

int rom_free(rom_pool *p, uint64_t off) {
    int rc = check_txn(p);
    if (rc)
        return rc;
    uint64_t size, cls, top;
    if (!block_of(p, p->main, off, &size, &cls, &rc))
        return rc ? rc
                  : fail(ROM_E_BADOFF, "pool %s: offset %llu is not an allocated block", p->path,
                         (unsigned long long)off);
    if ((rc = top_of(p, p->main, &top)))
        return rc;
    struct rom_meta *m = p->meta;
    uint64_t b = off - BLK_HDR;
    if (cls == LARGE_CLASS) {
        if ((rc = free_large(p, b, size, top)))
            return rc;
    } else {
        struct rom_blk *k = blk_at(p, b);
        st64(p, &k->magic, BLK_FREE);
        if (b + size == top) {
            st64(p, &m->top, b);
        } else {
            st64(p, &k->next, LD(m->free_head[cls]));
            st64(p, &m->free_head[cls], b);
            st64(p, &m->free_bytes, LD(m->free_bytes) + size);
        }
    }
    st64(p, &m->alloc_bytes, LD(m->alloc_bytes) - size);
    st64(p, &m->nallocs, LD(m->nallocs) - 1);
    return ROM_OK;
}

int rom_block_cap(rom_pool *p, uint64_t off, int committed, uint64_t *cap) {
    uint64_t size, cls;
    int rc;
    if (committed)
        bg_wait(p, 0);
    if (!block_of(p, committed ? p->back : p->main, off, &size, &cls, &rc))
        return rc ? rc
                  : fail(ROM_E_BADOFF, "pool %s: offset %llu is not an allocated block%s",
                         p->path, (unsigned long long)off, committed ? " (committed)" : "");
    *cap = size - BLK_HDR;
    return ROM_OK;
}

int rom_capacity(rom_pool *p, uint64_t off, uint64_t *cap) { return rom_block_cap(p, off, 0, cap); }

/* The allocator metadata of `region` (main or back) before it is trusted at open: magic,
 * top, counters, every free list walked with a bound and summed against free_bytes, and the
 * root table's names. Reads only. */
int check_meta(rom_pool *p, uint8_t *region) {
    struct rom_meta *m = (struct rom_meta *)region;
    const char *rn = region_name(p, region);
    if (LD(m->magic) != META_MAGIC)
        return corrupt(p, "allocator metadata magic%s is 0x%llx, not 0x%llx", rn,
                       (unsigned long long)LD(m->magic), (unsigned long long)META_MAGIC);
    uint64_t top;
    int rc = top_of(p, region, &top);
    if (rc)
        return rc;
    if (top > p->used)
        return corrupt(p, "allocator top%s 0x%llx is above the used size 0x%llx", rn,
                       (unsigned long long)top, (unsigned long long)p->used);
    uint64_t heap = top - META_SIZE, sum = 0;
    if (LD(m->alloc_bytes) > heap || LD(m->nallocs) > heap / class_size(0))
        return corrupt(p, "allocation counters%s (%llu bytes in %llu blocks) exceed the heap", rn,
                       (unsigned long long)LD(m->alloc_bytes), (unsigned long long)LD(m->nallocs));
    for (unsigned c = 0; c < NCLASSES; c++) {
        uint64_t cs = class_size(c), max = heap / cs, n = 0, from = 0;
        for (uint64_t b = LD(m->free_head[c]); b; b = LD(blk_in(region, b)->next)) {
            if ((rc = chk_small(p, region, c, from, b, top)))
                return rc;
            if (++n > max)
                return corrupt(p, "free list of size class %u%s has more blocks than the heap "
                                  "holds (a cycle)", c, rn);
            sum += cs;
            from = b;
        }
    }
    uint64_t lo = META_SIZE, from = 0, size;
    for (uint64_t b = LD(m->large_free); b; b = LD(blk_in(region, b)->next)) {
        if ((rc = chk_large(p, region, from, b, lo, top, &size)))
            return rc;
        sum += size;
        lo = b + size;
        from = b;
    }
    if (sum != LD(m->free_bytes))
        return corrupt(p, "free_bytes%s is %llu, but the free lists hold %llu", rn,
                       (unsigned long long)LD(m->free_bytes), (unsigned long long)sum);
    for (int i = 0; i < ROM_MAX_ROOTS; i++) {
        const struct rom_root *r = &m->roots[i];
        if (!r->name[0])
            continue;
        size_t n = strnlen(r->name, sizeof r->name);
        if (n > ROM_ROOT_NAME_MAX)
            return corrupt(p, "name of root %d%s is not terminated within %d bytes", i, rn,
                           ROM_ROOT_NAME_MAX);
        for (int j = 0; j < i; j++)
            if (strncmp(m->roots[j].name, r->name, sizeof r->name) == 0)
                return corrupt(p, "roots %d and %d%s have the same name", j, i, rn);
    }
    return ROM_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Named roots
 * ------------------------------------------------------------------------------------------- */

static int check_name(rom_pool *p, const char *name) {
    size_t n = strnlen(name, ROM_ROOT_NAME_MAX + 1);
    if (n == 0 || n > ROM_ROOT_NAME_MAX)
        return fail(ROM_E_ROOTS, "pool %s: root names have 1 to %d bytes", p->path,
                    ROM_ROOT_NAME_MAX);
    return ROM_OK;
}

/* the committed table is the copy in back: it differs from main only inside a transaction */
static struct rom_meta *meta_of(rom_pool *p, int committed) {
    if (committed)
        bg_wait(p, 0); /* back is the committed state once the copier is done */
    return committed ? (struct rom_meta *)p->back : p->meta;
}

static struct rom_root *find_root(struct rom_meta *m, const char *name) {
    for (int i = 0; i < ROM_MAX_ROOTS; i++) {
        struct rom_root *r = &m->roots[i];
        if (r->name[0] && strncmp(r->name, name, sizeof r->name) == 0)
            return r;
    }
    return NULL;
}

int rom_root_get(rom_pool *p, const char *name, int committed, uint64_t *off,
                 uint64_t *size) {
    int rc = check_name(p, name);
    if (rc)
        return rc;
    struct rom_root *r = find_root(meta_of(p, committed), name);
    if (!r)
        return 0;
    *off = r->off;
    *size = r->size;
    return 1;
}

int rom_root_set(rom_pool *p, const char *name, uint64_t off, uint64_t size) {
    int rc = check_txn(p);
    if (!rc)
        rc = check_name(p, name);
    if (rc)
        return rc;
    struct rom_root *r = find_root(p->meta, name);
    if (!r) {
        for (int i = 0; i < ROM_MAX_ROOTS && !r; i++)
            if (!p->meta->roots[i].name[0])
                r = &p->meta->roots[i];
        if (!r)
            return fail(ROM_E_ROOTS, "pool %s: all %d roots are in use", p->path, ROM_MAX_ROOTS);
        log_range(p, (uint64_t)((uint8_t *)r - p->main), sizeof *r);
        memset(r->name, 0, sizeof r->name);
        memcpy(r->name, name, strlen(name));
    }
    st64(p, &r->off, off);
    st64(p, &r->size, size);
    return ROM_OK;
}

int rom_root_del(rom_pool *p, const char *name) {
    int rc = check_txn(p);
    if (!rc)
        rc = check_name(p, name);
    if (rc)
        return rc;
    struct rom_root *r = find_root(p->meta, name);
    if (r) {
        log_range(p, (uint64_t)((uint8_t *)r - p->main), sizeof *r);
        memset(r, 0, sizeof *r);
    }
    return ROM_OK;
}

int rom_root_at(rom_pool *p, int index, int committed, char *name, uint64_t *off,
                uint64_t *size) {
    if (index < 0 || index >= ROM_MAX_ROOTS)
        return fail(ROM_E_ROOTS, "root index %d out of range", index);
    struct rom_root *r = &meta_of(p, committed)->roots[index];
    if (!r->name[0])
        return 0;
    memcpy(name, r->name, ROM_ROOT_NAME_MAX);
    name[ROM_ROOT_NAME_MAX] = 0;
    *off = r->off;
    *size = r->size;
    return 1;
}
