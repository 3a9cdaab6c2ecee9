"""The image store: an OCI image layout plus unpacked layers, guarded by file locks."""
