import csv
import dataclasses
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_affine, phantom_array

from medsr.cli import main
from medsr.config import load_config
from medsr.io import Volume, read_volume, write_volume
from medsr.nets.checkpoint import load_generator
from medsr.runtime import seed_everything
from medsr.train.pairs import build_sampler
from medsr.train.run import run_training
from medsr.train.trainer import Trainer


@pytest.fixture
def hr_path(tmp_path, hr_volume):
    return write_volume(hr_volume, tmp_path / "hr.nii.gz")


def _sets(*fields: str) -> list[str]:
    """``--set`` options for each ``section.field=value``."""
    return [item for field in fields for item in ("--set", field)]


def _with_steps(config, steps):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, steps=steps))


def test_two_step_run_writes_checkpoint_config_and_metrics(tmp_path, hr_path, tiny_config):
    run = tmp_path / "run"
    scores = run_training([hr_path], run, tiny_config)
    assert set(scores) == {"val_psnr", "val_psnr_bspline", "val_ssim", "val_ssim_bspline"}
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 2 and state["version"] and state["config"]["model"]["num_features"] == 8
    assert state["discriminator"] is not None and state["opt_d"] is not None
    assert load_config(run / "config.yaml") == tiny_config
    generator, config = load_generator(run / "checkpoints" / "latest.pt")
    assert config == tiny_config
    for name, tensor in generator.state_dict().items():
        torch.testing.assert_close(tensor, state["generator"][name], rtol=0, atol=0)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2] and rows[1]["val_psnr"]
    assert rows[1]["loss_d"]  # the adversarial phase started after the 1-step warm-up


def test_resume_continues_bit_for_bit(tmp_path, hr_path, hr_volume, tiny_config):
    straight, split = tmp_path / "straight", tmp_path / "split"
    config = _with_steps(tiny_config, 4)
    run_training([hr_path], straight, config)
    # the same run killed after step 2 (checkpoints every step), then resumed
    seed_everything(config.train.seed)
    sampler = build_sampler([(read_volume(hr_path), "hr")], config.data, 3)
    Trainer(config, sampler, torch.device("cpu"), split).fit(until_step=2)
    assert torch.load(split / "checkpoints" / "latest.pt", weights_only=True)["step"] == 2
    run_training([hr_path], split, config, resume=True)
    a = torch.load(straight / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(split / "checkpoints" / "latest.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for part in ("generator", "discriminator"):
        for name, tensor in a[part].items():
            torch.testing.assert_close(tensor, b[part][name], rtol=0, atol=0)
    rows = list(csv.DictReader((split / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]


def test_cli_train_resume_extends_steps(tmp_path, hr_path):
    run = tmp_path / "run"
    tiny = _sets(
        "model.num_features=4",
        "model.num_blocks=1",
        "data.min_factor=2",
        "data.max_factor=3",
        "data.batch_size=2",
        "data.patch_width=8",
        "data.patch_slices=4",
        "loss.perceptual_weight=0",
        "loss.adversarial_weight=0",
    )
    assert (
        main(
            [
                "train",
                "--data",
                str(hr_path),
                "--out",
                str(run),
                "--set",
                "train.steps=1",
                "--device",
                "cpu",
                "--quiet",
                *tiny,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--data",
                str(hr_path),
                "--out",
                str(run),
                "--resume",
                "--set",
                "train.steps=3",
                "--quiet",
            ]
        )
        == 0
    )
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["step"] == 3


def test_a_finished_run_is_not_overwritten(tmp_path, hr_path, tiny_config, capsys):
    run = tmp_path / "run"
    run_training([hr_path], run, tiny_config)
    before = (run / "checkpoints" / "latest.pt").read_bytes()
    assert main(["train", "--data", str(hr_path), "--out", str(run), "--quiet"]) == 1
    assert "--resume" in capsys.readouterr().err
    assert (run / "checkpoints" / "latest.pt").read_bytes() == before


def test_too_small_patches_for_the_discriminator(tmp_path, hr_path, tiny_config, capsys):
    code = main(
        [
            "train",
            "--data",
            str(hr_path),
            "--out",
            str(tmp_path / "r"),
            "--quiet",
            "--set",
            "data.patch_width=8",
            "--set",
            "data.patch_slices=4",
            "--set",
            "loss.perceptual_weight=0",
            "--set",
            "model.discriminator_layers=3",
        ]
    )
    assert code == 1 and "too small" in capsys.readouterr().err


def test_missing_vgg_weights_is_a_clear_error(tmp_path, hr_path, capsys, monkeypatch):
    monkeypatch.delenv("MEDSR_VGG_WEIGHTS", raising=False)
    code = main(
        [
            "train",
            "--data",
            str(hr_path),
            "--out",
            str(tmp_path / "r"),
            "--vgg-weights",
            str(tmp_path / "none.pth"),
            "--quiet",
        ]
    )
    assert code == 1
    assert "VGG16 weights not found" in capsys.readouterr().err


def test_two_process_gloo_run_completes(tmp_path, hr_path):
    run = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "medsr.cli",
        "train",
        "--data",
        str(hr_path),
        "--out",
        str(run),
        "--device",
        "cpu",
        "--quiet",
        *_sets(
            "train.steps=2",
            "train.warmup_steps=1",
            "model.num_features=4",
            "model.num_blocks=1",
            "data.min_factor=2",
            "data.max_factor=3",
            "data.batch_size=2",
            "data.patch_width=16",
            "data.patch_slices=8",
            "loss.perceptual_weight=0",
            "model.discriminator_channels=4",
            "model.discriminator_layers=2",
        ),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    if result.returncode != 0 and "SIGABRT" in result.stderr:
        # about 1 run in 10 on this 2-core machine a gloo worker aborts (signal 6) in the
        # launcher, not in medsr; one fresh run tells that apart from a real failure, which
        # fails twice (known flakiness, to be diagnosed: see the session note of 2026-12-01)
        shutil.rmtree(run, ignore_errors=True)
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, [line for line in result.stderr.splitlines() if "medsr" in line]
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 2 and len(state["rng"]) == 2  # both ranks' sampling state saved


def test_resume_with_more_steps_does_not_make_the_learning_rate_jump(
    tmp_path, hr_path, tiny_config
):
    config = dataclasses.replace(
        tiny_config,
        loss=dataclasses.replace(tiny_config.loss, adversarial_weight=0.0),
        train=dataclasses.replace(tiny_config.train, steps=4, lr_schedule="cosine"),
    )
    run = tmp_path / "run"
    sampler = build_sampler([(read_volume(hr_path), "hr")], config.data, 3)
    first = Trainer(config, sampler, torch.device("cpu"), run)
    first.fit(until_step=3)
    rate_before = first.schedule_factor(3)
    longer = _with_steps(config, 40)
    resumed = Trainer(longer, sampler, torch.device("cpu"), run)
    resumed.load_checkpoint(run / "checkpoints" / "latest.pt")
    assert resumed.schedule_factor(3) == pytest.approx(rate_before)
    assert resumed.schedule_factor(4) == pytest.approx(rate_before, rel=0.01)
    assert resumed.schedule_factor(40) == pytest.approx(0.0, abs=1e-9)
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["schedule"] == [0, 1.0, 4]


def test_resume_with_a_changed_model_is_a_one_line_error(tmp_path, hr_path, capsys):
    run = tmp_path / "run"
    tiny = _sets(
        "model.num_features=4",
        "model.num_blocks=1",
        "data.batch_size=2",
        "data.patch_width=8",
        "data.patch_slices=4",
        "loss.perceptual_weight=0",
        "loss.adversarial_weight=0",
    )
    argv = ["train", "--data", str(hr_path), "--out", str(run), "--device", "cpu", "--quiet"]
    assert main([*argv, "--set", "train.steps=1", *tiny]) == 0
    code = main([*argv, "--resume", "--set", "model.num_features=8"])
    err = capsys.readouterr().err
    assert code == 1 and "changed model (num_features 4 -> 8)" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_train_data_from_a_list_file_and_two_dimensional_images(tmp_path, hr_path):
    from PIL import Image

    from medsr.train.run import expand_data_paths, read_training_volume

    image = (np.random.default_rng(0).random((40, 36, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "section.png")
    listing = tmp_path / "data.txt"
    listing.write_text(f"# training volumes\n{hr_path.name}\nsection.png  # a 2D image\n")
    paths = expand_data_paths([listing])
    assert paths == [hr_path, tmp_path / "section.png"]
    grey = read_training_volume(tmp_path / "section.png")
    assert grey.spatial_shape == (40, 36, 1) and grey.num_channels == 1
    np.testing.assert_allclose(grey.array[..., 0], image.mean(axis=2), rtol=1e-6)
    run = tmp_path / "run"
    argv = ["train", "--data", str(listing), "--out", str(run), "--device", "cpu", "--quiet"]
    argv += _sets(
        "train.steps=2",
        "model.num_features=4",
        "model.num_blocks=1",
        "data.batch_size=2",
        "data.patch_width=8",
        "data.max_factor=4",
        "loss.perceptual_weight=0",
        "loss.adversarial_weight=0",
    )
    assert main(argv) == 0


def test_a_volume_in_both_data_and_validation_data_is_refused(tmp_path, hr_path, capsys):
    from medsr.train.run import check_disjoint

    copy = tmp_path / "copy" / "renamed.nii.gz"
    copy.parent.mkdir()
    shutil.copy(hr_path, copy)
    link = tmp_path / "link.nii.gz"
    link.symlink_to(hr_path)
    for held_out, message in ((hr_path, "in both"), (link, "in both"), (copy, "is a copy of")):
        run = tmp_path / f"run_{held_out.stem}"
        argv = ["train", "--data", str(hr_path), "--validation-data", str(held_out)]
        assert main([*argv, "--out", str(run), "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not run.exists()  # found before anything is written
    other = write_volume(
        Volume(phantom_array((24, 22, 20), seed=5), make_affine("RAS", (1, 1, 1))),
        tmp_path / "other.nii.gz",
    )
    check_disjoint([hr_path], [other])  # a different volume of the same size is fine


def test_the_discriminator_has_its_own_warm_up_and_cosine(hr_path, tiny_config):
    """A fresh discriminator reaches its full rate after its warm-up from the adversarial
    phase's start and decays over its own horizon; the generator's schedule is unchanged."""
    train = dataclasses.replace(
        tiny_config.train,
        steps=40,
        warmup_steps=20,
        discriminator_warmup_steps=4,
        lr_schedule="cosine",
        discriminator_learning_rate=3e-4,
    )
    config = dataclasses.replace(tiny_config, train=train)
    sampler = build_sampler([(read_volume(hr_path), "hr")], config.data, 3)
    trainer = Trainer(config, sampler, torch.device("cpu"), validation=[])
    rates = {}
    for step in (20, 21, 23, 24, 39):
        trainer.step = step
        trainer._set_learning_rates()
        rates[step] = (trainer.opt_g.param_groups[0]["lr"], trainer.opt_d.param_groups[0]["lr"])
    assert rates[20][1] == pytest.approx(3e-4 / 4)  # the first adversarial step: warming up
    assert rates[23][1] == pytest.approx(3e-4)  # after its warm-up: the full rate
    assert rates[24][1] == pytest.approx(3e-4)  # its cosine starts there, not at step 0
    assert rates[39][1] == pytest.approx(3e-4 * 0.5 * (1 + np.cos(np.pi * 15 / 16)))
    for step, (rate_g, _) in rates.items():  # the generator: one cosine from step 0, as before
        assert rate_g == pytest.approx(train.learning_rate * 0.5 * (1 + np.cos(np.pi * step / 40)))
    # without a warm-up the first adversarial step trains D at its full rate
    no_warm = dataclasses.replace(train, discriminator_warmup_steps=0)
    trainer = Trainer(
        dataclasses.replace(config, train=no_warm), sampler, torch.device("cpu"), validation=[]
    )
    trainer.step = 20
    trainer._set_learning_rates()
    assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(3e-4)


def test_discriminator_warm_up_must_not_be_negative():
    from medsr.config import TrainConfig
    from medsr.errors import MedsrError

    with pytest.raises(MedsrError, match="discriminator_warmup_steps"):
        TrainConfig(discriminator_warmup_steps=-1)


def test_a_run_from_before_the_offset_tail_resumes_without_one(tmp_path, hr_path, tiny_config):
    """A checkpoint whose config names no model.tail_knots was written before the tail: --resume
    continues that model (no tail), it does not fail on the missing weights or grow a tail."""
    run = tmp_path / "run"
    config = dataclasses.replace(
        _with_steps(tiny_config, 1), model=dataclasses.replace(tiny_config.model, tail_knots=0)
    )
    run_training([hr_path], run, config)
    latest = run / "checkpoints" / "latest.pt"
    state = torch.load(latest, weights_only=True)
    del state["config"]["model"]["tail_knots"]  # as a pre-tail medsr wrote it
    torch.save(state, latest)
    assert (
        main(
            [
                "train",
                "--data",
                str(hr_path),
                "--out",
                str(run),
                "--resume",
                "--quiet",
                "--set",
                "train.steps=2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    state = torch.load(latest, weights_only=True)
    assert state["step"] == 2 and state["config"]["model"]["tail_knots"] == 0
    assert not any(key.startswith("tail.") for key in state["generator"])


def test_the_fit_runs_numpy_blas_on_one_thread_and_restores_it(hr_path, tiny_config):
    """numpy's BLAS threads spin after each batch and took the cores from torch's steps (a fit
    step 2.2x slower on 2 cores): during `fit` they are limited to 1, afterwards as before."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    config = _with_steps(tiny_config, 2)
    sampler = build_sampler([(read_volume(hr_path), "hr")], config.data, 3)
    seen, sample = [], sampler.sample
    sampler.sample = lambda rng: seen.append(blas_threads()) or sample(rng)
    trainer = Trainer(config, sampler, torch.device("cpu"), validation=[])
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        if not before:
            pytest.skip("no BLAS that threadpoolctl can limit")
        trainer.fit()
        assert blas_threads() == before
    assert before and seen and all(threads == [1] * len(before) for threads in seen)
    assert trainer.step == 2


def test_the_batches_are_closed_when_a_step_fails(hr_path, tiny_config):
    """DataLoader workers stop with the batch generator: also on an error or Ctrl-C mid-run."""
    config = _with_steps(tiny_config, 5)
    sampler = build_sampler([(read_volume(hr_path), "hr")], config.data, 3)
    trainer = Trainer(config, sampler, torch.device("cpu"), validation=[])
    closed = []

    def batches():
        try:
            while True:
                yield sampler.sample(trainer.rng)
        finally:
            closed.append(True)

    def failing_step(*args):
        raise KeyboardInterrupt

    trainer._batches, trainer.train_step = batches, failing_step
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert closed == [True]


def test_the_cpu_trainer_runs_2d_models_channels_last_and_saves_plain_weights(
    hr_path, tiny_config, tmp_path
):
    """The CPU's faster layout is the Trainer's own business: a checkpoint loads into a plain
    model and gives the same output."""
    config = _with_steps(tiny_config, 1)
    sampler = build_sampler([(read_volume(hr_path), "hr")], config.data, 3)
    trainer = Trainer(config, sampler, torch.device("cpu"), validation=[])
    assert trainer.generator.head.weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.precision == "fp32"
    trainer.train_step(*sampler.sample(np.random.default_rng(0)))
    trainer.save_checkpoint(tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)["generator"]
    assert all(tensor.is_contiguous() for tensor in saved.values())  # the file's own layout
    plain, _ = load_generator(tmp_path / "c.pt")
    assert not plain.head.weight.is_contiguous(memory_format=torch.channels_last)
    lr, _, positions, factor = sampler.sample(np.random.default_rng(1))
    with torch.no_grad():
        expected = trainer.generator.eval()(lr, positions, factor)
        torch.testing.assert_close(plain.eval()(lr, positions, factor), expected)


def test_cpu_bf16_trains_the_encoder_in_bf16_and_keeps_float32_weights(hr_path, tiny_config):
    config = _with_steps(tiny_config, 1)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, cpu_bf16=True))
    sampler = build_sampler([(read_volume(hr_path), "hr")], config.data, 3)
    trainer = Trainer(config, sampler, torch.device("cpu"), validation=[])
    assert trainer.precision == "bf16" and not trainer.amp
    before = [p.detach().clone() for p in trainer.generator.parameters()]
    dtypes = {}

    def record(name):
        def hook(module, inputs, output):
            dtypes.setdefault(name, output.dtype)

        return hook

    trainer.generator.head.register_forward_hook(record("encoder"))
    trainer.generator.register_forward_hook(record("output"))
    losses = trainer.train_step(*sampler.sample(np.random.default_rng(0)))
    assert dtypes == {"encoder": torch.bfloat16, "output": torch.float32}
    assert losses and all(np.isfinite(value) for value in losses.values())
    after = list(trainer.generator.parameters())
    assert all(p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("pixel_loss", ["mse", "l1"])
def test_the_pixel_loss_is_the_configs(hr_path, tiny_config, pixel_loss):
    config = _with_steps(tiny_config, 1)
    config = dataclasses.replace(
        config,
        loss=dataclasses.replace(
            config.loss, pixel_loss=pixel_loss, perceptual_weight=0.0, adversarial_weight=0.0
        ),
    )
    sampler = build_sampler([(read_volume(hr_path), "hr")], config.data, 3)
    trainer = Trainer(config, sampler, torch.device("cpu"), validation=[])
    lr, hr, positions, factor = sampler.sample(np.random.default_rng(0))
    with torch.no_grad():  # the untrained generator is cubic B-spline: its error is known
        fake = trainer.generator(lr, positions, factor).float()
    error = fake - hr
    expected = error.abs().mean() if pixel_loss == "l1" else error.square().mean()
    losses = trainer.train_step(lr, hr, positions, factor)
    assert losses["loss_pixel"] == pytest.approx(float(expected), rel=1e-5)


def test_an_unknown_pixel_loss_is_a_config_error():
    from medsr.errors import MedsrError

    with pytest.raises(MedsrError, match="pixel_loss"):
        load_config(overrides=["loss.pixel_loss=l2"])
