"""Report figures: every image drawn pixel for pixel (no resampling blur), labels that fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hw2cli.io.images import LABEL_PT, _text_size, grid_layout, labelled_grid


def _upscaled(image: torch.Tensor, k: int) -> np.ndarray:
    array = image.permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array.repeat(k, axis=0).repeat(k, axis=1)


@pytest.mark.parametrize(
    ("shape", "cols", "want_scale"),
    [
        ((3, 28, 28), None, 3),  # a digit grid: 84 px per digit
        ((1, 28, 28), ["seed 0, #0", "seed 0, #1", "seed 0, #2"], 4),  # labels wider than 84 px: scale 4
        ((3, 64, 64), ["α = 0", "α = 0.5", "α = 1"], 2),
        ((3, 256, 256), ["00.pt", "01.pt", "02.pt"], 1),  # faces at their own resolution
        ((3, 28, 28), ["a column label far wider than the widest image may grow " * 2] * 3, 12),
    ],
)
def test_every_image_is_drawn_pixel_for_pixel(tmp_path, shape, cols, want_scale):
    images = torch.randint(0, 256, (6, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images[5] = images[0]  # the same image in another place
    kw = {"rows": ["η = 0", "η = 0.25"], "cols": cols, "title": "a title " * 12, "row_title": "digit"}
    path = labelled_grid(images, tmp_path / "g.png", **kw)
    layout = grid_layout(2, 3, tuple(shape[1:]), **kw)
    assert layout.scale == want_scale
    figure = np.asarray(Image.open(path).convert("RGB"))
    assert figure.shape[:2] == (layout.height, layout.width)
    for image, (x0, y0, x1, y1) in zip(images, layout.boxes, strict=True):
        assert np.array_equal(figure[y0:y1, x0:x1], _upscaled(image, layout.scale))
    if cols is not None:  # neighbouring column labels never touch
        pitch = layout.boxes[1][0] - layout.boxes[0][0]
        widest = max(_text_size(c, LABEL_PT, 150)[0] for c in cols)
        assert widest < pitch
        w = layout.boxes[0][2] - layout.boxes[0][0]  # the first and last labels stay inside the figure
        assert layout.boxes[0][0] - (widest - w) / 2 >= 0 and layout.boxes[-1][2] + (widest - w) / 2 <= layout.width
    assert layout.boxes[0][0] > 0 and layout.boxes[-1][2] < layout.width and layout.boxes[-1][3] < layout.height


def test_captioned_rows_of_many_examples_wrap_at_five(tmp_path):
    """`clip eval --examples 12` stays page-wide: a row of 12 goes on over three lines of at most 5."""
    from hw2cli.io.images import captioned_rows

    files = []
    for i in range(12):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((32, 32, 3), 20 * i, dtype=np.uint8)).save(files[-1])
    items = [(f, f"caption {i}") for i, f in enumerate(files)]
    five = Image.open(captioned_rows([("correct", "tab:green", items[:5]), ("incorrect", "tab:red", [])],
                                     tmp_path / "five.png")).size  # fmt: skip
    twelve = Image.open(captioned_rows([("correct", "tab:green", items), ("incorrect", "tab:red", [])],
                                       tmp_path / "twelve.png")).size  # fmt: skip
    assert twelve[0] == five[0]  # as wide as five
    assert twelve[1] == pytest.approx(five[1] * 4 / 2, abs=2)  # 3 lines + the empty row, against 1 + 1


def test_a_figure_named_jpg_is_a_jpeg(tmp_path):
    """The format follows the name, as for every image hw2 writes (it was PNG bytes under any name)."""
    images = torch.randint(0, 256, (2, 3, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    path = labelled_grid(images, tmp_path / "g.jpg", rows=["a"], title="t")
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.mode == "RGB"
    assert not [p for p in tmp_path.iterdir() if p.name != "g.jpg"]


@pytest.fixture
def fonts(monkeypatch):
    """hw2's font set-up made anew for one test, and matplotlib's settings put back after it."""
    import matplotlib

    from hw2cli.io import images

    monkeypatch.setitem(matplotlib.rcParams, "font.family", matplotlib.rcParams["font.family"])
    images._fonts.cache_clear()
    images._renderer.cache_clear()
    yield images
    images._fonts.cache_clear()
    images._renderer.cache_clear()


def _title_pixels(tmp_path, title: str, name: str) -> np.ndarray:
    path = labelled_grid(torch.zeros(1, 3, 28, 28, dtype=torch.uint8), tmp_path / name, rows=["a"], title=title)
    return np.asarray(Image.open(path).convert("L"))


def test_a_character_dejavu_lacks_is_drawn_by_an_installed_fallback_font(tmp_path, fonts, monkeypatch):
    import warnings

    import matplotlib

    circled_a = "\u24b6"  # Ⓐ: in matplotlib's own STIXGeneral, not in DejaVu Sans
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        without = _title_pixels(tmp_path, f"{circled_a} digits", "without.png")
    assert [str(w.message) for w in caught if "no installed font draws" in str(w.message)]
    assert not [w for w in caught if "missing from font" in str(w.message)]  # matplotlib's own, once per call

    monkeypatch.setattr(fonts, "FALLBACK_FONTS", ("A Font Nobody Has", "STIXGeneral"))
    fonts._fonts.cache_clear()
    fonts._renderer.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drawn = _title_pixels(tmp_path, f"{circled_a} digits", "with.png")
    assert matplotlib.rcParams["font.family"] == ["DejaVu Sans", "STIXGeneral"]  # DejaVu first: Latin unchanged
    assert not [w for w in caught if "font" in str(w.message)]
    assert drawn.shape == without.shape and (drawn != without).any()  # the glyph, not the empty box
    latin = _title_pixels(tmp_path, "digits", "latin.png")
    fonts._fonts.cache_clear()
    monkeypatch.setattr(fonts, "FALLBACK_FONTS", ())
    fonts._fonts.cache_clear()
    assert np.array_equal(latin, _title_pixels(tmp_path, "digits", "latin2.png"))


def test_characters_no_font_draws_are_named_once(tmp_path, fonts):
    unassigned = "\u0378\u0379"  # no font maps a code point Unicode has not assigned
    with pytest.warns(UserWarning, match="no installed font draws \u0378\u0379 .*they show as empty boxes") as caught:
        _title_pixels(tmp_path, f"digits {unassigned}", "g.png")
    assert len([w for w in caught if "font" in str(w.message)]) == 1
