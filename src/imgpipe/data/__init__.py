"""Images in: the sources, the in-memory and on-disk image sets, preparing the splits, decoding image files."""
