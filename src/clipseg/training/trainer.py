"""The training loop: AdamW + per-step cosine schedule on the decoder of a frozen CLIP, BCE with logits.

    from clipseg.training.trainer import Trainer
    from clipseg.training.config import load_config

    result = Trainer(load_config("configs/train/rd64-pc-plus.yaml", ["data.root=/data/phrasecut"])).train()
    model = clipseg.load_model(result.model_dir)

One process or many (`torchrun --nproc_per_node N -m clipseg.cli train ...`): the decoder is wrapped in
DistributedDataParallel, each process reads its slice of every global batch, and rank 0 writes all files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from .. import __version__
from ..calibration import choose_thresholds
from ..device import resolve_device
from ..fileio import write_text
from ..model.clipseg import CLIPSeg
from ..thresholds import Thresholds
from .autocast import autocast, resolve_precision
from .checkpoint import (
    CHECKPOINTS_DIR,
    Checkpoint,
    capture_rng,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    restore_rng,
    staged_directory,
    write_checkpoint,
)
from .conditionals import conditional_vectors
from .config import RESUMABLE_OVERRIDES, TrainConfig, changed_keys
from .data import (
    SKIPPED_KEY,
    BadSampleError,
    EpochIndexed,
    GlobalBatchSampler,
    build_training_dataset,
    build_validation_dataset,
)
from .distributed import DistributedContext, local_rank_from_environment
from .metrics_log import MetricsLog
from .model import build_model, frozen_fingerprint, trainable_parameters
from .run_log import LossWindow, TrainingProgress
from .validation import ValidationResult, evaluate

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
CONFIG_FILE = "config.yaml"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the step was not applied and nothing was saved."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced.

    Attributes:
        step: the last completed step (= optim.max_iterations).
        loss: mean training loss over the last logging window.
        model_dir: the exported model (`clipseg.load_model(model_dir)`); None on processes other than rank 0.
        checkpoint: the final training checkpoint (None on processes other than rank 0).
        validation: the last validation, if the run has validation data.
        already_complete: the run had reached optim.max_iterations before (a resumed finished run).
    """

    step: int
    loss: float
    model_dir: Path | None
    checkpoint: Path | None
    validation: ValidationResult | None
    already_complete: bool = False


class _DecoderStep(nn.Module):
    """The trained part of a step as one module, which is what DistributedDataParallel wraps:
    CLIP features and conditional vectors -> logits."""

    def __init__(self, model: CLIPSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: list[torch.Tensor], conditional: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        return self.model.decode(features, conditional, output_size=output_size)


class Trainer:
    """Trains the decoder of the model `config.model` describes on `config.data` (or on the given datasets).

    Args:
        config: the run's settings.
        train_dataset: a map-style dataset of the training sample contract to use instead of `config.data`
            (datasets with a `set_epoch` method get the epoch of every item, see `GlobalBatchSampler`).
        val_dataset: validation samples instead of `config.data.val`.
        checkpoint: continue from this checkpoint (see `Trainer.resume`).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.config = config
        try:
            self.device = resolve_device(config.run.device, local_rank=local_rank_from_environment())
        except ValueError as error:
            raise ValueError(f"run.device: {error}") from None
        self.distributed = DistributedContext.from_environment(self.device.type)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.output_dir = config.output_dir
        self.checkpoints_dir = self.output_dir / CHECKPOINTS_DIR
        if checkpoint is None and list_checkpoints(self.checkpoints_dir):
            raise FileExistsError(
                f"{self.output_dir} already holds checkpoints: continue with --resume {self.output_dir}, "
                "or choose another run.output_dir"
            )
        seed = config.run.seed
        # The data first: a wrong dataset location is reported before the model (and CLIP's weights) is loaded.
        self.train_dataset = train_dataset if train_dataset is not None else build_training_dataset(config.data, seed)
        self.val_dataset = val_dataset if val_dataset is not None else build_validation_dataset(config.data, seed)
        self.model = build_model(config.model, seed, config.data.image_size).to(self.device)
        self.fingerprint = frozen_fingerprint(self.model)
        self.parameters = trainable_parameters(self.model)
        self.optimizer = torch.optim.AdamW(
            self.parameters.values(),
            lr=config.optim.lr,
            betas=config.optim.betas,
            eps=config.optim.eps,
            weight_decay=config.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=config.optim.max_iterations, eta_min=config.optim.lr_min
        )
        self.autocast_dtype = resolve_precision(config.optim.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        decoder_step = _DecoderStep(self.model)
        if self.distributed.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            decoder_step = DistributedDataParallel(decoder_step, device_ids=device_ids)
        self.decoder_step = decoder_step
        self.step = 0
        self.bad_samples = 0
        self.window = LossWindow(config.optim.batch_size)
        self.last_checkpoint: Path | None = None
        _seed_everything(seed + self.distributed.rank)
        if checkpoint is not None:
            self._restore(checkpoint)

    @classmethod
    def resume(
        cls,
        checkpoint: str | Path,
        *,
        config: TrainConfig | None = None,
        overrides: Iterable[str] = (),
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
    ) -> Trainer:
        """Continue a run exactly where `checkpoint` (a ``step-*`` directory or a run directory) left off.

        The run's settings come from the checkpoint; `config` (e.g. the YAML file again) and `overrides` may only
        change settings that do not affect the weights (`RESUMABLE_OVERRIDES`: logging, checkpointing,
        validation, workers, device). Output goes to the checkpoint's run directory unless run.output_dir is set.
        """
        saved_checkpoint = read_checkpoint(checkpoint)
        saved = TrainConfig.from_dict(saved_checkpoint.metadata["train_config"])
        base = saved if config is None else config
        if base.run.output_dir is None:
            run_dir = str(saved_checkpoint.path.parent.parent)
            base = dataclasses.replace(base, run=dataclasses.replace(base.run, output_dir=run_dir))
        resumed = base.with_overrides(overrides)
        forbidden = [key for key in changed_keys(saved, resumed) if key not in RESUMABLE_OVERRIDES]
        if forbidden:
            raise ValueError(
                f"cannot change {', '.join(forbidden)} when resuming from {saved_checkpoint.path} "
                "(start a new run, e.g. with model.init pointing to an exported model, to train differently)"
            )
        return cls(resumed, train_dataset=train_dataset, val_dataset=val_dataset, checkpoint=saved_checkpoint)

    # ----------------------------------------------------------------------------------------------- the loop

    def train(self) -> TrainResult:
        """Run from the current step to optim.max_iterations: log, validate, checkpoint, then export the model."""
        config, main = self.config, self.distributed.is_main
        total = config.optim.max_iterations
        metrics_log = None
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.output_dir / CONFIG_FILE, config.to_yaml())
            resumed_from = self.step if self.last_checkpoint is not None else None
            metrics_log = MetricsLog(self.output_dir, resume_step=resumed_from, tensorboard=config.run.tensorboard)
        show_progress = main and (config.run.progress if config.run.progress is not None else sys.stderr.isatty())
        if self.step >= total and self.last_checkpoint is not None:
            return self._already_complete(metrics_log)
        progress = TrainingProgress(total, self.step, enabled=show_progress)
        batches = self._batches()
        self.model.decoder.train()
        window = self.window
        window.restart_clock()
        last_validation = None
        try:
            while self.step < total:
                lr = self.optimizer.param_groups[0]["lr"]
                batch = next(batches)
                self._count_bad_samples(batch.pop(SKIPPED_KEY, ()))
                loss = self._train_step(batch)
                self.step += 1
                window.add(loss)
                progress.update(self.step, loss, window.throughput())
                if self.step % config.run.log_every == 0 or self.step == total:
                    record = {**window.flush(lr), "bad_samples": self.bad_samples}
                    if metrics_log is not None:
                        metrics_log.write("train", self.step, record)
                    logger.debug("step %d: %s", self.step, record)
                if self._validation_due():
                    last_validation = self.validate()
                    if metrics_log is not None:
                        metrics_log.write("validation", self.step, last_validation.summary())
                        logger.info("validation at step %d: %s", self.step, _brief(last_validation))
                if self.step % config.run.checkpoint_every == 0 or self.step == total:
                    self.save_checkpoint(loss)
        finally:
            progress.close()
            if metrics_log is not None:
                metrics_log.close()
        if main:
            self.model.thresholds = self.calibrated_thresholds(last_validation)
        model_dir = self.export(self.output_dir / MODEL_DIR) if main else None
        self.distributed.barrier()
        return TrainResult(
            step=self.step,
            loss=window.last_mean,
            model_dir=model_dir,
            checkpoint=self.last_checkpoint if main else None,
            validation=last_validation,
        )

    def _already_complete(self, metrics_log: MetricsLog | None) -> TrainResult:
        """Resuming a finished run: nothing to train; the model is exported if an interruption left it out."""
        if metrics_log is not None:
            metrics_log.close()
        model_dir = None
        if self.distributed.is_main:
            model_dir = self.output_dir / MODEL_DIR
            if not model_dir.is_dir():
                self.export(model_dir)
        return TrainResult(
            step=self.step,
            loss=self.window.last_mean,
            model_dir=model_dir,
            checkpoint=self.last_checkpoint if self.distributed.is_main else None,
            validation=None,
            already_complete=True,
        )

    def _count_bad_samples(self, problems: Iterable[str]) -> None:
        """Warn about each training sample that was skipped as unreadable; stop past data.max_bad_samples."""
        for problem in (line for text in problems for line in text.splitlines() if line):
            self.bad_samples += 1
            logger.warning("skipped an unreadable training sample (%d so far): %s", self.bad_samples, problem)
            limit = self.config.data.max_bad_samples
            if self.bad_samples > limit:
                raise BadSampleError(
                    f"training stopped at step {self.step + 1}: {self.bad_samples} unreadable training samples, more "
                    f"than data.max_bad_samples = {limit} (the last: {problem}); fix the data or raise the limit"
                )

    def _batches(self) -> Iterator[dict[str, Any]]:
        sampler = GlobalBatchSampler(
            len(self.train_dataset),
            self.config.optim.batch_size,
            rank=self.distributed.rank,
            world_size=self.distributed.world_size,
            seed=self.config.run.seed,
            start_step=self.step,
            order=self.config.data.order,
            groups=getattr(self.train_dataset, "image_keys", None),
        )
        workers = self.config.data.num_workers
        loader = DataLoader(
            EpochIndexed(self.train_dataset, skip_bad=True),
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            # Its own generator: creating the loader's iterator must not consume the global RNG (exact resume).
            generator=torch.Generator().manual_seed(self.config.run.seed),
            persistent_workers=workers > 0,
        )
        return iter(loader)

    def _train_step(self, batch: Mapping[str, Any]) -> float:
        """One optimiser step on a batch; returns the loss averaged over all processes."""
        images = batch["image"].to(self.device, non_blocking=True)
        targets = batch["target"].to(self.device, non_blocking=True)
        with autocast(self.device, self.autocast_dtype):
            conditional = conditional_vectors(self.model, batch)
            with torch.no_grad():  # CLIP is frozen: no graph through the backbone
                features = self.model.extract_features(images)
            logits = self.decoder_step(features, conditional, tuple(images.shape[-2:]))
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
        mean_loss = float(self.distributed.mean(loss.detach()))
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(self._non_finite_message(mean_loss))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.optim.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.parameters.values(), self.config.optim.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return mean_loss

    def _non_finite_message(self, loss: float) -> str:
        where = (
            f"the last good checkpoint is {self.last_checkpoint} (continue with --resume {self.last_checkpoint})"
            if self.last_checkpoint is not None
            else "no checkpoint had been written yet"
        )
        return (
            f"training stopped: the loss is {loss} at step {self.step + 1}; the step was not applied and nothing was "
            f"saved; {where}. Try a lower optim.lr, optim.precision=fp32 or bf16, or check the data"
        )

    def _validation_due(self) -> bool:
        if self.val_dataset is None:
            return False
        every, total = self.config.run.val_every, self.config.optim.max_iterations
        return (every is not None and self.step % every == 0) or self.step == total

    def validate(self) -> ValidationResult:
        """Score the current model on the validation data (every process takes a share)."""
        if self.val_dataset is None:
            raise ValueError("no validation data: set data.val or pass val_dataset")
        return evaluate(
            self.model,
            self.val_dataset,
            batch_size=self.config.run.val_batch_size,
            autocast_dtype=self.autocast_dtype,
            max_batches=self.config.run.val_max_batches,
            num_workers=self.config.data.num_workers,
            distributed=self.distributed,
        )

    # --------------------------------------------------------------------------------- checkpoints, export

    def save_checkpoint(self, loss: float) -> Path | None:
        """Write a checkpoint of the current step (rank 0; every process must call it, RNG states are gathered)."""
        rng_states = self.distributed.gather(capture_rng(self.device))
        if not self.distributed.is_main:
            return None
        path = write_checkpoint(
            self.checkpoints_dir,
            self.step,
            weights={name: parameter.detach() for name, parameter in self.parameters.items()},
            training_state={
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_states,
                "loss_window": self.window.state(),
                "bad_samples": self.bad_samples,
            },
            metadata={
                "world_size": self.distributed.world_size,
                "loss": loss,
                "frozen_fingerprint": self.fingerprint,
                "train_config": self.config.to_dict(),
                "model_config": self.model.config.to_dict(),
                "clipseg_version": __version__,
                "torch_version": torch.__version__,
            },
        )
        prune_checkpoints(self.checkpoints_dir, self.config.run.keep_checkpoints)
        self.last_checkpoint = path
        logger.info("checkpoint written: %s", path)
        return path

    def _restore(self, checkpoint: Checkpoint) -> None:
        if checkpoint.metadata.get("frozen_fingerprint") != self.fingerprint:
            raise ValueError(
                f"{checkpoint.path}: the frozen CLIP weights differ from those this run was trained on "
                "(did the file behind model.clip or model.init change?)"
            )
        weights = checkpoint.weights()
        if set(weights) != set(self.parameters):
            raise ValueError(f"{checkpoint.path}: its trained weights do not match the model's decoder")
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(weights[name])
        state = checkpoint.training_state()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = checkpoint.step
        self.last_checkpoint = checkpoint.path
        self.bad_samples = int(state.get("bad_samples", 0))
        if "loss_window" in state:
            self.window.load_state(state["loss_window"])
        rng_states = state["rng"]
        if len(rng_states) == self.distributed.world_size:
            restore_rng(rng_states[self.distributed.rank], self.device)
        else:
            if self.distributed.is_main:
                logger.warning(
                    "checkpoint written by %d processes, resuming with %d: the data order continues exactly, but "
                    "dropout draws are re-seeded",
                    len(rng_states),
                    self.distributed.world_size,
                )
            _seed_everything(self.config.run.seed + 1_000_003 * self.step + self.distributed.rank)

    def calibrated_thresholds(self, validation: ValidationResult | None) -> Thresholds | None:
        """Thresholds for the exported model's thresholds.json, chosen on the last validation (best IoU_FG overall
        and per prompt); None, said in the log, without validation data."""
        if validation is None:
            logger.info("no validation data (data.val): the exported model gets no thresholds.json")
            return None
        try:
            thresholds = choose_thresholds(
                validation.scores.statistics, validation.prompt_statistics, model=str(self.output_dir / MODEL_DIR)
            )
        except ValueError as error:
            logger.info("no thresholds.json for the exported model: %s", error)
            return None
        logger.info(
            "calibrated thresholds on %d validation samples: overall %.2f, %d prompt(s) of their own",
            validation.samples,
            thresholds.overall,
            len(thresholds.prompts),
        )
        return thresholds

    def export(self, directory: Path) -> Path:
        """Write the whole model (CLIP + trained decoder) as a `clipseg.load_model` directory, atomically."""
        with staged_directory(directory) as staging:
            self.model.save_pretrained(staging)
        logger.info("model exported: %s", directory)
        return directory


# ----------------------------------------------------------------------------------------------------- helpers


def _brief(result: ValidationResult) -> str:
    best, threshold = result.scores.best("iou_fg")
    return f"loss {result.loss:.4f}, IoU_FG {best:.3f} (t={threshold:.2f}), AP {result.scores.ap:.3f}"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

