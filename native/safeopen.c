/* openat2 and syncfs wrappers that return -errno, so Python needs no ctypes/errno juggling. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "safeopen.h"

#if defined(__has_include)
#if __has_include(<linux/openat2.h>)
#include <linux/openat2.h>
#define IMGFS_HAVE_OPENAT2_H 1
#endif
#endif

#ifndef IMGFS_HAVE_OPENAT2_H
/* Kernel headers older than 5.6: the ABI is fixed, so define it ourselves. */
struct open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};
#define RESOLVE_NO_MAGICLINKS 0x02
#define RESOLVE_NO_SYMLINKS 0x04
#define RESOLVE_BENEATH 0x08
#endif

#ifndef SYS_openat2
#define SYS_openat2 437 /* the unified syscall number (every architecture but alpha) */
#endif

int imgfs_open_beneath(int dirfd, const char *path, int flags, int mode)
{
    struct open_how how;
    long fd;

    memset(&how, 0, sizeof how);
    /* Cast through unsigned int: a negative int must not sign-extend into the u64. */
    how.flags = (uint64_t)(unsigned int)(flags | O_CLOEXEC);
    /* open(2) ignores and masks the mode; openat2 rejects stray bits with EINVAL. */
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE)
        how.mode = (uint64_t)((unsigned int)mode & 07777u);
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    return fd < 0 ? -errno : (int)fd;
}

int imgfs_syncfs(int fd)
{
    return syncfs(fd) < 0 ? -errno : 0;
}
