"""Facts of the paper and the released code, pinned by hand: each expected value below is a number from the paper,
the original repository or a hand computation, never a constant imported from the module under test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from clipseg import Predictor, load_model
from clipseg.evaluation.metrics import THRESHOLDS, BinaryScores, threshold_statistics
from clipseg.image import preprocess
from clipseg.model.config import CLIPSegConfig
from clipseg.model.transformer import QuickGELU
from clipseg.testing import random_model, tiny_config
from clipseg.training.config import TrainConfig
from clipseg.training.trainer import Trainer
from clipseg.visual_prompt import prepare_support

# ImageNet statistics, as the original `norm()` (evaluation_utils.py) and the hub's preprocessor_config.json write them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI CLIP's own statistics: the released CLIPSeg does NOT use them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# (255, 128, 0) normalised with ImageNet statistics, worked out by hand: (v / 255 - mean) / std.
ORANGE = (255, 128, 0)
ORANGE_NORMALISED = (
    (1.0 - 0.485) / 0.229,  # 2.2489083
    (128 / 255 - 0.456) / 0.224,  # 0.2051821
    (0.0 - 0.406) / 0.225,  # -1.8044444
)


# ---- 1. image normalisation ----------------------------------------------------------------------------------


def test_default_normalisation_is_imagenet():
    config = CLIPSegConfig()
    assert tuple(config.image_mean) == pytest.approx(IMAGENET_MEAN, abs=0)
    assert tuple(config.image_std) == pytest.approx(IMAGENET_STD, abs=0)
    assert tuple(tiny_config().image_mean) == pytest.approx(IMAGENET_MEAN, abs=0)


def test_predictor_feeds_hand_normalised_pixels_to_the_backbone():
    model = random_model(seed=1)
    seen: list[torch.Tensor] = []
    original = model.extract_features

    def recording(pixel_values, *args, **kwargs):
        seen.append(pixel_values.detach().clone())
        return original(pixel_values, *args, **kwargs)

    model.extract_features = recording
    predictor = Predictor(model)
    predictor.set_image(Image.new("RGB", (90, 70), ORANGE))
    (pixels,) = seen
    assert pixels.shape[:2] == (1, 3)
    for channel, expected in enumerate(ORANGE_NORMALISED):
        torch.testing.assert_close(pixels[0, channel], torch.full(pixels.shape[-2:], expected), atol=1e-5, rtol=0)
    # A fixed non-uniform 2x2 image at its own size: no resampling, so every value is a hand computation.
    values = np.array([[[0, 0, 0], [255, 255, 255]], [[51, 102, 153], [255, 0, 128]]], dtype=np.uint8)
    tensor = preprocess(Image.fromarray(values), 2, model.config.image_mean, model.config.image_std)
    expected = (values.astype(np.float64) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(tensor.numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    assert tensor[0, 0, 0].item() == pytest.approx(-0.485 / 0.229, abs=1e-5)


def test_transformers_checkpoint_uses_its_preprocessor_config(tmp_path: Path):
    pytest.importorskip("transformers")
    from clipseg.testing import random_transformers_clipseg

    directory = tmp_path / "hub-layout"
    random_transformers_clipseg(tiny_config(), seed=2).save_pretrained(directory)
    assert not (directory / "preprocessor_config.json").exists()
    assert tuple(load_model(directory).config.image_mean) == pytest.approx(IMAGENET_MEAN, abs=0)
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": 64, "width": 64},
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    config = load_model(directory).config
    assert tuple(config.image_mean) == pytest.approx(CLIP_MEAN, abs=0)
    assert tuple(config.image_std) == pytest.approx(CLIP_STD, abs=0)


# ---- 2. IoU_BIN counts false positives -----------------------------------------------------------------------


def test_iou_bin_against_a_naive_computation_with_false_positives():
    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(3, 20, 20, generator=generator) > 0.6).float()
    probabilities = (0.6 * targets + 0.5 * torch.rand(3, 20, 20, generator=generator)).clamp(0, 1)
    scores = BinaryScores.from_statistics(threshold_statistics(probabilities, targets).sum(0).numpy())
    p, g = probabilities.numpy().astype(np.float32).ravel(), targets.numpy().ravel() > 0.5
    some_fp = False
    for index, t in enumerate(THRESHOLDS.astype(np.float32)):
        predicted = p > t
        tp, fp = np.sum(predicted & g), np.sum(predicted & ~g)
        fn, tn = np.sum(~predicted & g), np.sum(~predicted & ~g)
        some_fp |= fp > 0 and tn > 0
        naive = (tp / (1 + tp + fp + fn) + tn / (1 + tn + fp + fn)) / 2
        assert scores.iou_bin[index] == pytest.approx(naive, abs=1e-12), t
    assert some_fp


# ---- 3./4. training schedule and defaults ----------------------------------------------------------------------


def test_training_defaults_are_the_papers():
    """Supplementary: 20,000 iterations, batches of 64, lr 0.001 with cosine decay (to 0.0001 in the released
    experiments/phrasecut.yaml, eta_min), AdamW; paper Sec. 5: 20 % negatives for PC+; templates shuffle+, 352 px."""
    config = TrainConfig()
    assert config.optim.max_iterations == 20000
    assert config.optim.batch_size == 64
    assert config.optim.lr == 0.001
    assert config.optim.lr_min == 0.0001
    assert config.data.negative_prob == 0.2
    assert config.data.prompt_templates == "shuffle+"
    assert config.data.image_size == 352
    assert config.model.preset == "rd64"
    assert config.model.dropout == 0.1  # torch's TransformerEncoderLayer default, as released


def _cosine(step: int, total: int, lr: float, lr_min: float) -> float:
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * step / total)) / 2


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
def test_cosine_schedule_runs_from_lr_to_lr_min(tmp_path: Path):
    from training_fixtures import shapes_dataset, tiny_train_config

    config = tiny_train_config(tmp_path, optim={"max_iterations": 8, "lr": 0.01, "lr_min": 0.002, "batch_size": 4})
    trainer = Trainer(config, train_dataset=shapes_dataset())
    # The training set's negatives come from the training config, not the dataset's own default.
    assert trainer.train_dataset.negative_prob == config.data.negative_prob
    used: list[float] = []
    step = trainer.optimizer.step

    def recording(*args, **kwargs):
        used.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording
    trainer.train()
    assert len(used) == 8
    assert used[0] == pytest.approx(0.01, rel=1e-9)
    assert used[4] == pytest.approx((0.01 + 0.002) / 2, rel=1e-9)  # the midpoint of the cosine
    for k, lr in enumerate(used):
        assert lr == pytest.approx(_cosine(k, 8, 0.01, 0.002), rel=1e-9), k
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.002, rel=1e-9)  # the floor, reached at the end


# ---- 5. CLIP-internal masking, as the original visual_forward does it ------------------------------------------


def _layer_norm(x, prefix, state, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * state[prefix + ".weight"] + state[prefix + ".bias"]


def _masked_image_embedding(state, config, image, mask, mask_layer, mask_type):
    """The original `visual_forward(x, mask=(mask_layer, mask_type, mask))` in float64, written from its code:
    scaled q k^T; for 'cls_token' row 0 (columns 1:) is multiplied by the mask, for 'all' rows 1: (columns 1:);
    masking in block `mask_layer` or in every block when it is 'all'."""
    vision = config.vision
    patch, width, heads = vision.patch_size, vision.width, vision.heads
    rows, cols = image.shape[1] // patch, image.shape[2] // patch
    patches = image.reshape(3, rows, patch, cols, patch).permute(1, 3, 0, 2, 4).reshape(rows * cols, -1)
    x = torch.cat([state["visual.class_embedding"][None], patches @ state["visual.conv1.weight"].reshape(width, -1).T])
    x = _layer_norm(x + state["visual.positional_embedding"], "visual.ln_pre", state)
    token_mask = torch.nn.functional.interpolate(mask[None, None].double(), (rows, cols))[0, 0].reshape(-1)
    size = width // heads
    for i in range(vision.layers):
        p = f"visual.transformer.resblocks.{i}."
        h = _layer_norm(x, p + "ln_1", state)
        q, k, v = (h @ state[p + "attn.in_proj_weight"].T + state[p + "attn.in_proj_bias"]).split(width, dim=-1)
        out = torch.zeros_like(h)
        for head in range(heads):
            sl = slice(head * size, (head + 1) * size)
            logits = (q[:, sl] * size**-0.5) @ k[:, sl].T
            if mask_layer == "all" or mask_layer == i:
                if mask_type == "cls_token":
                    logits[0, 1:] = logits[0, 1:] * token_mask
                else:
                    logits[1:, 1:] = logits[1:, 1:] * token_mask[None]
            out[:, sl] = torch.softmax(logits, dim=-1) @ v[:, sl]
        x = x + out @ state[p + "attn.out_proj.weight"].T + state[p + "attn.out_proj.bias"]
        h = _layer_norm(x, p + "ln_2", state) @ state[p + "mlp.c_fc.weight"].T + state[p + "mlp.c_fc.bias"]
        x = x + (h * torch.sigmoid(1.702 * h)) @ state[p + "mlp.c_proj.weight"].T + state[p + "mlp.c_proj.bias"]
    return _layer_norm(x[0], "visual.ln_post", state) @ state["visual.proj"]


@pytest.mark.parametrize(
    "mode, mask_layer, mask_type",
    [
        ("cls_last", tiny_config().vision.layers - 1, "cls_token"),
        ("cls_all", "all", "cls_token"),
        ("all_all", "all", "all"),
    ],
)
def test_token_mask_modes_match_the_original_computation(mode, mask_layer, mask_type):
    model = random_model(seed=7).double()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    image = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mask = torch.zeros(64, 64)
    mask[8:40, 20:60] = 1
    with torch.no_grad():
        ours = model.encode_image(image[None], token_mask=mask[None], token_mask_mode=mode)[0]
    expected = _masked_image_embedding(state, tiny_config(), image, mask, mask_layer, mask_type)
    torch.testing.assert_close(ours, expected, atol=1e-9, rtol=1e-9)
    # and the modes are distinct computations: masking only the first block is not `cls_last`
    first_block = _masked_image_embedding(state, tiny_config(), image, mask, 0, "cls_token")
    assert (ours - first_block).abs().max() > 1e-6


# ---- 6. QuickGELU's training branch ------------------------------------------------------------------------------


def test_quick_gelu_gradient_branch_matches_its_definition():
    x = torch.linspace(-4, 4, 41, dtype=torch.float64, requires_grad=True)
    y = QuickGELU()(x)
    s = torch.sigmoid(1.702 * x.detach())
    torch.testing.assert_close(y.detach(), x.detach() * s, atol=1e-15, rtol=0)
    (gradient,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gradient, s + 1.702 * x.detach() * s * (1 - s), atol=1e-12, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(QuickGELU()(x.detach()), y.detach(), atol=0, rtol=0)


def test_towers_with_gradients_give_the_inference_outputs():
    model = random_model(seed=4)
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    ids = model.tokenizer(["a cup on a table"]).ids
    with torch.inference_mode():
        image_inference, text_inference = model.encode_image(pixels), model.encode_text(ids)
    pixels.requires_grad_(True)
    model.text.requires_grad_(True)  # fine-tuning CLIP: the text tower runs its training branch too
    image_trained = model.encode_image(pixels)
    text_trained = model.encode_text(ids)
    torch.testing.assert_close(image_trained.detach(), image_inference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text_trained.detach(), text_inference, atol=1e-5, rtol=1e-5)
    (image_trained.sum() + text_trained.sum()).backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


# ---- the default visual prompt's pixels (crop_blur_highlight: blur sigma 3, background 0.1, context 0.1) --------


def test_default_visual_prompt_pixels_match_the_original_img_preprocess():
    """`img_preprocess(blur=3, center_context=0.1, bg_fac=0.1, image_size=S)` of evaluation_utils.py, by hand:
    15x15 Gaussian (sigma 3, reflect-101 borders as cv2.GaussianBlur), img*mask + 0.1*blurred*(1-mask), crop to
    the mask's box grown by 10 % of its extent per axis (int-truncated), zero-pad to a centred square, nearest
    resize."""
    rng = np.random.default_rng(11)
    image = rng.normal(size=(3, 48, 48)).astype(np.float32)
    mask = np.zeros((48, 48), dtype=np.float32)
    mask[10:30, 5:25] = 1  # rows 10..29 (extent 20), columns 5..24 (extent 20)
    offsets = np.arange(15) - 7.0
    kernel = np.exp(-(offsets**2) / 18.0)
    kernel /= kernel.sum()
    blurred = np.stack(
        [ndimage.correlate1d(ndimage.correlate1d(c, kernel, axis=0, mode="mirror"), kernel, axis=1, mode="mirror")
         for c in image.astype(np.float64)]
    )
    composite = image * mask + 0.1 * blurred * (1 - mask)
    # box grows by int(0.1 * 20) = 2 on every side: rows 8..31, columns 3..26 (24 x 24, already square)
    crop = composite[:, 8:32, 3:27]
    size = 36  # nearest from 24 to 36: source index floor(i * 24 / 36)
    source = np.floor(np.arange(size) * 24 / size).astype(int)
    expected = crop[:, source][:, :, source]
    support = prepare_support(torch.from_numpy(image), torch.from_numpy(mask), "crop_blur_highlight", size)
    assert support.token_mask is None
    np.testing.assert_allclose(support.pixel_values.numpy(), expected, atol=1e-5)


def test_training_reads_clip_blocks_3_7_9_by_default():
    """Paper Sec. 3 and the released experiments/phrasecut.yaml: activations of CLIP blocks 3, 7 and 9 (0-based)."""
    from clipseg.training.config import ModelSettings
    from clipseg.training.model import build_model

    narrow = {"width": 32, "heads": 1, "mlp_width": 32, "output_dim": 32}
    architecture = {"vision": {**narrow, "layers": 12, "patch_size": 16, "image_size": 64}, "text": {**narrow, "layers": 1}}
    model = build_model(ModelSettings(clip="random", architecture=architecture), seed=0)
    assert model.config.decoder.extract_layers == (3, 7, 9)
