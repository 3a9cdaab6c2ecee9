/* The C fast path of the FUSE daemon (see fastpath.h and unionfs/fs/fastpath.py).
 *
 * pyfuse3 spends some 50 us per request (a trio task switch, a coroutine, the handler);
 * a lookup of a lower entry needs a hash probe in the mmapped index and a reply.  The
 * handlers here answer what they can prove from the map and the index alone, and hand
 * everything else, unchanged, to pyfuse3's callbacks.  After answering, they wait briefly
 * (spin_ns) for the next request and, when one comes, read and dispatch it here, without
 * a round trip through trio; a request that goes to Python ends that, since pyfuse3 must
 * await its handler first. */
#define _GNU_SOURCE /* ppoll */
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "fastpath.h"
#include "index.h"
#include "le.h"
#include "safeopen.h"

#define ENTRY_SIZE 104u
/* Entry record field offsets (unionfs/index/format.py). */
#define E_SIZE 0
#define E_RDEV 8
#define E_ATIME 16
#define E_MTIME 24
#define E_CTIME 32
#define E_BLOCKS 40
#define E_NAME_OFF 48
#define E_PARENT 56
#define E_MODE 60
#define E_UID 64
#define E_GID 68
#define E_NLINK 72
#define E_LINK_GROUP 76
#define E_FIRST_CHILD 80
#define E_CHILD_COUNT 84
#define E_NAME_LEN 96
#define E_LAYER 98

/* FUSE opcodes (linux/fuse.h) of the requests these handlers may answer. */
#define OP_LOOKUP 1
#define OP_FORGET 2
#define OP_GETATTR 3
#define OP_OPEN 14
#define OP_READ 15
#define OP_RELEASE 18
#define OP_FSYNC 20
#define OP_GETXATTR 22
#define OP_BATCH_FORGET 42
#define OP_READDIRPLUS 44

#define FH_OPENED_HERE (1ULL << 62)
/* File handles of lower files opened here: the fd, tagged (Python numbers its own from 1). */
#define MAX_DEPTH 4096
#define PATH_CAP 65536

#define MAX_BATCH 4096
/* Requests served in one go before trio gets the thread back. */
#define READ_BUF_SIZE ((256u + 2u) * 4096u)
/* libfuse's own buffer: the kernel refuses reads into less than max_write + headers. */

typedef void (*lookup_fn)(fuse_req_t, fuse_ino_t, const char *);
typedef void (*getattr_fn)(fuse_req_t, fuse_ino_t, struct fuse_file_info *);
typedef void (*forget_fn)(fuse_req_t, fuse_ino_t, uint64_t);
typedef void (*forget_multi_fn)(fuse_req_t, size_t, struct fuse_forget_data *);
typedef void (*readdir_fn)(fuse_req_t, fuse_ino_t, size_t, off_t, struct fuse_file_info *);
typedef void (*open_fn)(fuse_req_t, fuse_ino_t, struct fuse_file_info *);
typedef void (*read_fn)(fuse_req_t, fuse_ino_t, size_t, off_t, struct fuse_file_info *);
typedef void (*fsync_fn)(fuse_req_t, fuse_ino_t, int, struct fuse_file_info *);
typedef void (*getxattr_fn)(fuse_req_t, fuse_ino_t, const char *, size_t);

struct rec {
    uint64_t ino;     /* 0: empty slot */
    uint64_t parent;  /* the directory inode it is in (for "..", and for Python's adoption) */
    uint64_t nlookup; /* lookups handed out here that the kernel has not forgotten (for a
                         node Python holds: on top of the count Python keeps) */
    uint64_t listed;  /* the size of the last whole listing of this directory served here */
    uint32_t ident;   /* the lower entry it shows, if pure (else 0) */
    uint8_t py;       /* Python's NodeTable has it */
    uint8_t caps;     /* its lower file has security.capability: 0 unknown, 1 no, 2 yes */
    uint8_t no_caps;  /* Python knows its upper file has no security.capability */
};

static struct {
    const uint8_t *base;
    uint64_t len, count, entries_off, names_off, names_len;
    struct fuse_session *se;
    int fd;
    double timeout;
    long spin_ns;
    lookup_fn lookup;
    getattr_fn getattr;
    forget_fn forget;
    forget_multi_fn forget_multi;
    readdir_fn readdirplus;
    open_fn open;
    read_fn read;
    open_fn release;
    fsync_fn fsync;
    getxattr_fn getxattr;
    int *layer_fds;
    size_t nlayers;
    struct rec *tab;
    size_t cap, used;
    uint64_t *fd_ino; /* the inode of each fd opened here (by fd number; 0: none) */
    size_t fd_cap, fds_open;
    int serving, passed, off, busy;
    uint8_t *buf, *reply; /* a request read here; a READ or READDIRPLUS reply */
    char *path;
    uint64_t stats[7];
} g;

/* -- the inode map: open addressing, linear probing, backward-shift deletion ---------- */

static size_t slot_of(uint64_t ino)
{
    return (size_t)((ino * 0x9e3779b97f4a7c15ULL) >> 17) & (g.cap - 1);
}

static struct rec *find(uint64_t ino)
{
    size_t i;

    if (g.cap == 0 || ino == 0)
        return NULL;
    for (i = slot_of(ino); g.tab[i].ino != 0; i = (i + 1) & (g.cap - 1))
        if (g.tab[i].ino == ino)
            return &g.tab[i];
    return NULL;
}

static int grow(void)
{
    size_t old_cap = g.cap, i, j;
    struct rec *old = g.tab, *tab;

    tab = calloc(old_cap ? old_cap * 2 : 1024, sizeof(*tab));
    if (tab == NULL)
        return -1;
    g.tab = tab;
    g.cap = old_cap ? old_cap * 2 : 1024;
    for (i = 0; i < old_cap; i++) {
        if (old[i].ino == 0)
            continue;
        for (j = slot_of(old[i].ino); tab[j].ino != 0; j = (j + 1) & (g.cap - 1))
            ;
        tab[j] = old[i];
    }
    free(old);
    return 0;
}

/* A new zeroed record for `ino` (not in the map), or NULL without memory. */
static struct rec *insert(uint64_t ino)
{
    size_t i;

    if ((g.used + 1) * 2 > g.cap && grow() != 0)
        return NULL;
    for (i = slot_of(ino); g.tab[i].ino != 0; i = (i + 1) & (g.cap - 1))
        ;
    memset(&g.tab[i], 0, sizeof(g.tab[i]));
    g.tab[i].ino = ino;
    g.used++;
    return &g.tab[i];
}

static void erase(struct rec *r)
{
    size_t i = (size_t)(r - g.tab), j = i, home;

    for (;;) {
        j = (j + 1) & (g.cap - 1);
        if (g.tab[j].ino == 0)
            break;
        home = slot_of(g.tab[j].ino);
        /* Move j back into the hole at i unless its home lies cyclically in (i, j]. */
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            g.tab[i] = g.tab[j];
            i = j;
        }
    }
    g.tab[i].ino = 0;
    g.used--;
}

/* -- the index -------------------------------------------------------------------- */

static const uint8_t *entry(uint64_t ident)
{
    if (ident == 0 || ident > g.count)
        return NULL;
    return g.base + g.entries_off + (ident - 1) * ENTRY_SIZE;
}

/* The entry of a lower entry that inode `ino` may show as a pure lower inode: its own
 * number, and not one of several hard links (those are Python's: names, copy-up). */
static const uint8_t *pure_entry(uint64_t ino, uint64_t ident)
{
    const uint8_t *e = entry(ident);

    if (e == NULL || rd32(e + E_LINK_GROUP) != ino)
        return NULL;
    if (!S_ISDIR(rd32(e + E_MODE)) && rd32(e + E_NLINK) > 1)
        return NULL;
    return e;
}

static void set_time(struct timespec *ts, int64_t ns)
{
    int64_t sec = ns / 1000000000, rem = ns % 1000000000;

    if (rem < 0) {
        rem += 1000000000;
        sec -= 1;
    }
    ts->tv_sec = sec;
    ts->tv_nsec = rem;
}

/* Where the entry's name is in the image (*len bytes), or NULL if it is out of bounds,
 * empty, or not a file name (a '/' or NUL in it): the image is not trusted. */
static const char *name_in(const uint8_t *e, uint16_t *len)
{
    uint64_t off = rd64(e + E_NAME_OFF);
    const char *name;

    *len = rd16(e + E_NAME_LEN);
    if (*len == 0 || off > g.names_len || *len > g.names_len - off)
        return NULL;
    name = (const char *)g.base + g.names_off + off;
    if (memchr(name, '/', *len) != NULL || memchr(name, '\0', *len) != NULL)
        return NULL;
    return name;
}

/* What operations._attrs gives for a lower node. */
static void fill_stat(const uint8_t *e, uint64_t ino, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_ino = ino;
    st->st_mode = rd32(e + E_MODE);
    st->st_nlink = rd32(e + E_NLINK);
    st->st_uid = rd32(e + E_UID);
    st->st_gid = rd32(e + E_GID);
    st->st_rdev = rd64(e + E_RDEV);
    st->st_size = (off_t)rd64(e + E_SIZE);
    st->st_blksize = 4096;
    st->st_blocks = (blkcnt_t)rd64(e + E_BLOCKS);
    set_time(&st->st_atim, (int64_t)rd64(e + E_ATIME));
    set_time(&st->st_mtim, (int64_t)rd64(e + E_MTIME));
    set_time(&st->st_ctim, (int64_t)rd64(e + E_CTIME));
}

/* -- serving ---------------------------------------------------------------------- */

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Whether a request arrives within spin_ns.  Busy-polls when another CPU can run the
 * caller meanwhile: an idle CPU's wakeup costs tens of microseconds on a virtual
 * machine, more than answering the request. */
static int await_request(void)
{
    int64_t deadline = now_ns() + g.spin_ns;
    struct timespec zero = {0, 0};

    if (!g.busy) {
        struct pollfd pfd = {.fd = g.fd, .events = POLLIN};
        struct timespec ts = {0, g.spin_ns};

        return ppoll(&pfd, 1, &ts, NULL) == 1 && (pfd.revents & POLLIN);
    }
    do {
        struct pollfd pfd = {.fd = g.fd, .events = POLLIN};
        int r = ppoll(&pfd, 1, &zero, NULL);

        if (r == 1)
            return (pfd.revents & POLLIN) != 0;
        if (r < 0 && errno != EINTR)
            return 0;
    } while (now_ns() < deadline);
    return 0;
}

/* Read and dispatch requests that follow within spin_ns, until one goes to Python. */
static void serve_more(void)
{
    int n;

    if (g.serving || g.spin_ns <= 0)
        return;
    g.serving = 1;
    g.passed = 0;
    for (n = 0; n < MAX_BATCH && !g.passed && !fuse_session_exited(g.se); n++) {
        struct fuse_buf fb;
        uint32_t opcode;
        ssize_t got;

        if (!await_request())
            break;
        got = read(g.fd, g.buf, READ_BUF_SIZE);
        if (got < 8)
            break; /* EAGAIN, ENODEV at unmount, EINTR: pyfuse3's loop takes it from here */
        g.stats[4]++;
        opcode = rd32(g.buf + 4);
        if (opcode != OP_LOOKUP && opcode != OP_GETATTR && opcode != OP_FORGET
            && opcode != OP_BATCH_FORGET && opcode != OP_READDIRPLUS && opcode != OP_OPEN
            && opcode != OP_READ && opcode != OP_RELEASE && opcode != OP_FSYNC
            && opcode != OP_GETXATTR)
            g.passed = 1; /* pyfuse3's callback runs inside process_buf; stop after it */
        memset(&fb, 0, sizeof(fb));
        fb.size = (size_t)got;
        fb.mem = g.buf;
        fuse_session_process_buf(g.se, &fb);
    }
    g.serving = 0;
}

static void pass_on(void)
{
    g.passed = 1;
    g.stats[3]++;
}

static void fast_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct fuse_entry_param ep;
    struct rec *p = find(parent), *c;
    const uint8_t *pe, *ce;
    int64_t id;
    uint64_t ino;

    if (g.off || p == NULL || p->ident == 0 || name[0] == '\0' || strcmp(name, ".") == 0
        || strcmp(name, "..") == 0)
        goto python;
    pe = entry(p->ident);
    if (pe == NULL || !S_ISDIR(rd32(pe + E_MODE)))
        goto python;
    memset(&ep, 0, sizeof(ep));
    ep.entry_timeout = g.timeout;
    id = imgfs_index_lookup(g.base, g.len, p->ident, name, strlen(name));
    if (id > 0) {
        ce = entry((uint64_t)id);
        if (ce == NULL)
            goto python;
        ino = rd32(ce + E_LINK_GROUP);
        if (pure_entry(ino, (uint64_t)id) == NULL)
            goto python;
        c = find(ino);
        if (c != NULL && c->ident != (uint64_t)id)
            goto python; /* Python holds it, and it is no longer (or never was) pure */
        if (c == NULL) {
            c = insert(ino);
            if (c == NULL)
                goto python;
            c->parent = parent;
            c->ident = (uint32_t)id;
        }
        c->nlookup++;
        ep.ino = ino;
        ep.attr_timeout = g.timeout;
        fill_stat(ce, ino, &ep.attr);
    } /* else: a negative entry, as operations.lookup answers */
    g.stats[0]++;
    fuse_reply_entry(req, &ep);
    serve_more();
    return;
python:
    pass_on();
    g.lookup(req, parent, name);
}

static void fast_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct rec *r = find(ino);
    const uint8_t *e;
    struct stat st;

    if (g.off || r == NULL || r->ident == 0 || (e = pure_entry(ino, r->ident)) == NULL) {
        pass_on();
        g.getattr(req, ino, fi);
        return;
    }
    fill_stat(e, ino, &st);
    g.stats[1]++;
    fuse_reply_attr(req, &st, g.timeout);
    serve_more();
}

/* Count down the lookups handed out here; returns what is left for Python to forget. */
static uint64_t forget_held(uint64_t ino, uint64_t n)
{
    struct rec *r = find(ino);
    uint64_t mine;

    if (r == NULL)
        return n;
    mine = r->nlookup < n ? r->nlookup : n;
    r->nlookup -= mine;
    if (mine > 0)
        g.stats[2]++;
    if (!r->py) {
        if (r->nlookup == 0)
            erase(r);
        return 0;
    }
    return n - mine;
}

static void fast_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    uint64_t rest = forget_held(ino, nlookup);

    if (rest == 0) {
        fuse_reply_none(req);
        return;
    }
    pass_on();
    g.forget(req, ino, rest);
}

static void fast_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    size_t i, kept = 0;

    for (i = 0; i < count; i++) {
        uint64_t rest = forget_held(forgets[i].ino, forgets[i].nlookup);

        if (rest > 0) {
            forgets[kept].ino = forgets[i].ino;
            forgets[kept++].nlookup = rest;
        }
    }
    if (kept == 0) {
        fuse_reply_none(req);
        return;
    }
    pass_on();
    g.forget_multi(req, kept, forgets);
}

/* Add one directory entry to a READDIRPLUS reply; 0 if it does not fit. */
static int add_entry(fuse_req_t req, size_t size, size_t *pos, const char *name,
                     const uint8_t *e, uint64_t ino, off_t next)
{
    char *buf = (char *)g.reply;
    struct fuse_entry_param ep;
    size_t need;

    memset(&ep, 0, sizeof(ep));
    ep.ino = ino;
    ep.entry_timeout = ep.attr_timeout = g.timeout;
    if (e != NULL) {
        fill_stat(e, ino, &ep.attr);
    } else { /* "..": the kernel takes only its number and type from a listing */
        ep.attr.st_ino = ino;
        ep.attr.st_mode = S_IFDIR;
    }
    need = fuse_add_direntry_plus(req, buf + *pos, size - *pos, name, &ep, next);
    if (need > size - *pos)
        return 0;
    *pos += need;
    return 1;
}

/* A whole listing of a pure lower directory in one reply, as operations.readdir gives
 * it (".", "..", then the children in index order, offsets 1, 2, ...); a listing that
 * does not fit, or one that continues, is Python's (it keeps listings by inode). */
static void fast_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                             struct fuse_file_info *fi)
{
    struct rec *r = find(ino);
    const uint8_t *e, *ce;
    uint64_t first, count, i;
    char name[UINT16_MAX + 1];
    size_t pos = 0;

    if (g.off || r == NULL || fi->fh != 0 || off < 0)
        goto python;
    if (off > 0 && r->listed > 0 && (uint64_t)off >= r->listed) {
        r->listed = 0; /* the end of a listing served here, even if it changed since */
        fuse_reply_buf(req, NULL, 0);
        serve_more();
        return;
    }
    if (off != 0 || r->ident == 0 || (e = pure_entry(ino, r->ident)) == NULL
        || !S_ISDIR(rd32(e + E_MODE)) || size > READ_BUF_SIZE)
        goto python;
    first = rd32(e + E_FIRST_CHILD);
    count = rd32(e + E_CHILD_COUNT);
    if ((ino != 1 && r->parent == 0) || (count > 0 && (first == 0 || first + count - 1 > g.count)))
        goto python;
    if (!add_entry(req, size, &pos, ".", e, ino, 1)
        || !add_entry(req, size, &pos, "..", NULL, ino == 1 ? 1 : r->parent, 2))
        goto python;
    for (i = 0; i < count; i++) {
        uint64_t id = first + i, cino;
        struct rec *c;
        const char *src;
        uint16_t len;

        ce = entry(id);
        cino = rd32(ce + E_LINK_GROUP);
        if (pure_entry(cino, id) == NULL || (src = name_in(ce, &len)) == NULL)
            goto python;
        memcpy(name, src, len);
        name[len] = '\0';
        c = find(cino);
        if (c != NULL && c->ident != id)
            goto python;
        if (!add_entry(req, size, &pos, name, ce, cino, (off_t)(i + 3)))
            goto python;
    }
    /* Everything fits: now hand out the children (the kernel takes a lookup of each). */
    for (i = 0; i < count; i++) {
        uint64_t id = first + i, cino = rd32(entry(id) + E_LINK_GROUP);
        struct rec *c = find(cino);

        if (c == NULL) {
            c = insert(cino);
            if (c == NULL) {
                g.off = 1; /* the reply is built: the kernel gets it; Python answers next */
                break;
            }
            c->parent = ino;
            c->ident = (uint32_t)id;
        }
        c->nlookup++;
    }
    r = find(ino);
    if (r != NULL)
        r->listed = count + 2;
    g.stats[5]++;
    fuse_reply_buf(req, (const char *)g.reply, pos);
    serve_more();
    return;
python:
    pass_on();
    g.readdirplus(req, ino, size, off, fi);
}

/* The entry's path in its layer ("a/b/c", as the merged tree has it: the index merges
 * layers by path) in g.path; 0 if it does not fit or the index is inconsistent. */
static int path_of(uint64_t ident)
{
    size_t pos = PATH_CAP - 1;
    int depth;

    g.path[pos] = '\0';
    for (depth = 0; ident != 1; depth++) {
        const uint8_t *e = entry(ident);
        const char *name;
        uint16_t len;

        if (e == NULL || depth >= MAX_DEPTH || (name = name_in(e, &len)) == NULL
            || (size_t)len + 1 > pos)
            return 0;
        if (depth > 0)
            g.path[--pos] = '/';
        pos -= len;
        memcpy(g.path + pos, name, len);
        ident = rd32(e + E_PARENT);
        if (ident == 0)
            return 0;
    }
    memmove(g.path, g.path + pos, PATH_CAP - pos);
    return g.path[0] != '\0';
}

/* Remember which inode fd `fd` shows, so a copy-up can re-point it; 0 if no memory. */
static int remember_fd(int fd, uint64_t ino)
{
    if ((size_t)fd >= g.fd_cap) {
        size_t cap = g.fd_cap ? g.fd_cap : 256;
        uint64_t *grown;

        while (cap <= (size_t)fd)
            cap *= 2;
        grown = realloc(g.fd_ino, cap * sizeof(*grown));
        if (grown == NULL)
            return 0;
        memset(grown + g.fd_cap, 0, (cap - g.fd_cap) * sizeof(*grown));
        g.fd_ino = grown;
        g.fd_cap = cap;
    }
    g.fd_ino[fd] = ino;
    g.fds_open++;
    return 1;
}

static void close_fd(int fd)
{
    if ((size_t)fd < g.fd_cap && g.fd_ino[fd] != 0) {
        g.fd_ino[fd] = 0;
        g.fds_open--;
    }
    close(fd);
}

/* A read-only open of a pure lower file: opened here, beneath its layer's dir without
 * following symlinks (safeopen.c), as operations.open does. */
static void fast_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct rec *r = find(ino);
    const uint8_t *e;
    uint16_t layer;
    int fd;

    if (g.off || r == NULL || r->ident == 0 || (e = pure_entry(ino, r->ident)) == NULL
        || !S_ISREG(rd32(e + E_MODE)) || (fi->flags & O_ACCMODE) != O_RDONLY
        || (fi->flags & O_TRUNC))
        goto python;
    layer = rd16(e + E_LAYER);
    if (layer >= g.nlayers || !path_of(r->ident))
        goto python;
    fd = imgfs_open_beneath(g.layer_fds[layer], g.path, O_RDONLY | O_NOFOLLOW, 0);
    if (fd < 0)
        goto python; /* Python gives the error (or opens without openat2) */
    if (!remember_fd(fd, ino)) {
        close(fd);
        goto python;
    }
    fi->fh = FH_OPENED_HERE | (uint64_t)fd;
    fi->keep_cache = 1;
    fi->direct_io = 0;
    g.stats[6]++;
    if (fuse_reply_open(req, fi) != 0)
        close_fd(fd); /* the caller is gone: the kernel sends no release */
    serve_more();
    return;
python:
    pass_on();
    g.open(req, ino, fi);
}

static int opened_here(const struct fuse_file_info *fi)
{
    return fi != NULL && (fi->fh & FH_OPENED_HERE) != 0;
}

static void fast_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                      struct fuse_file_info *fi)
{
    ssize_t got;

    if (!opened_here(fi)) {
        pass_on();
        g.read(req, ino, size, off, fi);
        return;
    }
    if (size > READ_BUF_SIZE)
        size = READ_BUF_SIZE;
    got = pread((int)(fi->fh & ~FH_OPENED_HERE), g.reply, size, off);
    if (got < 0)
        fuse_reply_err(req, errno);
    else
        fuse_reply_buf(req, (const char *)g.reply, (size_t)got);
    serve_more();
}

static void fast_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (!opened_here(fi)) {
        pass_on();
        g.release(req, ino, fi);
        return;
    }
    close_fd((int)(fi->fh & ~FH_OPENED_HERE));
    fuse_reply_err(req, 0);
    serve_more();
}

static void fast_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    int fd;

    if (!opened_here(fi)) {
        pass_on();
        g.fsync(req, ino, datasync, fi);
        return;
    }
    fd = (int)(fi->fh & ~FH_OPENED_HERE);
    fuse_reply_err(req, (datasync ? fdatasync(fd) : fsync(fd)) != 0 ? errno : 0);
}

/* Whether a pure lower file or dir has security.capability (1 no, 2 yes, 0 unknown). */
static uint8_t lower_caps(const uint8_t *e, uint64_t ident)
{
    char proc[64];
    uint16_t layer = rd16(e + E_LAYER);
    ssize_t got;
    int fd;

    if (layer >= g.nlayers || !path_of(ident))
        return 0;
    fd = imgfs_open_beneath(g.layer_fds[layer], g.path, O_PATH | O_NOFOLLOW, 0);
    if (fd < 0)
        return 0;
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    got = getxattr(proc, "security.capability", NULL, 0);
    close(fd);
    if (got >= 0)
        return 2;
    return errno == ENODATA ? 1 : 0;
}

/* The getxattr of security.capability that every exec, write and chown sends: ENODATA
 * (what operations.getxattr answers) for a pure lower file without one, and for an upper
 * file whose xattrs Python knows to lack it (Node.no_caps); anything else, Python's. */
static void fast_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    struct rec *r = find(ino);
    const uint8_t *e;
    uint32_t mode;

    if (g.off || r == NULL || strcmp(name, "security.capability") != 0)
        goto python;
    if (r->py && r->no_caps) { /* an upper file Python knows all the xattrs of */
        fuse_reply_err(req, ENODATA);
        serve_more();
        return;
    }
    if (r->ident == 0 || (e = pure_entry(ino, r->ident)) == NULL)
        goto python;
    mode = rd32(e + E_MODE);
    if (!S_ISREG(mode) && !S_ISDIR(mode))
        goto python;
    if (r->caps == 0)
        r->caps = lower_caps(e, r->ident);
    if (r->caps != 1)
        goto python;
    fuse_reply_err(req, ENODATA);
    serve_more();
    return;
python:
    pass_on();
    g.getxattr(req, ino, name, size);
}

/* -- Python's side ------------------------------------------------------------------ */

int imgfs_fast_setup(const uint8_t *base, uint64_t len, void *session, double timeout,
                     long spin_ns, void *const *originals, const int *layer_fds,
                     size_t nlayers)
{
    uint64_t layout[4];

    if (imgfs_index_entries(base, len, layout) != 0)
        return -1;
    if (g.buf == NULL && (g.buf = malloc(READ_BUF_SIZE)) == NULL)
        return -1;
    if (g.reply == NULL && (g.reply = malloc(READ_BUF_SIZE)) == NULL)
        return -1;
    if (g.path == NULL && (g.path = malloc(PATH_CAP)) == NULL)
        return -1;
    free(g.layer_fds);
    if ((g.layer_fds = calloc(nlayers ? nlayers : 1, sizeof(int))) == NULL)
        return -1;
    memcpy(g.layer_fds, layer_fds, nlayers * sizeof(int));
    g.nlayers = nlayers;
    if (g.fd_cap)
        memset(g.fd_ino, 0, g.fd_cap * sizeof(*g.fd_ino));
    g.fds_open = 0;
    g.base = base;
    g.len = len;
    g.count = layout[0];
    g.entries_off = layout[1];
    g.names_off = layout[2];
    g.names_len = layout[3];
    g.se = session;
    g.fd = fuse_session_fd(g.se);
    g.timeout = timeout;
    g.spin_ns = spin_ns > 999999999 ? 999999999 : spin_ns;
    g.busy = sysconf(_SC_NPROCESSORS_ONLN) > 1;
    g.lookup = (lookup_fn)originals[0];
    g.getattr = (getattr_fn)originals[1];
    g.forget = (forget_fn)originals[2];
    g.forget_multi = (forget_multi_fn)originals[3];
    g.readdirplus = (readdir_fn)originals[4];
    g.open = (open_fn)originals[5];
    g.read = (read_fn)originals[6];
    g.release = (open_fn)originals[7];
    g.fsync = (fsync_fn)originals[8];
    g.getxattr = (getxattr_fn)originals[9];
    return 0;
}

void *imgfs_fast_callback(int which)
{
    static void *const callbacks[] = {
        (void *)fast_lookup,      (void *)fast_getattr, (void *)fast_forget,
        (void *)fast_forget_multi, (void *)fast_readdirplus, (void *)fast_open,
        (void *)fast_read,        (void *)fast_release, (void *)fast_fsync,
        (void *)fast_getxattr,
    };

    if (which < 0 || (size_t)which >= sizeof(callbacks) / sizeof(callbacks[0]))
        return NULL;
    return callbacks[which];
}

int imgfs_fast_py_set(uint64_t ino, uint32_t ident, uint64_t parent, int no_caps)
{
    struct rec *r = find(ino);

    if (r == NULL && (r = insert(ino)) == NULL) {
        g.off = 1; /* out of memory: from now on every answer is Python's */
        return -1;
    }
    r->py = 1;
    r->parent = parent;
    r->no_caps = no_caps != 0;
    if (ident != r->ident)
        r->caps = 0;
    r->ident = (ident != 0 && pure_entry(ino, ident) != NULL) ? ident : 0;
    return r->ident != 0;
}

uint64_t imgfs_fast_py_drop(uint64_t ino)
{
    struct rec *r = find(ino);
    uint64_t n;

    if (r == NULL || !r->py)
        return 0;
    n = r->nlookup;
    if (n == 0)
        erase(r);
    else
        r->nlookup = 0; /* Python keeps the node, with these lookups as its own */
    return n;
}

int imgfs_fast_take(uint64_t ino, uint32_t *ident, uint64_t *parent, uint64_t *nlookup)
{
    struct rec *r = find(ino);

    if (r == NULL || r->py)
        return 0;
    *ident = r->ident;
    *parent = r->parent;
    *nlookup = r->nlookup;
    r->py = 1;
    r->nlookup = 0;
    return 1;
}

size_t imgfs_fast_held(uint64_t *out, size_t max)
{
    size_t i, n = 0;

    for (i = 0; i < g.cap; i++) {
        if (g.tab[i].ino == 0 || g.tab[i].py)
            continue;
        if (n < max)
            out[n] = g.tab[i].ino;
        n++;
    }
    return n;
}

int imgfs_fast_reopen(uint64_t ino, int upper_fd)
{
    size_t fd, seen = 0;
    int n = 0;

    for (fd = 0; fd < g.fd_cap && seen < g.fds_open; fd++) {
        if (g.fd_ino[fd] == 0)
            continue;
        seen++;
        if (g.fd_ino[fd] == ino && (upper_fd < 0 || dup3(upper_fd, (int)fd, O_CLOEXEC) >= 0))
            n++;
    }
    return n;
}

int imgfs_fast_known(uint64_t ino)
{
    struct rec *r = find(ino);

    return r == NULL ? -1 : r->py ? 0 : 1;
}

void imgfs_fast_stats(uint64_t out[7])
{
    memcpy(out, g.stats, sizeof(g.stats));
}
