"""Images as model input: their size, and their token cost by OpenAI's tile formula."""

from __future__ import annotations

import base64
import io
import math

from PIL import Image, UnidentifiedImageError

#: Tokens of a low-detail image, and the base of a high-detail one.
BASE_TOKENS = 85
#: Tokens per 512 px tile of a high-detail image.
TILE_TOKENS = 170


class NotAnImage(ValueError):
    """The bytes are not an image Livia can read (or not the type they claim)."""


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the image's header; `NotAnImage` when it is none."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise NotAnImage(str(exc)) from None


def image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """OpenAI's estimate of what an image costs (GPT-4o family, "high"/"auto" detail).

    The image is scaled to fit in 2048 x 2048, then so its shortest side is at most
    768 px; each 512 px tile costs 170 tokens, plus 85. Low detail is 85 whatever the size.
    """
    if detail == "low" or width <= 0 or height <= 0:
        return BASE_TOKENS
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    shortest = min(w, h)
    if shortest > 768:
        w, h = w * 768 / shortest, h * 768 / shortest
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return TILE_TOKENS * tiles + BASE_TOKENS


def data_url(data: bytes, content_type: str) -> str:
    """`data:` URL of `data` (how images reach the model)."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def url_tokens(url: str, detail: str = "auto") -> int:
    """The token estimate of an `image_url` part's URL (a `data:` URL is measured)."""
    if not url.startswith("data:") or ";base64," not in url:
        return image_tokens(1024, 1024, detail)  # a remote image: assume a big one
    head = url.split(";base64,", 1)[1][: 64 * 1024]  # the header is near the start
    head = head[: len(head) - len(head) % 4]
    try:
        return image_tokens(*image_size(base64.b64decode(head)), detail)
    except (NotAnImage, ValueError):
        return image_tokens(1024, 1024, detail)
