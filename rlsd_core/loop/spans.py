"""Which response tokens lie inside the reasoning span (`algo.thought_only`).

    magnitude stage: response token ids -> thought_mask -> CreditInputs.token_mask [N, T]

With `algo.thought_only` the teacher reweights only the tokens between `thought_start` and
`thought_end` (e.g. <think> ... </think>); every other token keeps plain A. Each token is
decoded on its own and the pieces are laid end to end, so a character offset maps to one
token: a token is inside when it starts after an opening marker ends and before the closing
marker starts (the marker tokens themselves are outside). A response cut before its closing
marker is inside to its end; a response with no opening marker has no inside tokens. Markers
are plain ASCII text, which decodes the same token by token as in one piece.
"""

from __future__ import annotations

from typing import Sequence

import torch


def inside_spans(pieces: Sequence[str], start: str, end: str) -> list[bool]:
    """For consecutive decoded token pieces, whether each lies inside a start..end span."""
    text = "".join(pieces)
    spans: list[tuple[int, int]] = []
    pos = 0
    while True:
        a = text.find(start, pos)
        if a < 0:
            break
        b = text.find(end, a + len(start))
        spans.append((a + len(start), len(text) if b < 0 else b))
        if b < 0:
            break
        pos = b + len(end)
    out, offset = [], 0
    for piece in pieces:
        out.append(any(lo <= offset < hi for lo, hi in spans))
        offset += len(piece)
    return out


def thought_mask(tokenizer, response_ids: Sequence[Sequence[int]], width: int, start: str,
                 end: str) -> torch.Tensor:
    """[N, width] bool: True on response tokens inside the reasoning span."""
    mask = torch.zeros(len(response_ids), width, dtype=torch.bool)
    for i, ids in enumerate(response_ids):
        pieces = [tokenizer.decode([int(t)]) for t in ids[:width]]
        flags = inside_spans(pieces, start, end)
        if any(flags):
            mask[i, :len(flags)] = torch.tensor(flags)
    return mask
