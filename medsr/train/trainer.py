"""The SR-GAN trainer: one model class that owns networks, losses and optimisers (BasicSR's
model/loop split, without registries), and `train`, the driver behind ``medsr train``."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from medsr._version import __version__
from medsr.config import Config, checkpoint_config, config_to_dict
from medsr.errors import MedsrError
from medsr.evaluate.metrics import psnr, ssim
from medsr.io.atomic import write_atomically
from medsr.nets import PlaneDiscriminator
from medsr.nets.blocks import bspline_sample_last_axis
from medsr.nets.checkpoint import build_generator
from medsr.runtime import distributed_world, numpy_blas_threads, precision_autocast
from medsr.train.losses import (
    PIXEL_LOSSES,
    AdversarialLoss,
    PerceptualLoss,
    load_vgg_features,
)
from medsr.train.metrics_log import METRIC_COLUMNS, MetricsLog
from medsr.train.pairs import PairSampler

logger = logging.getLogger(__name__)


class Trainer:
    """Trains the generator (pixel-loss warm-up, then pixel + perceptual + adversarial) and the
    discriminator, validates on held-out planes, and saves/loads one-dict checkpoints.

    Args:
        config: resolved configuration.
        sampler: source of training batches and validation planes.
        device: torch device.
        run_dir: folder for checkpoints and ``metrics.csv`` (None: keep nothing on disk).
        validation: fixed validation batches (`PairSampler.validation_planes` of held-out
            volumes); default: the planes of `sampler`'s held-out blocks.
    """

    def __init__(
        self,
        config: Config,
        sampler: PairSampler,
        device: torch.device,
        run_dir: str | os.PathLike[str] | None = None,
        validation: list | None = None,
    ) -> None:
        self.config, self.sampler, self.device = config, sampler, device
        self._validation = validation
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.rank, _, self.world = distributed_world()
        loss = config.loss
        self.discriminator = None
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, global RNG kept
            torch.manual_seed(config.train.seed)
            self.generator = build_generator(config).to(device)
            if device.type == "cpu" and self.generator.head.weight.dim() == 4:  # 2D: faster
                self.generator.to(memory_format=torch.channels_last)
            if loss.adversarial_weight > 0:
                self.discriminator = PlaneDiscriminator(
                    config.model.discriminator_channels, config.model.discriminator_layers
                ).to(device)
        if self.discriminator is not None:
            self._check_discriminator_input(sampler)
        self.perceptual = None
        if loss.perceptual_weight > 0:
            features = load_vgg_features(loss.vgg_weights, loss.perceptual_layer)
            self.perceptual = PerceptualLoss(features).to(device)
        self.adversarial = AdversarialLoss()
        train = config.train
        self.opt_g = torch.optim.Adam(
            self.generator.parameters(), lr=train.learning_rate, betas=(0.9, 0.99)
        )
        self.opt_d = None
        if self.discriminator is not None:
            d_rate = train.discriminator_learning_rate
            self.opt_d = torch.optim.Adam(self.discriminator.parameters(), d_rate, (0.5, 0.99))
        self.amp = train.mixed_precision and device.type == "cuda"
        cpu_bf16 = train.cpu_bf16 and device.type == "cpu"
        self.precision = "fp16" if self.amp else "bf16" if cpu_bf16 else "fp32"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step = 0
        #: cosine schedules (start step, start factor, end step) of G and of D (from the end of
        #: its warm-up); a resume with a new `train.steps` continues from today's rates
        self.schedule = (0, 1.0, train.steps)
        self.d_schedule = (train.warmup_steps + train.discriminator_warmup_steps, 1.0, train.steps)
        self.rng = np.random.default_rng([train.seed, self.rank])
        self.g_net, self.d_net = self.generator, self.discriminator
        if self.world > 1:  # heads of unused factors get no gradient in a step
            ids = [device.index] if device.type == "cuda" else None
            self.g_net = DistributedDataParallel(
                self.generator, device_ids=ids, find_unused_parameters=True
            )
            if self.discriminator is not None:
                self.d_net = DistributedDataParallel(self.discriminator, device_ids=ids)

    def _check_discriminator_input(self, sampler: PairSampler) -> None:
        # the shortest target a batch can have: the smallest factor's patch
        data = self.config.data
        slices = sampler.patch_slices(data.min_factor, 10**6)
        smallest = (1, 1, data.patch_width, max(1, int(slices * data.min_factor)))
        try:
            with torch.no_grad():
                self.discriminator(torch.zeros(smallest, device=self.device))
        except (RuntimeError, ValueError) as error:  # conv too large, or 1x1 instance norm
            raise MedsrError(
                f"training patches of {smallest[2]}x{smallest[3]} are too small for a "
                f"{self.config.model.discriminator_layers}-layer discriminator; raise "
                "data.patch_width / data.patch_slices or lower model.discriminator_layers"
            ) from error

    @property
    def validation(self) -> list:
        """Validation batches, made on first use."""
        if self._validation is None:
            self._validation = self.sampler.validation_planes()
        return self._validation

    @property
    def adversarial_phase(self) -> bool:
        """True once the MSE-only warm-up is over."""
        return self.step >= self.config.train.warmup_steps

    def schedule_factor(self, step: int, schedule: tuple | None = None) -> float:
        """Learning-rate factor at `step` (derived from the step alone: resumes are exact)."""
        if self.config.train.lr_schedule != "cosine":
            return 1.0
        start, start_factor, end = schedule or self.schedule
        progress = min(max(step - start, 0), end - start) / max(end - start, 1)
        return start_factor * 0.5 * (1 + math.cos(math.pi * progress))

    def discriminator_factor(self, step: int) -> float:
        """D's factor: linear up to 1 over its warm-up, then its own cosine (`d_schedule`)."""
        train = self.config.train
        since, warm = step - train.warmup_steps, train.discriminator_warmup_steps
        if since < warm:
            return max(since + 1, 0) / warm
        return self.schedule_factor(step, self.d_schedule)

    def _set_learning_rates(self) -> None:
        factor, train = self.schedule_factor(self.step), self.config.train
        for group in self.opt_g.param_groups:
            group["lr"] = train.learning_rate * factor
        for group in self.opt_d.param_groups if self.opt_d is not None else []:
            group["lr"] = train.discriminator_learning_rate * self.discriminator_factor(self.step)

    def train_step(
        self, lr: torch.Tensor, hr: torch.Tensor, positions: torch.Tensor, factor: float
    ) -> dict[str, float]:
        """One generator update and, in the adversarial phase, one discriminator update.

        The adversarial terms are computed from the discriminator's logits in float32 outside
        autocast (binary cross-entropy on probabilities is refused under CUDA autocast).
        """
        self._set_learning_rates()
        lr, hr = lr.to(self.device), hr.to(self.device)
        weights, losses = self.config.loss, {}
        use_gan = self.adversarial_phase and self.d_net is not None
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
        self.generator.train()
        self.opt_g.zero_grad(set_to_none=True)
        with precision_autocast(self.device, self.precision):
            fake = self.g_net(lr, positions, factor)
            fake_logits = self.d_net(fake) if use_gan else None
        fake = fake.float()
        loss_g = PIXEL_LOSSES[weights.pixel_loss](fake, hr)
        losses["loss_pixel"] = loss_g.item()
        if self.adversarial_phase and self.perceptual is not None:
            with precision_autocast(self.device, self.precision):
                loss_percep = self.perceptual(fake, hr).float()
            loss_g = loss_g + weights.perceptual_weight * loss_percep
            losses["loss_perceptual"] = loss_percep.item()
        if use_gan:
            loss_adv = self.adversarial.generator_loss(fake_logits.float())
            loss_g = loss_g + weights.adversarial_weight * loss_adv
            losses["loss_adversarial"] = loss_adv.item()
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)
        losses["loss_g"] = loss_g.item()
        if use_gan:
            self.discriminator.requires_grad_(True)
            self.opt_d.zero_grad(set_to_none=True)
            with precision_autocast(self.device, self.precision):
                real_logits, fake_logits = self.d_net(hr), self.d_net(fake.detach())
            loss_d = self.adversarial.discriminator_loss(real_logits.float(), fake_logits.float())
            self.scaler.scale(loss_d).backward()
            self.scaler.step(self.opt_d)
            losses["loss_d"] = loss_d.item()
        self.scaler.update()
        return losses

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean PSNR/SSIM (normalised units, range 1) of the generator and of cubic B-spline on
        the validation planes (held-out volumes, or each volume's held-out block)."""
        self.generator.eval()
        scores: dict[str, list[float]] = {k: [] for k in METRIC_COLUMNS[-4:]}
        for lr, hr, positions, factor in self.validation:
            lr = lr.to(self.device)
            pred = self.generator(lr, positions, factor)[0, 0].float().cpu().numpy()
            centre = lr[:, self.generator.neighbours // 2 : self.generator.neighbours // 2 + 1]
            base = bspline_sample_last_axis(centre, positions)[0, 0].cpu().numpy()
            target = hr[0, 0].numpy()
            for name, image in (("", pred), ("_bspline", base)):
                scores[f"val_psnr{name}"].append(psnr(image, target, data_range=1.0))
                scores[f"val_ssim{name}"].append(ssim(image, target, data_range=1.0))
        return {k: float(np.mean(v)) if v else float("nan") for k, v in scores.items()}

    def _batches(self):
        """Training batches: drawn here with the checkpointed generator, or by `DataLoader`
        workers (`medsr.train.pairs.PairStream`) when ``data.workers`` > 0."""
        workers = self.config.data.workers
        if workers == 0:
            while True:
                yield self.sampler.sample(self.rng)
        from torch.utils.data import DataLoader

        from medsr.train.pairs import PairStream

        stream = PairStream(self.sampler, self.config.train.seed, self.rank, self.step)
        loader = DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4)
        yield from loader

    def checkpoint(self) -> dict:
        """Everything needed to resume: one dict of tensors and plain Python values."""
        rng_states = [self.rng.bit_generator.state]
        if self.world > 1:
            rng_states = [None] * self.world
            dist.all_gather_object(rng_states, self.rng.bit_generator.state)
        return {
            "generator": {k: v.contiguous() for k, v in self.generator.state_dict().items()},
            "discriminator": None
            if self.discriminator is None
            else self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": None if self.opt_d is None else self.opt_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "schedule": list(self.schedule),
            "d_schedule": list(self.d_schedule),
            "config": config_to_dict(self.config),
            "version": __version__,
            "rng": rng_states,
            "torch_rng": torch.get_rng_state(),
        }

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write the checkpoint atomically (rank 0 writes; all ranks take part in gathering)."""
        state = self.checkpoint()
        if self.rank != 0:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda staged: torch.save(state, staged))

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore networks, optimisers, step, schedule and random state from `path`.

        Raises:
            MedsrError: the checkpoint's model configuration differs from this run's.
        """
        state = torch.load(Path(path), map_location=self.device, weights_only=True)
        saved = checkpoint_config(state["config"]).model
        if saved != self.config.model:
            changed = [
                f"{name} {getattr(saved, name)} -> {getattr(self.config.model, name)}"
                for name in saved.__dataclass_fields__
                if getattr(saved, name) != getattr(self.config.model, name)
            ]
            raise MedsrError(
                f"cannot resume '{path}' with a changed model ({', '.join(changed)}); "
                "start a new run instead"
            )
        self.generator.load_state_dict(state["generator"])
        if self.discriminator is not None and state["discriminator"] is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["opt_d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        start, start_factor, end = state.get("schedule", (0, 1.0, self.config.train.steps))
        self.schedule = (int(start), float(start_factor), int(end))
        self.d_schedule = tuple(state.get("d_schedule", self.d_schedule))
        if int(end) != self.config.train.steps:  # a new horizon: continue from today's rates
            steps, d_start = self.config.train.steps, max(self.step, self.d_schedule[0])
            self.schedule = (self.step, self.schedule_factor(self.step), steps)
            self.d_schedule = (d_start, self.schedule_factor(d_start, self.d_schedule), steps)
        states = state["rng"]
        self.rng.bit_generator.state = states[self.rank] if self.rank < len(states) else states[0]
        torch.set_rng_state(state["torch_rng"].cpu())

    @numpy_blas_threads(1)  # numpy draws the batches, torch trains on them: take turns
    def fit(
        self,
        progress: bool = False,
        *,
        until_step: int | None = None,
        deadline: float | None = None,
        description: str = "train",
    ) -> dict[str, float]:
        """Train until `config.train.steps` (or `until_step`, or the `time.perf_counter()`
        `deadline`, whichever comes first); returns the last validation scores."""
        from tqdm import tqdm

        train, start, last = self.config.train, time.perf_counter(), {}
        stop = train.stop_at or train.steps
        stop = stop if until_step is None else min(until_step, stop)
        log = MetricsLog(
            self.run_dir / "metrics.csv" if self.run_dir and self.rank == 0 else None, self.step
        )
        bar = tqdm(
            total=stop,
            initial=self.step,
            desc=description,
            disable=not progress or self.rank != 0,
            unit="step",
            dynamic_ncols=True,
        )
        batches = self._batches()
        try:
            while self.step < stop and (deadline is None or time.perf_counter() < deadline):
                lr, hr, positions, factor = next(batches)
                losses = self.train_step(lr, hr, positions, factor)
                self.step += 1
                row = {"step": self.step, "seconds": time.perf_counter() - start}
                row |= {"factor": factor, **losses}
                validate_now = self.step % train.validate_every == 0 or self.step == stop
                if validate_now and self.validation:
                    last = self.validate()
                    row.update(last)
                    logger.info(
                        "step %d: PSNR %.2f dB (B-spline %.2f), SSIM %.4f (B-spline %.4f)",
                        self.step,
                        last["val_psnr"],
                        last["val_psnr_bspline"],
                        last["val_ssim"],
                        last["val_ssim_bspline"],
                    )
                log.write(row)
                bar.update(1)
                bar.set_postfix(
                    {k.removeprefix("loss_"): f"{v:.4f}" for k, v in losses.items() if v != 0}
                )
                if self.run_dir and self.step == train.warmup_steps:  # the MSE-only model
                    self.save_checkpoint(self.run_dir / "checkpoints" / "warmup.pt")
                if self.run_dir and (self.step % train.checkpoint_every == 0 or self.step == stop):
                    self.save_checkpoint(self.run_dir / "checkpoints" / "latest.pt")
        finally:  # also on an error or Ctrl-C
            batches.close()  # stops DataLoader workers
            bar.close()
        return last
