"""Data: uint8 image sets, the dataset registry and the defender's clean subsets."""
from bench.data.imageset import DataBundle, ImageSet

__all__ = ["DataBundle", "ImageSet"]
