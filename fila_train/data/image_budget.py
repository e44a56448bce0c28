"""Room for text after one image in ``--model_max_length``, checked before any weights load.

The anyres encoders give one image up to (4 tiles + the global view) x 576 = 2880 tokens on the 672x672 canvas.
Under LLaVA-1.5's 2048 every record whose image took that canvas, most of a typical mixture, was dropped one
warning at a time (``--on_overlong drop``) and the run trained on the rest.
"""
from __future__ import annotations

from ..utils.errors import ConfigError


def check_images_fit(token_counts: dict[str, int], max_length: int) -> None:
    """``token_counts``: an image's tokens by the shape it takes ("WxH"), from the encoder's image processor."""
    too_long = {shape: count for shape, count in token_counts.items() if count >= max_length}
    if not too_long:
        return
    shapes = ", ".join(f"{shape} ({count} tokens)" for shape, count in too_long.items())
    fix = f"set --model_max_length above {max(too_long.values())}"
    if len(token_counts) > 1:  # anyres canvases
        fix += " (LLaVA-NeXT trains anyres canvases at 4096)"
        if len(too_long) < len(token_counts):
            fix += ", or leave those canvases out of --anyres_canvases"
    raise ConfigError(f"--model_max_length {max_length} leaves no room for text after one image on {shapes}: "
                      f"every record whose image takes it would be dropped (--on_overlong drop) or stop the run; "
                      f"{fix}")
