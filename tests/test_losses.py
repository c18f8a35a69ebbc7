import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from conftest import VGG_WEIGHTS

from medsr.errors import MedsrError
from medsr.nets import PlaneDiscriminator
from medsr.train.losses import (
    AdversarialLoss,
    PerceptualLoss,
    VGGFeatures,
    find_vgg_weights,
    load_vgg_features,
)


def _random_vgg_state() -> dict:
    torch.manual_seed(0)
    return VGGFeatures("relu2_2").features.state_dict()


def _smooth_image() -> torch.Tensor:
    torch.manual_seed(1)
    noise = torch.rand(2, 1, 48, 48)
    return F.avg_pool2d(noise, 3, 1, 1)


def test_vgg_loads_torchvision_layouts(tmp_path):
    state = _random_vgg_state()
    features = VGGFeatures("relu2_2", state)
    whole = VGGFeatures("relu2_2", {f"features.{k}": v for k, v in state.items()})
    image = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(features(image), whole(image))
    torch.save(state, tmp_path / "vgg.pth")
    loaded = load_vgg_features(tmp_path / "vgg.pth", "relu2_2")
    torch.testing.assert_close(loaded(image), features(image))


@pytest.mark.parametrize("state", ["random", "imagenet"])
def test_perceptual_loss_is_zero_for_identical_and_grows_with_blur(state):
    if state == "imagenet":
        if not VGG_WEIGHTS.exists():
            pytest.skip("shared VGG16 weights not present")
        features = load_vgg_features(VGG_WEIGHTS, "relu2_2")
    else:
        features = VGGFeatures("relu2_2", _random_vgg_state())
    loss = PerceptualLoss(features)
    image = _smooth_image()
    assert loss(image, image).item() == pytest.approx(0.0, abs=1e-7)
    blurred = [F.avg_pool2d(image, k, 1, k // 2) for k in (3, 5, 9)]
    values = [loss(b, image).item() for b in blurred]
    assert 0 < values[0] < values[1] < values[2]


def test_missing_vgg_weights_say_why_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSR_VGG_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(MedsrError, match="perceptual_weight=0"):
        find_vgg_weights()
    with pytest.raises(MedsrError, match="not found"):
        find_vgg_weights(tmp_path / "nope.pth")
    (tmp_path / "w.pth").write_bytes(b"x")
    monkeypatch.setenv("MEDSR_VGG_WEIGHTS", str(tmp_path / "w.pth"))
    assert find_vgg_weights() == tmp_path / "w.pth"


def test_discriminator_learns_to_score_real_above_fake():
    torch.manual_seed(0)
    real = _smooth_image()[..., :32, :32].repeat(2, 1, 1, 1)
    fake = F.avg_pool2d(real, 7, 1, 3)  # blurred "generator output"
    discriminator = PlaneDiscriminator(channels=8, num_layers=2)
    optimiser = torch.optim.Adam(discriminator.parameters(), lr=2e-3)
    loss = AdversarialLoss()
    for _ in range(20):
        optimiser.zero_grad()
        loss.discriminator_loss(discriminator(real), discriminator(fake)).backward()
        optimiser.step()
    with torch.no_grad():
        assert discriminator(real).mean() > discriminator(fake).mean()
        assert loss.generator_loss(discriminator(fake)) > loss.generator_loss(discriminator(real))


def test_adversarial_loss_from_logits_matches_bce_of_probabilities():
    logits = torch.randn(3, 1, 5, 4)
    loss = AdversarialLoss()
    expected = F.binary_cross_entropy(torch.sigmoid(logits), torch.ones_like(logits))
    torch.testing.assert_close(loss.generator_loss(logits), expected)
    extreme = torch.full((1, 1, 2, 2), 200.0)  # sigmoid saturates; logits stay finite
    assert torch.isfinite(loss.discriminator_loss(extreme, extreme))


def test_adversarial_loss_runs_in_float32_next_to_cpu_autocast():
    discriminator = PlaneDiscriminator(channels=8, num_layers=2)
    image = _smooth_image()[..., :32, :32]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = discriminator(image)
    loss = AdversarialLoss().discriminator_loss(logits.float(), logits.float())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


@pytest.mark.gpu
def test_adversarial_training_step_under_cuda_autocast(tmp_path, hr_volume, tiny_config):
    import dataclasses

    from medsr.train.pairs import build_sampler
    from medsr.train.trainer import Trainer

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    config = dataclasses.replace(
        tiny_config, train=dataclasses.replace(tiny_config.train, warmup_steps=0, device="cuda")
    )
    sampler = build_sampler([(hr_volume, "hr")], config.data, 3)
    trainer = Trainer(config, sampler, torch.device("cuda"))
    assert trainer.amp
    import numpy as np

    losses = trainer.train_step(*sampler.sample(np.random.default_rng(0)))
    assert np.isfinite(losses["loss_d"]) and np.isfinite(losses["loss_adversarial"])
