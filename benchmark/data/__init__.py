"""Data: manifests, image decoding and caching, splits, synthetic phantoms, augmentation."""
