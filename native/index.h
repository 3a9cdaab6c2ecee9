/* Merged lower index lookups (see unionfs/index/format.py for the file format).
 * cffi reads these prototypes; unionfs/index/lookup.py is the pure-Python twin. */
#ifndef IMGFS_INDEX_H
#define IMGFS_INDEX_H

#include <stddef.h>
#include <stdint.h>

/* FNV-1a 64 over parent (u32 little-endian) then name, finished with murmur3's fmix64. */
uint64_t imgfs_index_hash(uint64_t parent, const char *name, size_t namelen);

/* Id of the child `name` of directory `parent` in the index image at base[0..len),
 * or 0 if there is none.  Every read is bounds-checked against len, so a corrupt or
 * truncated image gives 0 or a wrong id, never a crash. */
int64_t imgfs_index_lookup(const uint8_t *base, uint64_t len, uint64_t parent,
                           const char *name, size_t namelen);

/* 0, with out = {entry count, records' offset, names' offset, names' length}, if the
 * header is one every read can trust to stay within base[0..len) (the same check
 * imgfs_index_lookup makes), else -1. */
int imgfs_index_entries(const uint8_t *base, uint64_t len, uint64_t out[4]);

#endif
