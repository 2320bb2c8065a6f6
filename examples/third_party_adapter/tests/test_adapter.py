"""The colour-prototype adapter against the ovrsisbench contract, through its public API only."""

from __future__ import annotations

import pytest
import torch
from ovrsisbench.errors import UserError
from ovrsisbench.validate import validate_adapter

from ovrsis_colour_prototype import ColourPrototypeAdapter

GREEN = (0.25, 0.45, 0.20)  # the vegetation prototype
BLUE = (0.15, 0.30, 0.55)  # the water prototype


def loaded(**options) -> ColourPrototypeAdapter:
    adapter = ColourPrototypeAdapter(**options)
    adapter.load(None, "cpu")
    return adapter


def image(*colours: tuple[float, float, float], height: int = 6) -> torch.Tensor:
    """One (1, 3, height, 4 * len(colours)) image: a vertical band of each colour."""
    bands = [torch.tensor(c).view(3, 1, 1).expand(3, height, 4) for c in colours]
    return torch.cat(bands, dim=2).unsqueeze(0)


def test_output_shape_dtype_and_range():
    adapter = loaded()
    adapter.set_vocabulary([["tree"], ["water"], ["road"]])
    images = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(0))
    scores = adapter.predict(images)
    assert scores.shape == (2, 3, 17, 23) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1
    assert torch.allclose(scores.sum(dim=1), torch.ones(2, 17, 23))


def test_pixels_go_to_the_class_of_their_colour():
    adapter = loaded()
    adapter.set_vocabulary([["water"], ["forest"]])
    assert adapter.predict(image(BLUE, GREEN)).argmax(dim=1)[0, 0].tolist() == [0] * 4 + [1] * 4


def test_different_vocabularies_give_different_scores():
    adapter = loaded()
    images = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    adapter.set_vocabulary([["building"], ["tennis court"]])
    first = adapter.predict(images)
    adapter.set_vocabulary([["car"], ["swimming pool"]])  # known and unknown (hashed) names
    assert not torch.allclose(first, adapter.predict(images))


def test_best_synonym_counts():
    adapter = loaded()
    green = image(GREEN)
    adapter.set_vocabulary([["building"], ["water"]])
    assert adapter.predict(green).argmax(dim=1).unique().tolist() == [1]  # blue is nearer
    adapter.set_vocabulary([["building", "grass"], ["water"]])
    assert adapter.predict(green).argmax(dim=1).unique().tolist() == [0]  # grass matches


def test_temperature_softens_the_scores():
    images = image(GREEN, BLUE)
    vocabulary = [["tree"], ["lake"]]
    sharp, soft = loaded(temperature=0.01), loaded(temperature=10.0)
    sharp.set_vocabulary(vocabulary)
    soft.set_vocabulary(vocabulary)
    assert sharp.predict(images).max() > 0.99 and soft.predict(images).max() < 0.6


@pytest.mark.parametrize("bad", [0, -1.0, "warm", True, None])
def test_bad_temperature_is_a_user_error(bad):
    with pytest.raises(UserError, match="temperature"):
        ColourPrototypeAdapter(temperature=bad)


def test_weights_are_refused(tmp_path):
    with pytest.raises(UserError, match="no weights"):
        ColourPrototypeAdapter().load(tmp_path / "model.safetensors", "cpu")


def test_passes_the_ovrsisbench_contract_checks():
    checks = validate_adapter(loaded(), torch.device("cpu"))
    assert [(c.name, c.problem) for c in checks if c.problem is not None] == []
    assert len(checks) >= 5
