"""Every default of training and inference in one tree of frozen dataclasses.

A YAML file maps onto the tree field by field (unknown keys are errors, never silently ignored);
``--set section.field=value`` overrides single fields. The resolved config is saved beside each
run and inside every checkpoint (`config_to_dict` / `config_from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from medsr.errors import MedsrError

#: planes per generator call in the reconstruction (``--batch-size``; `batch_size=` of the API
#: and the MONAI layer). 4, not 8, since 2026-12-07 (night): on the chest CT at x10
#: (512 x 512 x 36 -> 360 slices) the median peak RSS of five runs fell by about 100 MiB (the
#: encoder's activations are batch x channels x the plane), in the same time and to the same
#: bytes (there, in bf16); the encoder ran faster at 4 than at 8 in the speed runs too
#: (docs/benchmarks.md, "Four planes per call").
PLANE_BATCH = 4

#: settings that change no output value beyond rounding, left out of the keys a rerun compares
#: (`medsr batch`'s manifest, a 4D series' kept frames): another ``--batch-size`` redoes
#: nothing (tests/test_inference.py: to 1e-5 in fp32, one rounding in bf16; the same bytes
#: where measured; like ``--threads``, not recorded)
VALUELESS_SETTINGS = ("batch_size",)


@dataclass(frozen=True)
class ModelConfig:
    """Generator and discriminator sizes.

    Attributes:
        neighbours: k, the number of neighbouring low-resolution planes the generator sees
            (odd; 1 = single-image).
        num_features: feature channels of the generator's encoder.
        num_blocks: residual blocks of the encoder.
        hidden: channels of the arbitrary-scale decoder (per output sample).
        tail_knots: knots of the decoder's offset tail (`medsr.nets.generator`; 0: none).
        discriminator_channels: channels of the first discriminator layer.
        discriminator_layers: downsampling layers of the patch discriminator.
    """

    neighbours: int = 3
    num_features: int = 32
    num_blocks: int = 4
    hidden: int = 32
    tail_knots: int = 9
    discriminator_channels: int = 32
    discriminator_layers: int = 2

    def __post_init__(self) -> None:
        if self.neighbours < 1 or self.neighbours % 2 == 0:
            raise MedsrError(f"config model.neighbours must be odd and >= 1, got {self.neighbours}")
        for name in ("num_features", "hidden", "discriminator_channels", "discriminator_layers"):
            if getattr(self, name) < 1:
                raise MedsrError(f"config model.{name} must be >= 1, got {getattr(self, name)}")
        if self.tail_knots == 1 or self.tail_knots < 0:
            raise MedsrError(f"config model.tail_knots must be 0 or >= 2, got {self.tail_knots}")
        if self.num_blocks < 0:
            raise MedsrError(f"config model.num_blocks must be >= 0, got {self.num_blocks}")


@dataclass(frozen=True)
class LossConfig:
    """Generator loss ``l_G = l_pixel + perceptual_weight * l_percep + adversarial_weight * l_GAN``.

    Attributes:
        pixel_loss: the pixel term: ``"mse"`` (the SR-GAN's, as trained) or ``"l1"`` (the mean
            absolute error); the per-scan fit sets its own (`medsr.upsample.adapt.FIT_PIXEL_LOSS`).
        perceptual_weight: beta; 0 disables the perceptual loss (and the need for VGG weights).
        adversarial_weight: gamma; 0 trains without the discriminator.
        perceptual_layer: last VGG16 layer whose features are compared.
        vgg_weights: path of the VGG16 feature weights; default from $MEDSR_VGG_WEIGHTS or torch's
            cache (see `medsr.train.losses.find_vgg_weights`).
    """

    pixel_loss: Literal["mse", "l1"] = "mse"
    perceptual_weight: float = 0.003
    adversarial_weight: float = 0.0001
    perceptual_layer: Literal["relu1_2", "relu2_2", "relu3_3"] = "relu2_2"
    vgg_weights: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """Training pairs and the degradations they are drawn with (`medsr.train.pairs`).

    Attributes:
        self_supervised: pairs from the in-plane slices of anisotropic scans at their own factor
            (else: simulate thick slices from high-resolution volumes).
        min_factor: smallest simulated factor (thick / thin spacing), drawn log-uniformly.
        max_factor: largest simulated factor; also the ceiling the model is used for.
        profiles: slice profiles to draw from (FWHM or width = the slice thickness).
        thickness_ratios: range of slice thickness / slice spacing (< 1 gap, > 1 overlap).
        noise_max: largest Rician noise std (normalised units) added to the thin truth before
            thickening (in 2 of 3 batches).
        thick_noise_share: share of those noisy batches whose thick input carries the drawn
            noise in full, as a real thick slice carries its scan's voxel noise (the per-scan
            fit's model, `input_noise`); in the others thickening averages it down (a thick
            acquisition's higher SNR). 0: never (no random draw is spent on it, so configs
            without it give the same pairs as before it existed).
        blur_max: largest Gaussian sigma (voxels of the source) that smooths the content of 1 in
            3 batches before it is degraded, input and target alike, within each neighbour plane
            (along the axis made thick and the plane's other axis, not across the neighbour
            planes; the patch's own edges mirrored), so that the prior
            also learns smooth, high-SNR content (population templates, heavily filtered or
            interpolated scans) and does not sharpen it; 0: off (the per-scan fit's, which
            learns from the scan's own content).
        input_noise: the per-scan fit's: the std (normalised units) of the scan's voxel noise.
            Thickening the scan's in-plane slices averages their noise down, while the thick
            slices being upsampled carry it in full; Gaussian noise puts the missing variance
            back on every thickened input (`medsr.degrade.thickened_noise_share`). 0: none.
        gamma_range: range of the contrast change (a gamma, drawn log-uniformly).
        gain_range: range of the intensity gain.
        patch_width: in-plane size of a training patch (voxels).
        patch_slices: most low-resolution slices in a training patch.
        max_thin_slices: most target slices in a patch (large factors get fewer thick slices).
        query_positions: most target slices of a patch that the decoder is trained on in a step,
            one drawn at random from each of that many equal runs of the patch's thin slices
            (stratified; LIIF samples its queries in the same spirit); 0: all of them. The
            encoder still sees the whole patch; at large factors the decoder, which runs at the
            output resolution, then costs what it does at a small one. Pixel loss only: the
            perceptual and adversarial losses need the whole patch as an image.
        batch_size: patches per step (per process).
        validation_fraction: share of each volume's voxels held out for validation when no
            held-out volumes are given, as one block (the last part of every axis, the same
            voxels for all of the volume's orientations; never trained on); 0: none.
        workers: `DataLoader` worker processes drawing training pairs (0: in the training
            process, which also makes a resumed run continue bit for bit).
        foreground_sampling: centre 90 % of the patches on a voxel of the source's foreground
            (`medsr.train.patches`; the rest uniform); off for training runs by default, on in
            the per-scan fit (`medsr.upsample.adapt`).
    """

    self_supervised: bool = False
    min_factor: float = 1.5
    max_factor: float = 16.0
    profiles: tuple[Literal["boxcar", "gaussian", "sinc"], ...] = ("boxcar", "gaussian")
    thickness_ratios: tuple[float, float] = (0.8, 1.2)
    noise_max: float = 0.03
    thick_noise_share: float = 0.0
    blur_max: float = 0.0
    input_noise: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.4)
    gain_range: tuple[float, float] = (0.8, 1.2)
    patch_width: int = 48
    patch_slices: int = 12
    max_thin_slices: int = 96
    query_positions: int = 0
    batch_size: int = 16
    validation_fraction: float = 0.1
    workers: int = 0
    foreground_sampling: bool = False

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise MedsrError(f"config data.workers must be >= 0, got {self.workers}")
        if not 1.0 < self.min_factor <= self.max_factor:
            raise MedsrError(
                f"config data: need 1 < min_factor <= max_factor, got {self.min_factor} "
                f"and {self.max_factor}"
            )
        for name in ("thickness_ratios", "gamma_range", "gain_range"):
            values = getattr(self, name)
            if len(values) != 2 or not 0 < values[0] <= values[1]:
                raise MedsrError(f"config data.{name} must be [low, high] with 0 < low <= high")
        if not self.profiles:
            raise MedsrError("config data.profiles must name at least one profile")
        # medsr.degrade.SLICE_PROFILES (config ranks below degrade; tests/test_config.py ties them)
        unknown = sorted(set(self.profiles) - {"boxcar", "gaussian", "sinc"})
        if unknown:
            raise MedsrError(f"config data.profiles: unknown {unknown}; boxcar, gaussian or sinc")
        if not 0 <= self.validation_fraction < 1:
            raise MedsrError(
                f"config data.validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        if self.noise_max < 0:
            raise MedsrError(f"config data.noise_max must be >= 0, got {self.noise_max}")
        if not 0 <= self.thick_noise_share <= 1:
            raise MedsrError(
                f"config data.thick_noise_share must be in [0, 1], got {self.thick_noise_share}"
            )
        if self.blur_max < 0:
            raise MedsrError(f"config data.blur_max must be >= 0, got {self.blur_max}")
        if self.input_noise < 0:
            raise MedsrError(f"config data.input_noise must be >= 0, got {self.input_noise}")
        for name in ("patch_width", "patch_slices", "max_thin_slices", "batch_size"):
            if getattr(self, name) < 1:
                raise MedsrError(f"config data.{name} must be >= 1, got {getattr(self, name)}")
        if self.query_positions < 0:
            raise MedsrError(
                f"config data.query_positions must be >= 0, got {self.query_positions}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping.

    Attributes:
        steps: total optimisation steps (the horizon of the cosine schedule).
        stop_at: stop early at this step, the schedule unchanged (None: at `steps`).
        warmup_steps: MSE-only steps before the perceptual and adversarial losses start.
        learning_rate: Adam learning rate of the generator.
        discriminator_learning_rate: Adam learning rate of the discriminator.
        discriminator_warmup_steps: steps over which the discriminator's rate rises linearly to
            `discriminator_learning_rate`, counted from the start of the adversarial phase
            (`warmup_steps`): the discriminator is created fresh there.
        lr_schedule: ``"cosine"`` decays the generator's rate to 0 at `steps` from step 0, and
            the discriminator's from the end of its warm-up to `steps` (its own horizon, so a
            fresh discriminator is not trained at a few per cent of its rate); ``"constant"``
            keeps both (the discriminator's warm-up stays).
        checkpoint_every: steps between checkpoints (a killed run loses at most this many).
        validate_every: steps between validations.
        seed: seed of every random choice of the run.
        device: ``"auto"``, ``"cpu"`` or ``"cuda:N"``.
        mixed_precision: autocast on CUDA (fp16; see `cpu_bf16` for the CPU).
        cpu_bf16: on the CPU, bf16 autocast of the step's networks: the generator's encoder
            (its decoder, the pixel loss and the weights stay float32) and, in `medsr train`,
            the VGG and discriminator convolutions; for a CPU with native bf16
            (`medsr.runtime.cpu_supports_bf16`), where bf16 is emulated and slow otherwise. The
            per-scan fit sets it (`medsr.runtime.fit_precision`).
    """

    steps: int = 2000
    stop_at: int | None = None
    warmup_steps: int = 500
    learning_rate: float = 5e-4
    discriminator_learning_rate: float = 2e-4
    discriminator_warmup_steps: int = 100
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    checkpoint_every: int = 250
    validate_every: int = 250
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = True
    cpu_bf16: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise MedsrError(f"config train.steps must be >= 1, got {self.steps}")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.steps:
            raise MedsrError(f"config train.stop_at must be in [1, steps], got {self.stop_at}")
        for name in ("warmup_steps", "discriminator_warmup_steps"):
            if getattr(self, name) < 0:
                raise MedsrError(f"config train.{name} is out of range: {getattr(self, name)}")
        for name in ("checkpoint_every", "validate_every"):
            if getattr(self, name) < 1:
                raise MedsrError(f"config train.{name} is out of range: {getattr(self, name)}")
        if self.learning_rate <= 0 or self.discriminator_learning_rate <= 0:
            raise MedsrError("config train: learning rates must be positive")


@dataclass(frozen=True)
class Config:
    """The whole configuration of a run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        image_losses = self.loss.perceptual_weight > 0 or self.loss.adversarial_weight > 0
        if self.data.query_positions and image_losses:
            raise MedsrError(
                "config data.query_positions needs the pixel loss alone: the perceptual and "
                "adversarial losses see the whole patch (set it to 0, or their weights to 0)"
            )


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    origin = get_origin(annotation)
    if origin is Literal:
        if value not in get_args(annotation):
            raise MedsrError(f"config {name}: {value!r} is not one of {get_args(annotation)}")
        return value
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(item, get_args(annotation)[0], name) for item in items)
    if value is None and type(None) in get_args(annotation):
        return None
    kinds = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    kind = kinds[0]
    if kind is bool and not isinstance(value, bool):
        raise MedsrError(f"config {name}: expected true/false, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError) as error:
        raise MedsrError(f"config {name}: cannot read {value!r} as {kind.__name__}") from error


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise MedsrError(f"unknown config key(s): {', '.join(prefix + k for k in sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise MedsrError(f"config {prefix}{name}: expected a mapping")
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a `Config` from nested dicts; missing fields keep their defaults."""
    return _build(Config, values or {}, "")


def checkpoint_config(values: dict[str, Any]) -> Config:
    """The `Config` a checkpoint was written with. A checkpoint from before the decoder's offset
    tail names no ``model.tail_knots``: its model has no tail (0), whatever today's default."""
    model = values.get("model", {}) if isinstance(values, dict) else {}
    if isinstance(model, dict) and "tail_knots" not in model:
        values = {**values, "model": {**model, "tail_knots": 0}}
    return config_from_dict(values)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (YAML- and checkpoint-safe: tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` strings (values parsed as YAML) to nested dicts."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise MedsrError(f"--set expects section.field=value, got {item!r}")
        values.setdefault(parts[0], {})
        if not isinstance(values[parts[0]], dict):
            raise MedsrError(f"config {parts[0]}: expected a mapping")
        values[parts[0]][parts[1]] = yaml.safe_load(raw)
    return values


def read_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """The YAML file at `path` as {section: {field: value}} (the one YAML loader).

    Raises:
        MedsrError: unreadable file, invalid YAML, or not a mapping of mappings.
    """
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MedsrError(f"cannot read config '{path}': {reason}") from error
    if not isinstance(values, dict):
        raise MedsrError(
            f"config '{path}' must be a mapping of sections, got a {type(values).__name__}"
        )
    for section, fields in values.items():
        if not isinstance(fields, dict):
            raise MedsrError(f"config '{path}': section {section!r} must be a mapping of fields")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path`, then `overrides`."""
    values = read_config_file(path) if path is not None else {}
    return config_from_dict(apply_overrides(values, overrides or []))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from medsr.io.atomic import write_text_atomically  # the CLI's parser imports this module

    write_text_atomically(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
