"""Layer tars: compression detection, safe unpacking into kernel overlayfs format."""
