"""SAN: the tiny network's shapes, recognition mask and training rule, full-size parameter counts
against the official training logs (spec baselines.md 5, 10), the set criterion, original-format
checkpoints, and the adapter end to end (run, train)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests_helpers import spec_keys

from ovrsisbench.errors import UserError
from ovrsisbench.models.san.checkpoint import (
    UNUSED_KEYS,
    CheckpointMismatchError,
    keys,
    load,
)
from ovrsisbench.models.san.criterion import (
    CriterionConfig,
    SetCriterion,
    Target,
    semantic_targets,
)
from ovrsisbench.models.san.model import CONFIGS, SAN, recognition_mask, semantic_scores
from ovrsisbench.registry import create_adapter
from ovrsisbench.train import build_optimizer

CLASSES = [["road"], ["tree", "forest"], ["water"]]
KEY_FILES = {"vit-b": "san_keys_vitb.txt", "vit-l": "san_keys_vitl.txt"}

# Trainable parameters: the optimizer tables of resources/san_vit_b_16.log and
# san_vit_large_14.log print "Total 8.37M" / "9.32M"; the exact integers and the per-module split
# below are derived (analytic count over the original modules, equal to our meta-device count).
TRAINABLE = {"vit-b": 8_370_866, "vit-l": 9_321_650}
LOGGED_M = {"vit-b": "8.37", "vit-l": "9.32"}
MODULES = {  # module -> (vit-b, vit-l) parameters (derived)
    "side_adapter_network.vit_model": (6_123_120, 6_123_120),  # patch embed, 40x40 pos, 8 blocks
    "side_adapter_network.query_embed": (24_000, 24_000),
    "side_adapter_network.query_pos_embed": (24_000, 24_000),
    "side_adapter_network.fusion_layers": (744_384, 992_192),  # 4 x (LN 768|1024, 1x1 -> 240)
    "side_adapter_network.mask_decoder": (1_303_554, 1_566_722),  # attn MLP to 3072 | 4096
    "clip.visual.positional_embedding": (151_296, 590_848),  # 197 x 768 | 577 x 1024
    "bg_embed": (512, 768),
}
# open_clip ViT-B-16 / ViT-L-14-336 (the same CLIP counts as test_catseg.py's, param_counts.md)
CLIP_TOTAL = {"vit-b": 149_620_737, "vit-l": 427_944_193}


def count(module: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters of ``module``."""
    parameters = list(module.parameters())
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)


def unit_text(rows: int, dim: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rows)
    return F.normalize(torch.randn(rows, dim, generator=generator), dim=1)


@pytest.fixture(scope="module")
def tiny() -> SAN:
    torch.manual_seed(0)
    return SAN(CONFIGS["tiny"]).eval()


def _tiny_adapter(**options) -> object:
    adapter = create_adapter("san", backbone="tiny", **options)
    adapter.load(None, "cpu")
    adapter.set_vocabulary(CLASSES)
    return adapter


# -- the network ------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "rows"), [((64, 64), 1), ((96, 160), 5)])
def test_tiny_output_shapes(tiny, size, rows):
    with torch.no_grad():
        [(masks, logits)] = tiny(torch.randn(2, 3, *size), unit_text(rows))
    assert masks.shape == (2, 8, size[0] // 16, size[1] // 16)  # 8 queries, 1/16 resolution
    assert logits.shape == (2, 8, rows + 1)  # void last
    assert torch.isfinite(masks).all() and torch.isfinite(logits).all()


def test_training_decodes_both_deep_supervision_blocks():
    torch.manual_seed(1)
    model = SAN(CONFIGS["tiny"]).train()
    outputs = model(torch.randn(1, 3, 64, 96), unit_text(3))
    assert len(outputs) == 2 and CONFIGS["vit-b"].deep_supervision == (7, 8)
    assert all(masks.shape == (1, 8, 4, 6) for masks, _ in outputs)


def test_clip_sees_the_downscaled_image_and_drops_a_partial_patch(tiny):
    """0.5 x of a 640 x 640 input -> a 20 x 20 CLIP grid (spec: 320^2 for ViT-B); a 100-px CLIP
    input gives 6 patches (the strided conv drops the remainder), not 7."""
    maps, tokens, grid = tiny.encode_image(torch.randn(1, 3, 100, 100))
    assert grid == (6, 6) and tokens.shape == (1, 37, 32)
    assert set(maps) == {0, 1, 2} and maps[0].shape == (1, 32, 6, 6)
    calls = []
    hook = tiny.clip.visual.conv1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    try:
        with torch.no_grad():
            tiny(torch.randn(1, 3, 640, 640), unit_text(2))
    finally:
        hook.remove()
    assert calls == [(1, 3, 320, 320)]


def test_recognition_mask_by_hand():
    """2 SOS tokens, CLS, 3 patches; rows attend to columns; -100 blocks."""
    bias = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    b = -100.0
    expected = torch.tensor(
        [
            [0, b, b, 1, 2, 3],  # SOS 0: itself, not SOS 1 nor CLS, patches with its bias
            [b, 0, b, 4, 5, 6],
            [b, b, 0, 0, 0, 0],  # CLS: no SOS, CLS and patches freely
            [b, b, 0, 0, 0, 0],
            [b, b, 0, 0, 0, 0],
            [b, b, 0, 0, 0, 0],
        ]
    )
    assert torch.equal(recognition_mask(bias, 3)[0], expected)


def test_each_query_is_recognised_independently(tiny):
    """A query's embedding depends on its own attention bias only (SOS tokens do not see each
    other), and does depend on it."""
    torch.manual_seed(2)
    _, tokens, grid = tiny.encode_image(torch.randn(1, 3, 64, 64))
    bias = torch.randn(1, 2, 8, 4, 4)
    with torch.no_grad():
        before = tiny.recognise(tokens, grid, bias)
        changed = bias.clone()
        changed[:, :, 3] = torch.randn(1, 2, 4, 4) * 5
        after = tiny.recognise(tokens, grid, changed)
    assert before.shape == (1, 8, 24)
    torch.testing.assert_close(before.norm(dim=-1), torch.ones(1, 8))
    untouched = [q for q in range(8) if q != 3]
    torch.testing.assert_close(after[:, untouched], before[:, untouched], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, 3], before[:, 3])


def test_semantic_scores_drop_void_and_sum_over_queries():
    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]]])  # 2 queries, 2 classes + void
    masks = torch.tensor([[[[0.0]], [[10.0]]]])
    scores = semantic_scores(logits, masks)
    probabilities = logits.softmax(-1)[0, :, :2]
    sigmoid = torch.tensor([0.5, torch.tensor(10.0).sigmoid().item()])
    torch.testing.assert_close(scores[0, :, 0, 0], (probabilities * sigmoid[:, None]).sum(0))


def test_only_the_side_network_pos_embedding_and_void_train():
    """After one optimiser step of the recipe, the frozen CLIP (image and text towers) is
    unchanged; its positional embedding, the side network and the void embedding moved."""
    adapter = _tiny_adapter()
    recipe = adapter.training_recipe(CLASSES)
    network = recipe.module.train()
    before = {name: value.clone() for name, value in network.state_dict().items()}
    optimizer = build_optimizer(recipe, lr=1e-2, weight_decay=None)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 64, 64), generator=generator)
    recipe.loss(torch.rand(2, 3, 64, 64, generator=generator) * 255, labels).backward()
    optimizer.step()
    trainable = {name for name, p in network.named_parameters() if p.requires_grad}
    assert trainable == {
        name
        for name in before
        if name.startswith(("side_adapter_network.", "bg_embed"))
        or name == "clip.visual.positional_embedding"
    }
    for name, value in network.state_dict().items():
        if name not in trainable:  # CLIP's image and text towers
            assert torch.equal(value, before[name]), name
    for name in (
        "clip.visual.positional_embedding",
        "bg_embed",
        "side_adapter_network.query_embed",
        "side_adapter_network.vit_model.blocks.0.attn.qkv.weight",
        "side_adapter_network.fusion_layers.layer_2.input_proj.1.weight",
        "side_adapter_network.mask_decoder.attn_mlp.layers.2.weight",
    ):
        assert not torch.equal(network.state_dict()[name], before[name]), name


# -- full-size parameter counts ------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["vit-b", "vit-l"])
def test_full_size_trainable_counts_match_the_official_logs(backbone):
    model = SAN(CONFIGS[backbone], device="meta")
    column = 0 if backbone == "vit-b" else 1
    parameters = dict(model.named_parameters())
    rows = []
    for name, counts in MODULES.items():
        if name in parameters:
            numel = parameters[name].numel() * parameters[name].requires_grad
        else:
            numel = count(model.get_submodule(name))[1]
        rows.append(f"{name:<45}{numel:>12,}")
        assert numel == counts[column], name
    print(f"\nSAN {backbone} trainable parameters\n" + "\n".join(rows))
    total, trainable = count(model)
    assert trainable == TRAINABLE[backbone] == sum(c[column] for c in MODULES.values())
    assert f"{trainable / 1e6:.2f}" == LOGGED_M[backbone]
    assert count(model.clip) == (
        CLIP_TOTAL[backbone],
        MODULES["clip.visual.positional_embedding"][column],
    )
    assert (
        total
        == CLIP_TOTAL[backbone]
        + TRAINABLE[backbone]
        - MODULES["clip.visual.positional_embedding"][column]
    )


def test_adapters_info_reports_the_groups(cli):
    result = cli("adapters", "info", "san", "--backbone", "vit-b", "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    head = TRAINABLE["vit-b"] - 151_296
    assert info["groups"]["clip"] == {"total": CLIP_TOTAL["vit-b"], "trainable": 151_296}
    assert info["groups"]["head"] == {"total": head, "trainable": head}
    assert info["trainable"] == TRAINABLE["vit-b"]


# -- the set criterion --------------------------------------------------------------------------
def test_semantic_targets_one_mask_per_present_class():
    labels = torch.tensor([[[2, 2, 255], [0, 2, 255]]])
    [target] = semantic_targets(labels)
    assert target.labels.tolist() == [0, 2]
    assert target.masks.tolist() == [[[0, 0, 0], [1, 0, 0]], [[1, 1, 0], [0, 1, 0]]]


def test_matching_picks_the_query_that_fits():
    """Query 2 predicts class 1 on the left half, query 0 class 0 on the right half; the targets
    (class 0 right, class 1 left) are matched to exactly those queries."""
    torch.manual_seed(0)
    masks = torch.full((1, 4, 8, 8), -8.0)
    masks[0, 2, :, :4] = 8.0
    masks[0, 0, :, 4:] = 8.0
    logits = torch.zeros(1, 4, 3)
    logits[0, 2, 1] = logits[0, 0, 0] = 6.0
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, :, :16] = 1
    [(rows, cols)] = SetCriterion().match(logits, masks, semantic_targets(labels))
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 0, 1: 2}


def test_loss_weights_and_normalisation_by_hand():
    """Zero mask logits (grid_sample's zero padding then changes nothing: BCE = log 2 at every
    point) and full-image targets (only their border points are below 1: within 5e-3 in all)
    make the point sampling irrelevant: per layer 2 x CE (void weighted 0.1) + 5 x BCE + 5 x
    dice, summed over both layers; BCE and dice divided by the number of target masks (2
    images, 1 mask each)."""
    torch.manual_seed(0)
    config = CriterionConfig(num_points=256)
    assert (config.class_weight, config.mask_weight, config.dice_weight) == (2.0, 5.0, 5.0)
    assert (config.no_object_weight, CriterionConfig().num_points) == (0.1, 12_544)
    logits = torch.randn(2, 3, 3) * 3  # 3 queries, 2 classes + void
    masks = torch.zeros(2, 3, 4, 4)
    labels = torch.stack([torch.zeros(512, 512), torch.ones(512, 512)]).long()
    targets = semantic_targets(labels)
    # with equal mask costs, each image's target goes to the query most sure of its class
    best = logits.softmax(-1)[torch.arange(2), :, torch.arange(2)].argmax(-1)
    wanted = torch.full((2, 3), 2)
    wanted[torch.arange(2), best] = torch.arange(2)
    nll = -logits.log_softmax(-1).gather(-1, wanted[..., None])[..., 0]
    weight = torch.where(wanted == 2, 0.1, 1.0)
    ce = (weight * nll).sum() / weight.sum()
    bce = torch.tensor(2.0).log()  # 2 masks / 2 target masks
    dice = 1 - (2 * 0.5 * 256 + 1) / (0.5 * 256 + 256 + 1)  # 256 points, p = 1/2, targets 1
    layer = 2 * ce + 5 * bce + 5 * dice
    total = SetCriterion(config)([(masks, logits), (masks, logits)], targets)
    torch.testing.assert_close(total, 2 * layer, rtol=0, atol=5e-3)


def test_an_all_ignored_batch_gives_a_finite_loss_with_a_graph():
    masks = torch.randn(1, 4, 4, 4, requires_grad=True)
    logits = torch.randn(1, 4, 3, requires_grad=True)
    targets = [Target(torch.zeros(0, dtype=torch.long), torch.zeros(0, 16, 16))]
    loss = SetCriterion(CriterionConfig(num_points=16))([(masks, logits)], targets)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None


# -- original checkpoints -----------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["vit-b", "vit-l"])
def test_a_synthesised_original_checkpoint_loads_with_no_missing_or_unexpected_key(backbone):
    """Every key of the original layout (tests/data/san_keys_*.txt, derived from the SAN code;
    side-network names as in the official optimizer tables), on the meta device."""
    spec = spec_keys(KEY_FILES[backbone])
    model = SAN(CONFIGS[backbone], device="meta")
    mapping = keys(model.config)
    originals = [mapping.to_original(key) for key in model.state_dict()]
    assert len(set(originals)) == len(originals)  # one-to-one: no CLIP tensor has two keys
    state = {key: torch.empty(shape, device="meta") for key, shape in spec.items()}
    assert load(model, {"model": state}) == sorted(UNUSED_KEYS)
    rec_block = "clip_rec_head.resblocks.0.attn.in_proj_weight"
    assert mapping.from_original(rec_block) == (
        f"clip.visual.transformer.resblocks.{model.config.feature_layer}.attn.in_proj_weight"
    )
    gone = "side_adapter_network.mask_decoder.bias_scaling.weight"
    with pytest.raises(CheckpointMismatchError, match=f"missing keys: {gone}"):
        load(model, {k: v for k, v in state.items() if k != gone})
    extra = dict(state, **{"clip_rec_head.resblocks.9.ln_1.weight": state["clip_rec_head.proj"]})
    with pytest.raises(
        CheckpointMismatchError, match=r"unexpected keys: clip_rec_head\.resblocks\.9"
    ):
        load(model, extra)


def _original(model: SAN) -> dict[str, torch.Tensor]:
    mapping = keys(model.config)
    state = {mapping.to_original(k): v.clone() for k, v in model.state_dict().items()}
    return {
        **state,
        "ov_classifier.attn_mask": model.clip.attn_mask,
        "criterion.empty_weight": torch.ones(4),
    }


def test_original_tiny_checkpoint_loads_through_the_adapter(tmp_path, tiny):
    path = tmp_path / "san_tiny.pth"
    torch.save({"model": _original(tiny), "iteration": 59_999}, path)
    adapter = create_adapter("san", backbone="tiny")
    adapter.load(path, "cpu")
    for key, value in tiny.state_dict().items():
        assert torch.equal(adapter.network.state_dict()[key], value), key
    state = _original(tiny)
    del state["side_adapter_network.query_embed"]
    torch.save({"model": state}, path)
    with pytest.raises(UserError, match="missing keys: side_adapter_network.query_embed"):
        create_adapter("san", backbone="tiny").load(path, "cpu")


def test_adapter_reads_the_backbone_and_refuses_missing_weights(tmp_path):
    with pytest.raises(UserError, match="san needs weights: --weights san_vit_b_16.pth"):
        create_adapter("san", backbone="vit-b").load(None, "cpu")
    path = tmp_path / "san_vit_large_14.pth"
    torch.save({"model": {"clip_visual_extractor.class_embedding": torch.zeros(1024)}}, path)
    with pytest.raises(UserError, match="backbone=vit-l, but backbone=vit-b given"):
        create_adapter("san", backbone="vit-b").load(path, "cpu")
    torch.save({"model": {"foo": torch.zeros(1)}}, path)
    with pytest.raises(UserError, match="is not a SAN checkpoint"):
        create_adapter("san").load(path, "cpu")


def test_pretrained_init_loads_an_open_clip_file_and_seeds_the_side_network(tmp_path, tiny):
    path = tmp_path / "clip.pt"
    torch.save(tiny.clip.state_dict(), path)
    options = {"backbone": "tiny", "init": "pretrained", "clip_weights": str(path), "seed": 3}
    first, second = create_adapter("san", **options), create_adapter("san", **options)
    first.load(None, "cpu")
    second.load(None, "cpu")
    for key, value in tiny.clip.state_dict().items():
        assert torch.equal(first.network.clip.state_dict()[key], value), key
    assert first.weights_sha256() == second.weights_sha256()
    with pytest.raises(UserError, match="cannot load the pretrained CLIP"):
        create_adapter("san", backbone="tiny", init="pretrained").load(None, "cpu")


# -- the adapter ------------------------------------------------------------------------------
def test_adapter_predicts_at_the_input_size_and_is_seeded():
    adapter = _tiny_adapter()
    images = torch.rand(2, 3, 70, 50)
    scores = adapter.predict(images)
    assert scores.shape == (2, 3, 70, 50)
    # each of the 8 queries adds at most 1 (a probability times a sigmoid)
    assert (scores >= 0).all() and (scores.sum(1) <= 8).all()
    assert torch.equal(_tiny_adapter().predict(images), scores)
    assert _tiny_adapter(seed=1).weights_sha256() != adapter.weights_sha256()


def test_inference_protocol_built_by_hand():
    """50 x 87: shortest edge 640 (PIL bilinear, 8 bit) -> 640 x 1114, OpenAI statistics x 255,
    padded to 640 x 1120, one pass; mask logits to the padded size, cropped, resized to the
    image, then softmax(class)[:-1] x sigmoid(mask); a class scores its best synonym's logit."""
    from PIL import Image

    adapter = _tiny_adapter()
    pixels = np.random.default_rng(0).integers(0, 256, (50, 87, 3), dtype=np.uint8)
    mapped = np.array(Image.fromarray(pixels).resize((1114, 640), Image.BILINEAR))
    image = torch.from_numpy(mapped).permute(2, 0, 1)[None].float()
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1) * 255
    x = F.pad((image - mean) / std, (0, 6, 0, 0))
    with torch.no_grad():
        [(masks, logits)] = adapter.network(x, adapter.text.embeddings)
    masks = F.interpolate(masks, size=(640, 1120), mode="bilinear")[..., :1114]
    masks = F.interpolate(masks, size=(50, 87), mode="bilinear")
    per_class = torch.stack(
        [logits[..., 0], logits[..., 1:3].amax(-1), logits[..., 3], logits[..., 4]], dim=-1
    )
    expected = semantic_scores(per_class, masks)
    image01 = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(adapter.predict(image01), expected, rtol=0, atol=1e-5)
    first = _tiny_adapter(synonyms="first")
    assert first.text.embeddings.shape[0] == 3 and adapter.text.embeddings.shape[0] == 4
    assert adapter.describe()["num_templates"] == 14


def test_recipe_follows_the_original_solver_and_augmentation():
    adapter = _tiny_adapter()
    recipe = adapter.training_recipe(CLASSES)
    assert recipe.defaults == {
        "lr": 1e-4,
        "weight_decay": 1e-4,
        "max_iters": 60_000,
        "batch_size": 32,
        "clip_norm": 0.01,
        "warmup_iters": 0,
        "lr_schedule": "poly",
        "poly_power": 0.9,
    }
    names = {id(p): n for n, p in recipe.module.named_parameters()}
    groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in recipe.param_groups}
    assert {g["name"]: g["weight_decay"] for g in recipe.param_groups} == {
        "new": 1e-4,
        "new_no_decay": 0.0,
    }
    assert {g["lr_mult"] for g in recipe.param_groups} == {1.0}
    assert {
        "clip.visual.positional_embedding",
        "side_adapter_network.query_embed",
        "side_adapter_network.query_pos_embed",
        "side_adapter_network.vit_model.pos_embed",
        "side_adapter_network.vit_model.blocks.0.norm1.weight",
    } <= groups["new_no_decay"]
    # the fusion LayerNorm2d is no torch norm layer: it decays, as in the official log's table
    assert {"side_adapter_network.fusion_layers.layer_0.input_proj.0.weight", "bg_embed"} <= groups[
        "new"
    ]
    resize = recipe.transform.transforms[0]
    assert resize.short_edge_length == tuple(range(320, 961, 64)) and resize.max_size == 2560
    rng = np.random.default_rng(0)
    image, label = recipe.transform(
        rng.integers(0, 256, (300, 500, 3), dtype=np.uint8), np.zeros((300, 500), np.uint8), rng
    )
    assert image.shape == (640, 640, 3) and label.shape == (640, 640)


def test_run_and_train_with_the_tiny_backbone_on_synthetic_data(cli, synthetic_root, tmp_path):
    args = ["--protocol", "demo", "--data-root", synthetic_root, "--device", "cpu"]
    result = cli("run", "--model", "san", "--backbone", "tiny", *args, "--results", tmp_path)
    assert result.code == 0, result.err
    records = sorted((tmp_path / "records").rglob("*.json"))
    assert len(records) == 2
    record = json.loads(records[0].read_text())
    assert record["options"]["backbone"] == "tiny"
    assert record["timing"]["inference"]["templates"] == "vild"
    assert record["params"]["trainable"] < record["params"]["total"]
    out = tmp_path / "train"
    done = cli(
        "train", "--model", "san", "--backbone", "tiny", "-o", "train_size=64",
        "--max-iters", "2", "--batch-size", "2", "--workers", "0", "--out", out, *args,
    )  # fmt: skip
    assert done.code == 0, done.err
    assert json.loads((out / "final.json").read_text())["iteration"] == 2
    trained = create_adapter("san", backbone="tiny")
    trained.load(out / "final.safetensors", "cpu")  # our names load through the original path
    assert trained.weights_sha256() is not None
