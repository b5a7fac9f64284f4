"""Backbone activations of uploaded images, kept for later prompts: an LRU bounded in entries and bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CachedImage:
    """One image's backbone activations (each layer (1, tokens, width)) and its (height, width)."""

    features: list[torch.Tensor]
    size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(layer.numel() * layer.element_size() for layer in self.features)


class FeatureCache:
    """Thread-safe LRU of `CachedImage` by image id; holds at most `max_images` entries and `max_bytes` bytes
    (an entry larger than `max_bytes` on its own is not kept)."""

    def __init__(self, max_images: int, max_bytes: int) -> None:
        self.max_images = max_images
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, image_id: str) -> CachedImage | None:
        with self._lock:
            entry = self._entries.get(image_id)
            if entry is not None:
                self._entries.move_to_end(image_id)
            return entry

    def put(self, image_id: str, entry: CachedImage) -> None:
        size = entry.nbytes
        with self._lock:
            old = self._entries.pop(image_id, None)
            if old is not None:
                self._bytes -= old.nbytes
            if size > self.max_bytes:
                return
            self._entries[image_id] = entry
            self._bytes += size
            while len(self._entries) > self.max_images or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def __contains__(self, image_id: str) -> bool:
        with self._lock:
            return image_id in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes
