"""Dynamic batching: requests from different clients share model passes.

One worker thread owns the `Predictor`. It takes the oldest waiting request, then, while other requests are on
their way in, waits up to the batch window for more (at most `max_batch`). The batch then runs as one backbone
pass over the images whose features are not cached yet and one decoder pass over every prompt of every request
(each prompt paired with its own image). If a batch fails, its requests are retried one by one, so a bad request
fails alone. The queue is bounded: `submit` refuses work beyond `max_queue` waiting requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..predictor import Prediction, Predictor
from ..prompts import Prompt
from .cache import CachedImage, FeatureCache
from .errors import ApiError

log = logging.getLogger("clipseg.serve")


class QueueFull(Exception):
    """The bounded queue holds `max_queue` requests already."""


@dataclass
class Work:
    """One request for the model: an image (by id, with its pixels when it may need the backbone) and prompts
    (none: only compute and cache the features), `names` one per prompt."""

    image_id: str
    image: Image.Image | None
    prompts: list[Prompt] = field(default_factory=list)
    names: tuple[str, ...] = ()
    negatives: list[Prompt] = field(default_factory=list)
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Outcome:
    """What a request gets back: the image's size, the prediction (None without prompts) and the number of
    requests that shared its batch."""

    size: tuple[int, int]
    prediction: Prediction | None
    batch_size: int


class Batcher:
    """The worker thread and its bounded queue (see the module docstring)."""

    def __init__(
        self,
        predictor: Predictor,
        cache: FeatureCache,
        *,
        max_batch: int,
        max_queue: int,
        window_s: float,
        on_batch: Callable[[int], None] = lambda size: None,
        on_depth: Callable[[int], None] = lambda depth: None,
    ) -> None:
        self.predictor = predictor
        self.cache = cache
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.window_s = window_s
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._queue: deque[Work] = deque()
        self._incoming = 0
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="clipseg-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout=10)

    def expect(self) -> None:
        """A request is on its way in (reading its upload): worth waiting the batch window for."""
        with self._condition:
            self._incoming += 1

    def arrived(self) -> None:
        """The request announced with `expect` was submitted or gave up."""
        with self._condition:
            self._incoming -= 1
            self._condition.notify_all()

    def submit(self, work: Work) -> Future:
        """Queue `work`; its future gets an `Outcome` or the exception that failed it.

        Raises:
            QueueFull: `max_queue` requests are waiting already.
        """
        with self._condition:
            if len(self._queue) >= self.max_queue:
                raise QueueFull
            self._queue.append(work)
            self._on_depth(len(self._queue))
            self._condition.notify_all()
        return work.future

    @property
    def depth(self) -> int:
        with self._condition:
            return len(self._queue)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            # Requests that timed out while waiting were cancelled by their handler: skip them.
            live = [work for work in batch if work.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                self._on_batch(len(live))
                self._run(live)
            except Exception as error:  # the worker must outlive any batch: fail what is left, keep going
                log.exception("batch failed")
                for work in live:
                    if not work.future.done():
                        work.future.set_exception(error)

    def _next_batch(self) -> list[Work] | None:
        with self._condition:
            while not self._queue and not self._stopping:
                self._condition.wait()
            if self._stopping:
                return None
            batch = [self._queue.popleft()]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if self._incoming <= 0 or remaining <= 0:
                    break
                self._condition.wait(remaining)
            self._on_depth(len(self._queue))
            return batch

    def _run(self, batch: list[Work]) -> None:
        try:
            outcomes = self._process(batch)
        except Exception as error:
            if len(batch) == 1:
                if not isinstance(error, ApiError):
                    log.exception("model pass failed")
                batch[0].future.set_exception(error)
                return
            for work in batch:  # find the request that broke the batch; the others still get their answer
                self._run([work])
            return
        for work, outcome in zip(batch, outcomes, strict=True):
            work.future.set_result(outcome)

    def _process(self, batch: list[Work]) -> list[Outcome]:
        images = self._features(batch)
        with_prompts = [work for work in batch if work.prompts]
        predictions: dict[int, Prediction] = {}
        if with_prompts:
            ids = list(dict.fromkeys(work.image_id for work in with_prompts))
            features = [torch.cat(layers) for layers in zip(*(images[i].features for i in ids), strict=True)]
            everything = [prompt for work in with_prompts for prompt in (*work.prompts, *work.negatives)]
            conditionals = self.predictor.encode_prompts(everything)
            image_index = torch.tensor(
                [ids.index(work.image_id) for work in with_prompts for _ in (*work.prompts, *work.negatives)]
            )
            logits = self.predictor.decode(features, conditionals, image_index)
            start = 0
            for work in with_prompts:
                count, positive = len(work.prompts) + len(work.negatives), len(work.prompts)
                own = logits[start : start + count]
                start += count
                size = images[work.image_id].size
                predictions[id(work)] = Prediction(work.names, own[:positive], own[positive:], size)
        return [Outcome(images[work.image_id].size, predictions.get(id(work)), len(batch)) for work in batch]

    def _features(self, batch: list[Work]) -> dict[str, CachedImage]:
        """The cached features of every image in the batch; the missing ones in one backbone pass."""
        found: dict[str, CachedImage] = {}
        missing: dict[str, Image.Image] = {}
        for work in batch:
            if work.image_id in found or work.image_id in missing:
                continue
            cached = self.cache.get(work.image_id)
            if cached is not None:
                found[work.image_id] = cached
            elif work.image is not None:
                missing[work.image_id] = work.image
            else:
                raise ApiError(404, f"image_id {work.image_id} is unknown or was evicted: upload the image again")
        if missing:
            computed = self.predictor.extract_features(list(missing.values()))
            for index, (image_id, image) in enumerate(missing.items()):
                # Own copies: a view would keep the whole batch's activations alive in the cache.
                own = [layer[index : index + 1].clone() for layer in computed]
                entry = CachedImage(own, (image.height, image.width))
                self.cache.put(image_id, entry)
                found[image_id] = entry
        return found
