"""The PixelCLIP meta-architecture end to end with a tiny random CLIP: training signal, gradients,
inference contract of detectron2 (every image, original size), both protocols, bf16, DINO masks,
config validation."""

import copy
import itertools
import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import MODEL_CONFIGS, assert_close_to_float64
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from pixelclip.config import add_pixelclip_config
from pixelclip.solver import build_optimizer

GRID = 32


def tiny_cfg(name: str = "tiny-vit", **overrides):
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    cfg.merge_from_file(str(MODEL_CONFIGS.parent / "Base-PixelCLIP.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLIP.MODEL_NAME = name
    cfg.MODEL.CLIP.MODEL_CONFIG = str(MODEL_CONFIGS / f"{name}.json")
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.CLIP.FORCE_QUICK_GELU = False
    cfg.MODEL.CLIP.RESOLUTION = 64
    cfg.MODEL.PIXELCLIP.MASK_RESOLUTION = GRID
    cfg.MODEL.PIXELCLIP.TEST.FEATURE_RESOLUTION = 16
    cfg.MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE = "single"
    cfg.MODEL.PIXELCLIP.TEST.SLIDE_CROP = 32
    cfg.MODEL.PIXELCLIP.TEST.SLIDE_STRIDE = 16
    cfg.MODEL.PROMPT.NUM_CLUSTERS = 8
    cfg.SEED = 0
    if name == "tiny-convnext":
        cfg.MODEL.CLIP.FINETUNE = "full"
        cfg.MODEL.CLIP.RESOLUTION = 64
        cfg.MODEL.PIXELCLIP.TEMPERATURE = 1.0
        cfg.MODEL.PIXELCLIP.TEST.SLIDE_CROP = 64
        cfg.MODEL.PIXELCLIP.TEST.SLIDE_STRIDE = 32
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return cfg


def training_batch(seed: int = 0, num_images: int = 2, masks_per_image=(5, 3)):
    """Images with a few rectangles and the rectangles as class-agnostic masks."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(num_images):
        image = torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8)
        n = masks_per_image[i % len(masks_per_image)]
        masks = torch.zeros(n, GRID, GRID, dtype=torch.bool)
        for j in range(n):
            y, x = torch.randint(0, GRID - 8, (2,), generator=g).tolist()
            h, w = torch.randint(4, 12, (2,), generator=g).tolist()
            masks[j, y : y + h, x : x + w] = True
            image[:, 2 * y : 2 * (y + h), 2 * x : 2 * (x + w)] = 40 * (j + 1)
        valid = torch.ones(GRID, GRID, dtype=torch.bool)
        valid[:4, :4] = False
        strong = (image.float() * 0.8).to(torch.uint8)
        batch.append(
            {
                "image": image,
                "image_strong": strong,
                "masks": masks,
                "valid": valid,
                "height": 64,
                "width": 64,
            }
        )
    return batch


@pytest.fixture(scope="module")
def vit_model():
    return build_model(tiny_cfg())


def _encoder_in(model, dtype):
    """The student's dense image encoder, or a copy of it in ``dtype``."""
    encoder = model.backbone.encoder
    return encoder if dtype == torch.float32 else copy.deepcopy(encoder).to(dtype)


def _pixels(model, image, dtype):
    """uint8 (3, H, W) RGB -> CLIP-normalised pixels in ``dtype``."""
    return (image.to(dtype) - model.pixel_mean.to(dtype)) / model.pixel_std.to(dtype)


@torch.no_grad()
def slide_reference(model, image, text, rows, cols, dtype=torch.float32):
    """The sliding-window protocol computed here window by window: the 32 x 32 windows at the
    given rows and columns, cosine maps upsampled to the window, overlaps averaged."""
    x, encoder, text = _pixels(model, image, dtype), _encoder_in(model, dtype), text.to(dtype)
    _, height, width = image.shape
    total = torch.zeros(text.shape[0], height, width, dtype=dtype)
    count = torch.zeros(1, height, width, dtype=dtype)
    for y in rows:
        for x0 in cols:
            feats = encoder(x[None, :, y : y + 32, x0 : x0 + 32])
            cos = torch.einsum("bdhw,cd->bchw", F.normalize(feats, dim=1), text)
            total[:, y : y + 32, x0 : x0 + 32] += F.interpolate(
                cos, size=(32, 32), mode="bilinear", align_corners=False
            )[0]
            count[:, y : y + 32, x0 : x0 + 32] += 1
    return total / count


@torch.no_grad()
def whole_reference(model, image, text, dtype=torch.float32):
    """METHOD §9's reference protocol computed here: the image squashed to 64 x 64, features
    bilinear to 16 x 16, cosine, bilinear back to the image size."""
    x, encoder, text = _pixels(model, image, dtype), _encoder_in(model, dtype), text.to(dtype)
    x = F.interpolate(x[None], size=(64, 64), mode="bilinear", align_corners=False)
    feats = F.interpolate(encoder(x), size=(16, 16), mode="bilinear", align_corners=False)
    cos = torch.einsum("bdhw,cd->bchw", F.normalize(feats, dim=1), text)
    return F.interpolate(cos, size=image.shape[-2:], mode="bilinear", align_corners=False)[0]


def _loss(model, batch):
    model.train()
    with torch.no_grad(), EventStorage():
        return model(batch)["loss_masks"].item()


def test_training_through_detectron2_trainer_lowers_the_loss():
    cfg = tiny_cfg(**{"SOLVER.BASE_LR": 0.01})
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    model = build_model(cfg)
    batch = training_batch()
    before = _loss(model, batch)
    trainer = SimpleTrainer(model, itertools.repeat(batch), build_optimizer(cfg, model))
    trainer.train(0, 3)
    after = _loss(model, batch)
    assert torch.isfinite(torch.tensor(before)) and after < before


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-convnext"])
def test_gradients_reach_exactly_the_trainable_parameters(name):
    model = build_model(tiny_cfg(name))
    model.train()
    with EventStorage():
        loss = model(training_batch())["loss_masks"]
    loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got == trainable
    assert "sem_seg_head.prompts.prompt_tokens" in got
    assert any(n.startswith("sem_seg_head.decoder.") for n in got)
    assert not any(n.startswith(("sem_seg_head.text.", "teacher.")) for n in trainable)
    if name == "tiny-vit":
        visual = {n for n in got if n.startswith("backbone.")}
        assert "backbone.encoder.visual.positional_embedding" in visual
        assert all(".attn." in n or n.endswith("positional_embedding") for n in visual)
    else:
        assert len([n for n in got if n.startswith("backbone.")]) == len(
            [n for n, _ in model.backbone.named_parameters()]
        )


def test_teacher_follows_the_student_by_ema(vit_model):
    model = vit_model
    student = dict(model.backbone.encoder.named_parameters())
    with torch.no_grad():
        student["visual.positional_embedding"].add_(1.0)
    teacher = dict(model.teacher.encoder.named_parameters())
    before = teacher["visual.positional_embedding"].detach().clone()
    _loss(model, training_batch())
    after = student["visual.positional_embedding"].detach()
    expected = 0.999 * before + 0.001 * after
    expected64 = 0.999 * before.double() + 0.001 * after.double()
    assert_close_to_float64(teacher["visual.positional_embedding"], expected64, expected)
    assert not model.teacher.training
    with torch.no_grad():
        student["visual.positional_embedding"].sub_(1.0)


def test_an_image_without_masks_and_a_batch_without_masks_train(vit_model):
    batch = training_batch(masks_per_image=(0, 3))
    assert batch[0]["masks"].shape == (0, GRID, GRID)
    assert torch.isfinite(torch.tensor(_loss(vit_model, batch)))
    empty = training_batch(masks_per_image=(0,))
    vit_model.train()
    with EventStorage():
        loss = vit_model(empty)["loss_masks"]
    loss.backward()  # connected to the graph even with nothing to learn from
    assert loss.item() == 0.0


@pytest.mark.parametrize("protocol", ["whole", "slide"])
def test_inference_returns_every_image_at_its_original_size(protocol):
    model = build_model(tiny_cfg(**{"MODEL.PIXELCLIP.TEST.PROTOCOL": protocol})).eval()
    names = ["cat", "dog, puppy", "grass"]
    model.set_vocabulary(names)
    g = torch.Generator().manual_seed(0)
    inputs = [
        {
            "image": torch.randint(0, 256, (3, 48, 80), generator=g, dtype=torch.uint8),
            "height": 96,
            "width": 160,
        },
        {"image": torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8)},
        {"image": torch.randint(0, 256, (3, 20, 24), generator=g, dtype=torch.uint8)},
    ]
    outputs = model(inputs)
    assert [tuple(o["sem_seg"].shape) for o in outputs] == [(3, 96, 160), (3, 64, 64), (3, 20, 24)]
    assert all(torch.isfinite(o["sem_seg"]).all() for o in outputs)
    # one image alone gives the same scores as inside a batch: both are the protocol's scores
    alone = model(inputs[1:2])[0]["sem_seg"]
    text, image = model.sem_seg_head.class_embeddings(names), inputs[1]["image"]

    def reference(dtype):
        if protocol == "whole":
            return whole_reference(model, image, text, dtype)
        # 64 x 64, crop 32, stride 16: windows at rows and columns 0, 16, 32
        return slide_reference(model, image, text, (0, 16, 32), (0, 16, 32), dtype)

    expected, expected64 = reference(torch.float32), reference(torch.float64)
    assert_close_to_float64(outputs[1]["sem_seg"], expected64, expected, msg="in a batch")
    assert_close_to_float64(alone, expected64, expected, msg="alone")


def test_slide_protocol_matches_a_window_by_window_computation():
    cfg = tiny_cfg(**{"MODEL.PIXELCLIP.TEST.PROTOCOL": "slide"})  # crop 32, stride 16
    model = build_model(cfg).eval()
    names = ["red", "green", "blue"]
    model.set_vocabulary(names)
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    out = model([{"image": image, "height": 40, "width": 56}])[0]["sem_seg"]
    # independent computation: every 32 x 32 window at rows 0, 8 and columns 0, 16, 24
    text = model.sem_seg_head.class_embeddings(names)
    expected = slide_reference(model, image, text, (0, 8), (0, 16, 24))
    expected64 = slide_reference(model, image, text, (0, 8), (0, 16, 24), dtype=torch.float64)
    assert_close_to_float64(out, expected64, expected)


def test_whole_protocol_matches_a_direct_computation(vit_model):
    model = vit_model.eval()
    names = ["red", "green"]
    model.set_vocabulary(names)
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    out = model([{"image": image, "height": 40, "width": 56}])[0]["sem_seg"]
    # independent computation of METHOD §9's reference protocol
    text = model.sem_seg_head.class_embeddings(names)
    expected = whole_reference(model, image, text)
    assert_close_to_float64(out, whole_reference(model, image, text, torch.float64), expected)


def test_vocabulary_can_change_at_run_time(vit_model):
    model = vit_model.eval()
    image = {"image": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)}
    model.set_vocabulary(["a", "b"])
    assert model([image])[0]["sem_seg"].shape[0] == 2
    model.set_vocabulary(["a", "b", "c", "d"])
    assert model([image])[0]["sem_seg"].shape[0] == 4


def test_missing_vocabulary_is_a_clear_error():
    model = build_model(tiny_cfg()).eval()
    with pytest.raises(ValueError, match="no vocabulary"):
        model([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}])
    with pytest.raises(ValueError):
        model.set_vocabulary([])


def test_bf16_autocast_trains_and_infers(caplog):
    with caplog.at_level(logging.WARNING, logger="pixelclip.modeling.meta_arch"):
        model = build_model(tiny_cfg(**{"MODEL.PIXELCLIP.PRECISION": "bf16"}))
    # the slow-bf16 warning appears exactly on CPUs without bf16 instructions
    emulated = not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert ("bf16 is emulated" in caplog.text) == emulated
    model.train()
    with EventStorage():
        loss = model(training_batch())["loss_masks"]
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    model.eval().set_vocabulary(["a", "b"])
    out = model([{"image": torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)}])[0]["sem_seg"]
    assert out.shape == (2, 32, 48) and out.dtype == torch.float32


def test_cost_maps_and_decoder_stem_stay_float32_under_bf16():
    """bf16 would round the cosines to steps of 2^-9 near 0.3: they and the stem stay fp32."""
    head = build_model(tiny_cfg()).sem_seg_head
    seen = []
    head.decoder.conv0.register_forward_hook(lambda m, i, o: seen.append((i[0], o.dtype)))
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, 32, 4, 4, generator=g).bfloat16()
    prompts = torch.randn(3, 32, generator=g)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(features, prompts)
    cost, stem_dtype = seen[0]
    assert cost.dtype == stem_dtype == torch.float32 and logits.shape == (1, 3, 16, 16)

    def cosine(features, prompts):
        return torch.einsum(
            "bdhw,kd->bkhw", F.normalize(features, dim=1), F.normalize(prompts, dim=-1)
        )

    expected = cosine(features.float(), prompts)
    expected64 = cosine(features.double(), prompts.double())
    assert_close_to_float64(cost.view(1, 3, 4, 4), expected64, expected)


def test_dino_mask_source_trains_without_mask_files():
    cfg = tiny_cfg(
        **{"INPUT.MASK_SOURCE": "dino", "MODEL.DINO.RESOLUTION": 64, "MODEL.DINO.NUM_CLUSTERS": 4}
    )
    model = build_model(cfg)
    batch = training_batch()
    for x in batch:
        x["masks"] = torch.zeros(0, GRID, GRID, dtype=torch.bool)  # the mapper delivers none
    assert model.mask_generator is not None
    assert _loss(model, batch) > 0


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.PROMPT.NUM_CLUSTERS", 1),
        ("MODEL.PROMPT.LENGTH", 0),
        ("MODEL.PIXELCLIP.TEMPERATURE", 0.0),
        ("MODEL.CLIP.RESOLUTION", 70),
        ("MODEL.CLIP.FINETUNE", "lora"),
        ("MODEL.CLIP.DENSE_VARIANT", "fancy"),
        ("MODEL.PIXELCLIP.TEST.PROTOCOL", "tiles"),
        ("MODEL.PIXELCLIP.PRECISION", "fp8"),
        ("INPUT.MASK_SOURCE", "felzenszwalb"),
        ("MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE", "none"),
    ],
)
def test_impossible_config_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key.split(".")[-1]):
        build_model(tiny_cfg(**{key: value}))


# ------------------------------------------------------------------------ ablations (Quick start)
def test_without_semantic_clustering_each_mask_is_its_own_target():
    model = build_model(tiny_cfg(**{"MODEL.PIXELCLIP.SEMANTIC_CLUSTERING": False}))
    model.train()
    batch = training_batch(masks_per_image=(5, 3))
    with EventStorage():
        loss = model(batch)["loss_masks"]
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    # the prompts take no part: no gradient; the decoder and the image tower learn
    assert model.sem_seg_head.prompts.prompt_tokens.grad is None
    assert model.sem_seg_head.decoder.proj.weight.grad.abs().sum() > 0
    assert model.backbone.encoder.visual.positional_embedding.grad.abs().sum() > 0


def test_frozen_prompts_keep_their_initial_tokens():
    cfg = tiny_cfg(**{"MODEL.PROMPT.FROZEN": True, "SOLVER.BASE_LR": 0.01})
    model = build_model(cfg)
    before = model.sem_seg_head.prompts.prompt_tokens.detach().clone()
    optimizer = build_optimizer(cfg, model)
    names = {n for g in optimizer.param_groups for n in g["names"]}
    assert "sem_seg_head.prompts.prompt_tokens" not in names
    assert any(n.startswith("sem_seg_head.decoder.") for n in names)
    SimpleTrainer(model, itertools.repeat(training_batch()), optimizer).train(0, 2)
    assert torch.equal(model.sem_seg_head.prompts.prompt_tokens, before)


def test_fixed_class_name_prompts_replace_the_learnable_classes():
    names = ["sky", "grass", "water", "sand"]
    cfg = tiny_cfg(**{"MODEL.PROMPT.CLASS_NAMES": names, "MODEL.PROMPT.NUM_CLUSTERS": 4})
    model = build_model(cfg)
    head = model.sem_seg_head
    torch.testing.assert_close(head.prompt_embeddings(), head.class_embeddings(names))
    assert not head.prompts.prompt_tokens.requires_grad
    model.train()
    with EventStorage():
        loss = model(training_batch())["loss_masks"]
    loss.backward()
    assert torch.isfinite(loss) and head.decoder.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="CLASS_NAMES.*NUM_CLUSTERS"):
        build_model(tiny_cfg(**{"MODEL.PROMPT.CLASS_NAMES": names}))  # 4 names, k = 8


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-convnext"])
def test_grad_checkpointing_gives_the_same_loss_and_gradients(name):
    results = []
    for on in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(name, **{"MODEL.CLIP.GRAD_CHECKPOINTING": on}))
        if name == "tiny-vit":
            assert model.backbone.encoder.visual.transformer.grad_checkpointing == on
            assert not model.teacher.encoder.visual.transformer.grad_checkpointing
        model.train()
        with EventStorage():
            loss = model(training_batch())["loss_masks"]
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys() and any(n.startswith("backbone.") for n in grads_a)
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-4, atol=1e-6, msg=n)
