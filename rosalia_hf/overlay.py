"""An X-ray with a mask over it, the instruction and the answer above it, a footer below: one picture to look at.

:func:`render_overlay` returns the picture as an ``HxWx3 uint8`` array (``rosalia predict`` encodes it as PNG, the
app shows it, the dataset's overlays write it through ``mimic_ils.files``). It draws with matplotlib's object API
(``Figure`` on an Agg canvas, never ``pyplot``), so app threads can draw at once.

Side markers: "R" in the upper left and "L" in the upper right corner of the image. They state the radiological
display convention (the patient's right on the viewer's left) that MIMIC-CXR images are stored in, for frontal
views; they are not read from the pixels, and ``side_markers=False`` leaves them out.
"""

from __future__ import annotations

import textwrap

import numpy as np

MASK_RGBA = (1.0, 0.12, 0.12, 0.40)  # translucent red fill
CONTOUR_COLOUR = "#ff2020"
WIDTH_INCHES = 5.6
DPI = 110
WRAP = 72  # characters per text line at this width


def as_gray(image: np.ndarray) -> np.ndarray:
    """``HxW uint8`` for display from an ``HxW`` or ``HxWx3`` uint8 array (RGB averaged)."""
    array = np.asarray(image)
    if array.ndim == 3:
        array = np.round(array[..., :3].astype(np.float32).mean(axis=2)).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(f"render_overlay takes uint8 pixels, got {array.dtype}")
    return array


def describe_mask(mask: np.ndarray) -> str:
    """The footer's verdict on a predicted mask: "empty target (no mask)" (the paper's N-Acc criterion: no
    positive pixel), else its size."""
    pixels = int(np.count_nonzero(mask))
    if not pixels:
        return "empty target (no mask)"
    return f"mask: {pixels} px ({100.0 * pixels / mask.size:.1f}% of the image)"


def printable(text: str) -> str:
    """``text`` with control and unprintable characters (an untrained model's answer has them) shown as "?"."""
    return "".join(ch if ch.isprintable() else "?" for ch in text.replace("\ufffd", "?"))


def render_overlay(image: np.ndarray, mask: np.ndarray | None, *, instruction: str = "", answer: str = "",
                   footer: str = "", side_markers: bool = True) -> np.ndarray:
    """The image in grey with ``mask`` (``HxW`` bool, the image's frame; ``None`` or all False for none) in red.

    Above: ``Q: instruction`` and ``A: answer``, wrapped; below: ``footer``; "R"/"L" in the upper corners unless
    ``side_markers`` is False. Returns ``H'xW'x3 uint8`` (5.6 in wide at 110 dpi, the height from the image's
    aspect and the text).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gray = as_gray(image)
    height, width = gray.shape
    if mask is not None and np.asarray(mask).shape != gray.shape:
        raise ValueError(f"mask is {np.asarray(mask).shape}, image is {gray.shape}: masks are in the image's frame")
    title = textwrap.wrap(f"Q: {printable(instruction)}", WRAP) if instruction else []
    title += textwrap.wrap(f"A: {printable(answer)}", WRAP) if answer else []
    text_inches = 0.17 * len(title) + (0.25 if footer else 0.0) + 0.15
    image_inches = WIDTH_INCHES * height / width
    figure = Figure(figsize=(WIDTH_INCHES, image_inches + text_inches), dpi=DPI)
    FigureCanvasAgg(figure)
    bottom = (0.25 if footer else 0.05) / (image_inches + text_inches)
    axis = figure.add_axes((0.0, bottom, 1.0, image_inches / (image_inches + text_inches)))
    axis.imshow(gray, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
    if mask is not None and np.asarray(mask).any():
        mask = np.asarray(mask, dtype=bool)
        tint = np.zeros((height, width, 4), np.float32)
        tint[mask] = MASK_RGBA
        axis.imshow(tint, interpolation="nearest")
        axis.contour(mask, levels=[0.5], colors=CONTOUR_COLOUR, linewidths=0.9)
    axis.set_axis_off()
    if side_markers:
        for x, letter, align in ((0.025, "R", "left"), (0.975, "L", "right")):
            axis.text(x, 0.975, letter, transform=axis.transAxes, ha=align, va="top", fontsize=14,
                      fontweight="bold", color="#ffe14d",
                      bbox={"facecolor": "black", "alpha": 0.55, "edgecolor": "none", "pad": 2})
    if title:
        figure.text(0.015, 1.0 - 0.06 / (image_inches + text_inches), "\n".join(title), ha="left", va="top",
                    fontsize=8.5, family="DejaVu Sans")
    if footer:
        figure.text(0.015, 0.08 / (image_inches + text_inches), printable(footer), ha="left", va="bottom", fontsize=7,
                    color="#444444")
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])


__all__ = ["render_overlay", "as_gray", "printable", "describe_mask"]
