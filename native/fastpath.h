/* The daemon's C fast path: requests about entries that only the lower layers hold
 * (lookups, attributes, listings, forgets, read-only opens and their reads, the
 * security.capability probe), answered from the mmapped merged index without entering
 * Python (unionfs/fs/fastpath.py installs it; every other request goes to pyfuse3 as
 * before).
 *
 * The map holds every inode Python's NodeTable knows ("py"; "ident" set when it is a pure
 * lower entry, so requests about it and lookups in it can still be answered here) and
 * every inode only this code has handed to the kernel.  For each it counts the lookups
 * handed out here; a FORGET takes from that count first, Python adopts an inode only this
 * code holds with imgfs_fast_take, and gets the count of one it holds when its own count
 * runs out (imgfs_fast_py_drop).  All of it runs on the daemon's one trio thread, inside
 * pyfuse3's fuse_session_process_buf calls or in cffi calls from Python: no locking. */
#ifndef IMGFS_FASTPATH_H
#define IMGFS_FASTPATH_H

#include <stddef.h>
#include <stdint.h>

/* Start answering: the index image, the live session, the entry/attr timeout, the
 * callbacks the session holds now for everything the fast path leaves to Python (in the
 * order of imgfs_fast_callback's numbers), and the layers' dir fds by index layer number.
 * spin_ns: how long to wait for a following request before going back to trio (0: never
 * wait).  Returns 0, or -1 if the index header is unusable (nothing changes then). */
int imgfs_fast_setup(const uint8_t *base, uint64_t len, void *session, double timeout,
                     long spin_ns, void *const *originals, const int *layer_fds,
                     size_t nlayers);

/* The callbacks to put into the session's table. */
void *imgfs_fast_callback(int which);
/* 0 lookup, 1 getattr, 2 forget, 3 forget_multi, 4 readdirplus, 5 open, 6 read,
 * 7 release, 8 fsync (read-only opens of pure lower files are served here whole),
 * 9 getxattr (security.capability of pure lower files, and of upper files Python knows) */

/* Python knows `ino`, in directory `parent`; ident != 0 if it shows lower entry `ident`
 * and nothing else (the entry is checked here: same inode number, not a hard link);
 * no_caps if it is an upper file Python knows to have no security.capability.
 * Returns 1 if it counts as pure.  This code may still hand out lookups of a pure inode
 * Python holds (counted here, forgotten here first). */
int imgfs_fast_py_set(uint64_t ino, uint32_t ident, uint64_t parent, int no_caps);

/* Python's own lookup count of `ino` reached 0: returns the lookups this code handed out
 * that the kernel still holds (Python keeps the node with that count), or 0 (then the
 * inode is gone from the map). */
uint64_t imgfs_fast_py_drop(uint64_t ino);

/* Hand an inode this code answered for to Python: its entry, parent inode and lookup
 * count.  Returns 0 if this code holds no such inode. */
int imgfs_fast_take(uint64_t ino, uint32_t *ident, uint64_t *parent, uint64_t *nlookup);

/* Up to `max` inodes held here (not by Python) into out; returns how many there are. */
size_t imgfs_fast_held(uint64_t *out, size_t max);

/* Lower file `ino` was copied up: the files opened here on it read `upper_fd` (its upper
 * file, open read-only) from now on, as kernel overlayfs re-opens them.  Returns how many
 * (with upper_fd < 0: how many there are, nothing changed). */
int imgfs_fast_reopen(uint64_t ino, int upper_fd);

/* -1: `ino` is not in the map; 0: Python holds it; 1: this code does (tests). */
int imgfs_fast_known(uint64_t ino);

/* Counters: [0] lookups answered, [1] getattrs answered, [2] forgets answered,
 * [3] requests passed to Python by the fast handlers, [4] requests read in C,
 * [5] listings answered, [6] files opened. */
void imgfs_fast_stats(uint64_t out[7]);

#endif
