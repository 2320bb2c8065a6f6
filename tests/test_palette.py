"""Class colours and indexed PNG label maps (ovrsisbench.palette)."""

import io

import numpy as np
import pytest
from PIL import Image

from ovrsisbench.data.registry import REGISTRY
from ovrsisbench.palette import class_colours, colourise, default_colours, indexed_png
from ovrsisbench.protocol import load_vocabulary


def test_indexed_png_decodes_to_the_same_map_with_the_palette():
    colours = default_colours(5)
    label_map = np.random.default_rng(0).integers(0, 5, (13, 17)).astype(np.uint8)
    label_map[0, :4] = 255
    image = Image.open(io.BytesIO(indexed_png(label_map, colours)))
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), label_map)
    palette = np.asarray(image.getpalette()[: 3 * 256]).reshape(-1, 3)
    assert [tuple(c) for c in palette[:5]] == colours
    assert tuple(palette[255]) == (0, 0, 0)


def test_indexed_png_refuses_other_arrays():
    with pytest.raises(ValueError, match="uint8"):
        indexed_png(np.zeros((4, 4), dtype=np.int64), default_colours(2))


def test_a_scored_class_takes_the_dataset_colour_of_its_first_native_class():
    vocabulary = load_vocabulary("potsdam")
    palette = REGISTRY["potsdam"].palette
    assert class_colours(vocabulary) == [palette[c.native_ids[0]] for c in vocabulary.classes]


def test_datasets_without_a_palette_get_distinct_default_colours():
    vocabulary = load_vocabulary("synthetic-target")
    colours = class_colours(vocabulary)
    assert colours == default_colours(len(vocabulary.classes))
    assert len(set(default_colours(40))) == 40
    rgb = colourise(np.array([[0, 255]], dtype=np.uint8), colours)
    assert rgb.tolist() == [[list(colours[0]), [0, 0, 0]]]
