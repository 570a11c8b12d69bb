"""The co-activation image: which experts are routed together, labelled with their names (for TensorBoard)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

__all__ = ["coactivation_picture"]

_GAP = 4  # pixels between the labels and the grid


def coactivation_picture(coactivation: Tensor | np.ndarray, names: Sequence[str], cell_px: int = 16) -> np.ndarray:
    """A grey picture of an ``(m, m)`` co-activation matrix with its experts named.

    Each expert pair is a square of ``cell_px`` pixels, black 0 to white 1 (the diagonal is each expert's usage).
    Row ``i`` is labelled ``"i name"`` on the left and column ``i`` with ``i`` on top; the labels sit on a mid-grey
    margin, and a black line frames the grid, so they are not read as values.

    :param coactivation: ``(m, m)`` shares in ``[0, 1]``.
    :param names: the ``m`` expert names, in the matrix's order.
    :param cell_px: side of one square in pixels.
    :return: ``(H, W)`` float32 array in ``[0, 1]`` (TensorBoard scales floats by 255), ``H >= W_grid + margin``.
    """
    from PIL import Image, ImageDraw, ImageFont

    grid = np.clip(np.asarray(coactivation.detach().cpu() if isinstance(coactivation, Tensor) else coactivation), 0, 1)
    m = grid.shape[0]
    if grid.shape != (m, m) or len(names) != m:
        raise ValueError(f"coactivation_picture: a square matrix and one name per row, got {grid.shape}, {len(names)}.")
    font = ImageFont.load_default()
    rows = [f"{i} {name}" for i, name in enumerate(names)]
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    left = max(int(measure.textlength(row, font=font)) for row in rows) + 2 * _GAP
    top = int(measure.textlength(str(m - 1), font=font)) + 12 + _GAP
    picture = Image.new("L", (left + m * cell_px, top + m * cell_px), color=128)
    cells = Image.fromarray((grid * 255).round().astype(np.uint8), mode="L").resize(
        (m * cell_px, m * cell_px), Image.Resampling.NEAREST
    )
    picture.paste(cells, (left, top))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((left - 1, top - 1, left + m * cell_px, top + m * cell_px), outline=0)  # the grid's edge
    for i, row in enumerate(rows):
        middle = top + i * cell_px + cell_px // 2
        draw.text((_GAP, middle), row, fill=0, font=font, anchor="lm")
        draw.text((left + i * cell_px + cell_px // 2, top - _GAP), str(i), fill=0, font=font, anchor="mb")
    return np.asarray(picture, dtype=np.float32) / 255.0
