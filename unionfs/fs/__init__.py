"""The FUSE union filesystem: pyfuse3 operations over a merged lower index and an upper dir."""
