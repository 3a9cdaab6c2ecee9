/* Hash-table lookup in a merged lower index (format: unionfs/index/format.py).
 *
 * The image is untrusted input (a file on disk that the daemon mmaps), so the header is
 * re-validated on every call and every read is bounds-checked: a few compares, far cheaper
 * than the Python call that got us here.  Multi-byte fields are little-endian and read
 * byte-wise, which compilers turn into plain loads on little-endian machines. */
#include <string.h>

#include "index.h"
#include "le.h"

#define HEADER_SIZE 128u
#define ENTRY_SIZE 104u
#define SLOT_SIZE 8u
#define VERSION 1u

/* Header field offsets. */
#define H_VERSION 8
#define H_ENTRY_SIZE 12
#define H_COUNT 24
#define H_ENTRIES_OFF 40
#define H_HASH_OFF 48
#define H_HASH_SLOTS 56
#define H_NAMES_OFF 80
#define H_NAMES_LEN 88

/* Entry record field offsets. */
#define E_NAME_OFF 48
#define E_PARENT 56
#define E_NAME_LEN 96

/* off + count * size lies within len, without overflowing. */
static int region_ok(uint64_t len, uint64_t off, uint64_t count, uint64_t size)
{
    return off <= len && count <= (len - off) / size;
}

uint64_t imgfs_index_hash(uint64_t parent, const char *name, size_t namelen)
{
    const uint64_t prime = 0x100000001b3ULL;
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t i;

    for (i = 0; i < 4; i++) {
        h ^= (parent >> (8 * i)) & 0xff;
        h *= prime;
    }
    for (i = 0; i < namelen; i++) {
        h ^= (uint8_t)name[i];
        h *= prime;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* The header's layout if it is one every read can trust to stay in bounds. */
struct layout {
    uint64_t count, entries_off, hash_off, slots, names_off, names_len;
};

static int layout_of(const uint8_t *base, uint64_t len, struct layout *l)
{
    if (base == NULL || len < HEADER_SIZE || memcmp(base, "IMGFSIDX", 8) != 0)
        return -1;
    if (rd32(base + H_VERSION) != VERSION || rd32(base + H_ENTRY_SIZE) != ENTRY_SIZE)
        return -1;
    l->count = rd64(base + H_COUNT);
    l->entries_off = rd64(base + H_ENTRIES_OFF);
    l->hash_off = rd64(base + H_HASH_OFF);
    l->slots = rd64(base + H_HASH_SLOTS);
    l->names_off = rd64(base + H_NAMES_OFF);
    l->names_len = rd64(base + H_NAMES_LEN);
    if (l->count == 0 || l->count > UINT32_MAX || l->slots == 0 || (l->slots & (l->slots - 1)) != 0)
        return -1;
    if (!region_ok(len, l->entries_off, l->count, ENTRY_SIZE)
        || !region_ok(len, l->hash_off, l->slots, SLOT_SIZE)
        || !region_ok(len, l->names_off, l->names_len, 1))
        return -1;
    return 0;
}

int imgfs_index_entries(const uint8_t *base, uint64_t len, uint64_t out[4])
{
    struct layout l;

    if (layout_of(base, len, &l) != 0)
        return -1;
    out[0] = l.count;
    out[1] = l.entries_off;
    out[2] = l.names_off;
    out[3] = l.names_len;
    return 0;
}

int64_t imgfs_index_lookup(const uint8_t *base, uint64_t len, uint64_t parent,
                           const char *name, size_t namelen)
{
    struct layout l;
    uint64_t mask, i, probes;
    uint64_t h;
    uint32_t tag;

    if (layout_of(base, len, &l) != 0)
        return 0;
    if (parent == 0 || parent > l.count || namelen == 0 || namelen > UINT16_MAX)
        return 0;

    h = imgfs_index_hash(parent, name, namelen);
    tag = (uint32_t)(h >> 32);
    mask = l.slots - 1;
    for (i = h & mask, probes = 0; probes < l.slots; probes++, i = (i + 1) & mask) {
        const uint8_t *slot = base + l.hash_off + i * SLOT_SIZE;
        const uint8_t *rec;
        uint64_t id = rd32(slot), name_off;

        if (id == 0)
            return 0;
        if (rd32(slot + 4) != tag || id > l.count)
            continue;
        rec = base + l.entries_off + (id - 1) * ENTRY_SIZE;
        if (rd32(rec + E_PARENT) != parent || rd16(rec + E_NAME_LEN) != namelen)
            continue;
        name_off = rd64(rec + E_NAME_OFF);
        if (!region_ok(l.names_len, name_off, namelen, 1))
            continue;
        if (memcmp(base + l.names_off + name_off, name, namelen) == 0)
            return (int64_t)id;
    }
    return 0;
}
