"""Field types shared by the request schemas.

``Text``: a JSON string may carry a lone UTF-16 surrogate ("\\ud800"), which Python decodes
into a ``str`` that no tokenizer or encoder accepts (a 500 deep in a backend); it is refused
up front with 422, like every other invalid field.

``Seed``: OpenAI's seed is a 64-bit integer; a larger one overflowed inside torch (a 500).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_surrogates(value: str) -> str:
    match = _SURROGATE.search(value)
    if match:
        raise ValueError(
            f"text holds a lone UTF-16 surrogate (U+{ord(match.group()):04X}) at character "
            f"{match.start()}, which is not valid Unicode: send the text as proper UTF-8"
        )
    return value


Text = Annotated[str, AfterValidator(_no_surrogates)]
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
Seed = Annotated[
    int,
    Field(
        ge=SEED_MIN,
        le=SEED_MAX,
        description="Seed for sampling (temperature > 0), a 64-bit integer.",
    ),
]
