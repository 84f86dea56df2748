"""The montage's bitmap font: sizes, case folding, unknown characters, cutting to fit."""

import numpy as np
import pytest

from medk2n.runtime.font import GLYPH_HEIGHT, fit_text, render, text_width


def test_render_sizes_and_case():
    ink = render("Ab", scale=2)
    assert ink.shape == (2 * GLYPH_HEIGHT, text_width("Ab", 2)) == (14, 22)
    np.testing.assert_array_equal(ink, render("AB", scale=2))  # lower case drawn as upper case
    assert render("A").any() and not render(" ").any()
    assert not render("\u00e9").any()  # no glyph: blank, not an error
    assert render("").shape == (GLYPH_HEIGHT, 0)
    with pytest.raises(ValueError):
        render("A", scale=0)


def test_fit_text_cuts_with_a_mark():
    assert fit_text("FLAIR", width=200, scale=2) == "FLAIR"
    cut = fit_text("PREDICTED ERROR", width=40, scale=2)  # 3 glyphs fit at 12 px each (with spacing)
    assert cut == "PR." and text_width(cut, 2) <= 40
