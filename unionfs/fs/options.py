"""The FUSE mount options imgfs passes through. A module of its own, free of imports, so
that `imgfs-overlay` can check its options without loading the daemon's code."""

# Mount options passed through to the FUSE mount (`imgfs mount -o`, `imgfs-overlay -o`);
# anything else is refused with a clear message rather than by libfuse with an obscure one.
FUSE_OPTIONS = frozenset(
    {
        "allow_other", "allow_root", "ro", "rw", "default_permissions", "suid", "nosuid",
        "dev", "nodev", "exec", "noexec", "atime", "noatime", "relatime", "norelatime",
        "strictatime", "nostrictatime", "diratime", "nodiratime", "sync", "async", "dirsync",
    }
)  # fmt: skip
FUSE_VALUE_OPTIONS = ("context=", "fscontext=", "defcontext=", "rootcontext=", "max_read=")
