"""RSKT-Seg as a whole: the tiny network's shapes, rotations and training rule, full-size
parameter counts against the original code's (spec param_counts.md 1.2-1.5), original-format
checkpoints, and the adapter end to end."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from tests_helpers import batched_and_sequential, spec_keys

from ovrsisbench.errors import UserError
from ovrsisbench.models.common.catseg_head import rotated_cosine_cost
from ovrsisbench.models.rsktseg.checkpoint import (
    CheckpointMismatchError,
    load_original,
    to_original,
)
from ovrsisbench.models.rsktseg.head import TOP_LEVEL_CONV_NAMES, RSKTDecoder
from ovrsisbench.models.rsktseg.model import CONFIGS, RSKTSeg
from ovrsisbench.registry import create_adapter

# param_counts.md 1.2 / 1.4 / 1.5 (the original code, instantiated)
FULL = {  # (backbone, N)
    ("vit-b", 3): {
        "clip": 149_620_737,
        "new": 12_190_913,
        "total": 398_896_835,
        "train": 32_638_145,
    },
    ("vit-b", 5): {
        "clip": 149_620_737,
        "new": 13_852_097,
        "total": 400_558_019,
        "train": 34_299_329,
    },
    ("vit-l", 2): {
        "clip": 427_944_193,
        "new": 13_261_121,
        "total": 678_290_499,
        "train": 77_748_545,
    },
}
DINO = 85_807_872
REMOTECLIP_FULL = 151_277_313
CLIP_QV = {"vit-b": 20_447_232, "vit-l": 64_487_424}


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters of ``module``."""
    parameters = list(module.parameters())
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)


@pytest.fixture(scope="module")
def tiny() -> RSKTSeg:
    torch.manual_seed(0)
    return RSKTSeg(CONFIGS["tiny"]).eval()


def _text(count: int, dim: int = 24) -> torch.Tensor:
    return F.normalize(
        torch.randn(count, dim, generator=torch.Generator().manual_seed(count)), dim=1
    )


@pytest.mark.parametrize(("size", "classes"), [((64, 64), 1), ((96, 64), 5), ((32, 160), 17)])
def test_tiny_output_shapes(tiny, size, classes):
    with torch.no_grad():
        logits = tiny(torch.randn(2, 3, *size), _text(classes))
    assert logits.shape == (2, classes, 16, 16)  # 4x the 4x4 cost grid, whatever the input
    assert torch.isfinite(logits).all()


def test_batched_rotations_equal_four_passes(tiny):
    images, text = torch.randn(2, 3, 64, 96), _text(4)
    batched, sequential = batched_and_sequential(tiny, images, text)
    torch.testing.assert_close(batched, sequential, rtol=0, atol=1e-5)


def test_a_quarter_turn_of_the_input_turns_and_cycles_the_clip_costs(tiny):
    """Pass k of the turned image is pass k+1 of the image: the cost channels cycle by one and
    the maps turn with the image (spec 5.6)."""
    image = torch.randn(1, 3, 64, 64)  # the CLIP size: no resize to commute
    text = _text(3)[None, :, None, :]
    with torch.no_grad():
        cost = rotated_cosine_cost(tiny.clip_dense(image)[0], text)
        turned = rotated_cosine_cost(tiny.clip_dense(torch.rot90(image, 1, (2, 3)))[0], text)
    expected = torch.rot90(cost.roll(-1, dims=1), 1, dims=(3, 4))
    torch.testing.assert_close(turned, expected, rtol=0, atol=1e-5)


def test_only_clip_qv_and_new_modules_train_and_frozen_encoders_get_no_gradient():
    torch.manual_seed(1)
    model = RSKTSeg(CONFIGS["tiny"])
    tokens = torch.randint(1, 400, (3, 77))
    text = model.encode_text(tokens)  # the text tower is in the graph, as in training
    model(torch.randn(1, 3, 64, 64), text).sum().backward()
    for name, parameter in model.named_parameters():
        in_clip = name.startswith("clip.")
        qv = name.endswith(("attn.q_proj_weight", "attn.v_proj_weight"))
        frozen = name.startswith(("remoteclip.", "dino.")) or (in_clip and not qv)
        assert parameter.requires_grad is not frozen, name
        if frozen:
            assert parameter.grad is None, name
    assert all(
        p.grad is not None
        for n, p in model.named_parameters()
        if n.startswith("clip.") and n.endswith("v_proj_weight") and ".resblocks.0." in n
    )


@pytest.mark.parametrize(("backbone", "layers"), list(FULL))
def test_full_size_parameter_counts_match_the_original(backbone, layers):
    model = RSKTSeg(replace(CONFIGS[backbone], num_layers=layers), device="meta")
    counts = FULL[backbone, layers]
    assert count_parameters(model.clip) == (counts["clip"], CLIP_QV[backbone])
    assert count_parameters(model.dino) == (DINO, 0)
    new = [model.decoder, *(getattr(model, name) for name in TOP_LEVEL_CONV_NAMES)]
    assert sum(count_parameters(m)[0] for m in new) == counts["new"]
    total, trainable = count_parameters(model)
    unused = sum(_numel(shape) for shape in model.remoteclip.unused_keys.values())
    assert count_parameters(model.remoteclip)[0] + unused == REMOTECLIP_FULL
    assert total + unused == counts["total"]  # the original builds RemoteCLIP whole
    assert trainable == counts["train"]


def _numel(shape) -> int:
    return int(torch.Size(shape).numel())


def _original_state(model: RSKTSeg) -> dict[str, torch.Tensor]:
    """An original-format checkpoint of ``model``: original key names, plus the RemoteCLIP
    parts the model does not build, with their shapes."""
    state = {to_original(key): value.clone() for key, value in model.state_dict().items()}
    for key, shape in zip(
        model.unused_original_keys(), model.remoteclip.unused_keys.values(), strict=True
    ):
        state[key] = torch.zeros(shape)
    return state


def test_original_checkpoint_round_trip_lists_unused_keys(tiny):
    state = _original_state(tiny)
    torch.manual_seed(5)
    other = RSKTSeg(CONFIGS["tiny"])
    unused = load_original(other, {"model": state}, other.unused_original_keys())
    assert unused == sorted(tiny.unused_original_keys())
    assert any(".transformer.resblocks." in key for key in unused)  # the text tower
    for key, value in tiny.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_a_missing_or_renamed_key_is_named(tiny):
    state = _original_state(tiny)
    gone = "sem_seg_head.predictor.transformer.head.weight"
    missing = {k: v for k, v in state.items() if k != gone}
    with pytest.raises(CheckpointMismatchError, match=f"missing keys: {gone}"):
        load_original(RSKTSeg(CONFIGS["tiny"]), missing, tiny.unused_original_keys())
    renamed = dict(missing, **{"sem_seg_head.predictor.transformer.hed.weight": state[gone]})
    with pytest.raises(CheckpointMismatchError, match="unexpected keys: .*transformer.hed.weight"):
        load_original(RSKTSeg(CONFIGS["tiny"]), renamed, tiny.unused_original_keys())


class _Head(torch.nn.Module):
    """The new modules of the ViT-B model under our names: decoder + top-level convs."""

    def __init__(self) -> None:
        super().__init__()
        model = RSKTSeg(CONFIGS["vit-b"], device="meta")
        self.decoder = RSKTDecoder(512, 3)
        for name in TOP_LEVEL_CONV_NAMES:
            conv = getattr(model, name)
            self.add_module(name, type(conv)(**_conv_args(conv)))


def _conv_args(conv: torch.nn.Module) -> dict:
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
    }


def test_a_synthesised_original_vitb_head_checkpoint_loads_with_no_missing_or_unexpected_key():
    spec = spec_keys("rsktseg_head_keys_vitb.txt")
    head = _Head()
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=generator) for key, shape in spec.items()}
    assert load_original(head, state) == []
    key = "sem_seg_head.predictor.transformer.layers.2.class_fusion.sa.attention.v.weight"
    assert torch.equal(
        head.state_dict()[key.replace("sem_seg_head.predictor.transformer.", "decoder.")],
        state[key],
    )
    del state[key]
    with pytest.raises(CheckpointMismatchError, match=key.replace(".", r"\.")):
        load_original(_Head(), state)


# -- the adapter ------------------------------------------------------------------------------
def test_adapter_predicts_scores_at_the_input_size_in_both_modes():
    for inference in ("whole", "slide"):
        adapter = create_adapter("rsktseg", backbone="tiny", inference=inference)
        adapter.load(None, "cpu")
        adapter.set_vocabulary([["road"], ["tree", "forest"], ["water"]])
        scores = adapter.predict(torch.rand(2, 3, 70, 50))
        assert scores.shape == (2, 3, 70, 50)
        assert ((scores >= 0) & (scores <= 1)).all()  # sigmoid


def test_adapter_refuses_real_backbones_without_a_checkpoint():
    with pytest.raises(UserError, match="needs a trained checkpoint"):
        create_adapter("rsktseg", backbone="vit-b").load(None, "cpu")


def test_adapter_reads_backbone_and_depth_from_the_checkpoint(tmp_path):
    path = tmp_path / "model_final.pth"
    state = {
        "sem_seg_head.predictor.clip_model.visual.class_embedding": torch.zeros(1024),
        **{f"sem_seg_head.predictor.transformer.layers.{i}.x": torch.zeros(1) for i in range(5)},
    }
    torch.save({"model": state, "iteration": 29999}, path)
    adapter = create_adapter("rsktseg", backbone="vit-b")
    with pytest.raises(UserError, match="backbone=vit-l, but backbone=vit-b given"):
        adapter.load(path, "cpu")
    bad = tmp_path / "other.pth"
    torch.save({"model": {"foo": torch.zeros(1)}}, bad)
    with pytest.raises(UserError, match="not an RSKT-Seg checkpoint"):
        create_adapter("rsktseg").load(bad, "cpu")


@pytest.mark.parametrize(("backbone", "layers"), [("vit-b", 3), ("vit-l", 2)])
def test_adapters_info_reports_the_built_groups(cli, backbone, layers):
    import json

    result = cli("adapters", "info", "rsktseg", "--backbone", backbone, "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    groups, counts = info["groups"], FULL[backbone, layers]
    assert groups["clip"] == {"total": counts["clip"], "trainable": CLIP_QV[backbone]}
    assert groups["dino"] == {"total": DINO, "trainable": 0}
    assert groups["head"] == {"total": counts["new"], "trainable": counts["new"]}
    assert info["trainable"] == counts["train"]
    unbuilt = REMOTECLIP_FULL - groups["remoteclip"]["total"]
    assert info["total"] == counts["total"] - unbuilt


def test_pretrained_init_names_each_missing_encoder_file_and_its_source(tmp_path):
    adapter = create_adapter("rsktseg", init="pretrained", weights_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"RemoteCLIP-ViT-B-32.pt is missing; get .* from https://"):
        adapter.load(None, "cpu")
    (tmp_path / "RemoteCLIP-ViT-B-32.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"RSIB.pth is missing; get .* Google Drive"):
        adapter.load(None, "cpu")
    with pytest.raises(UserError, match="init=pretrained needs backbone vit-b or vit-l"):
        create_adapter("rsktseg", backbone="tiny", init="pretrained").load(None, "cpu")


def test_run_with_the_tiny_backbone_on_synthetic_data(cli, synthetic_root, tmp_path):
    import json

    args = ["--protocol", "demo", "--data-root", synthetic_root, "--results", tmp_path]
    result = cli("run", "--model", "rsktseg", "--backbone", "tiny", "--device", "cpu", *args)
    assert result.code == 0, result.err
    records = sorted((tmp_path / "records").rglob("*.json"))
    assert len(records) == 2
    record = json.loads(records[0].read_text())
    assert record["options"]["backbone"] == "tiny"
    assert record["params"]["trainable"] < record["params"]["total"]
    assert record["timing"]["inference"]["scores"] == "sigmoid"


@pytest.mark.slow
def test_a_released_format_vitb_checkpoint_alone_is_enough(tmp_path):
    """The whole ViT-B model in the original key names (about 1.6 GB): --weights alone."""
    torch.manual_seed(2)
    model = RSKTSeg(CONFIGS["vit-b"])
    path = tmp_path / "model_final.pth"
    torch.save({"model": _original_state(model), "iteration": 29999}, path)
    adapter = create_adapter("rsktseg")
    adapter.load(path, "cpu")
    assert adapter.network.config.num_layers == 3
    assert len(adapter.unused_keys) == len(model.unused_original_keys())
    for key, value in model.state_dict().items():
        assert torch.equal(adapter.network.state_dict()[key], value), key


def test_forward_equals_a_literal_port_of_the_original():
    """Against tests/rsktseg_reference.py on a tiny config where every positional embedding
    is resized and the padded input is not square (catches wiring: guidance order, hooks,
    DINO indices, rotations, costs)."""
    from rsktseg_reference import original_forward

    from ovrsisbench.inference import pad_to_multiple

    torch.manual_seed(3)
    config = replace(CONFIGS["tiny"], clip_size=96, remote_size=192, dino_size=96, num_layers=2)
    model = RSKTSeg(config).eval()
    images = pad_to_multiple(torch.randn(2, 3, 70, 130), 32)
    text = _text(5)
    with torch.no_grad():
        ours, reference = model(images, text), original_forward(model, images, text)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_whole_image_protocol_is_the_official_pipeline():
    """Shortest edge 640 through PIL on 8-bit pixels, CLIP statistics on the 0-255 scale,
    padding to 32, the network, sigmoid, crop, bilinear back (spec 8.1), built by hand."""
    import numpy as np
    from PIL import Image

    adapter = create_adapter("rsktseg", backbone="tiny")
    adapter.load(None, "cpu")
    adapter.set_vocabulary([["road"], ["tree"]])
    pixels = np.random.default_rng(0).integers(0, 256, (50, 87, 3), dtype=np.uint8)
    resized = np.array(Image.fromarray(pixels).resize((1114, 640), Image.BILINEAR))  # 87*12.8
    x = torch.from_numpy(resized).permute(2, 0, 1)[None].float()
    mean = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(1, 3, 1, 1)
    std = torch.tensor([68.5005327, 66.6321579, 70.3231630]).view(1, 3, 1, 1)
    x = F.pad((x - mean) / std, (0, 6, 0, 0))  # to 640 x 1120; the padding stays in the output
    with torch.no_grad():
        probabilities = adapter.network(x, adapter.text).sigmoid()
    expected = F.interpolate(probabilities, size=(50, 87), mode="bilinear", align_corners=False)
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(adapter.predict(image), expected, rtol=0, atol=1e-6)


def test_paper_vs_code_options_change_what_they_say():
    """The spec's cheap options: RemoteCLIP's activation, the prompt template, the fusion."""
    gelu = create_adapter("rsktseg", backbone="tiny", remoteclip_act="gelu")
    gelu.load(None, "cpu")
    blocks = gelu.network.remoteclip.visual.transformer.resblocks
    assert type(blocks[0].mlp.gelu).__name__ == "GELU"
    assert type(create_adapter("rsktseg", backbone="tiny").build().remoteclip.visual.transformer
                .resblocks[0].mlp.gelu).__name__ == "QuickGELU"  # fmt: skip
    texts = {}
    for template in ("A photo of a {} in the scene", "a satellite image of {}."):
        adapter = create_adapter("rsktseg", backbone="tiny", template=template)
        adapter.load(None, "cpu")
        adapter.set_vocabulary([["road"]])
        texts[template] = adapter.text
    assert not torch.equal(*texts.values())
    with pytest.raises(UserError, match="template must be text containing"):
        create_adapter("rsktseg", template="no slot")
    mean = create_adapter("rsktseg", backbone="tiny", fusion="simple_mean").build()
    assert not hasattr(mean.decoder, "fusion_corr")
