"""unionfs: container images as stacks of layers, mounted with FUSE (command: imgfs)."""

__version__ = "0.1.0"
