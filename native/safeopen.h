/* Safe path resolution for unionfs (see unionfs/safeio.py); cffi reads the same two prototypes. */
#ifndef IMGFS_SAFEOPEN_H
#define IMGFS_SAFEOPEN_H

/* openat2(dirfd, path, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS);
 * O_CLOEXEC is always added.  Returns the new fd, or -errno (-ENOSYS without openat2). */
int imgfs_open_beneath(int dirfd, const char *path, int flags, int mode);

/* syncfs(2) on the filesystem holding fd.  Returns 0 or -errno. */
int imgfs_syncfs(int fd);

#endif
