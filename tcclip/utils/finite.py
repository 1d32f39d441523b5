"""Non-finite values (NaN, +-Inf) are errors, never results.

A network with a NaN weight still produces a ranking (arbitrary) and an accuracy (chance), so nothing downstream
would notice. Every place that turns weights or logits into an answer checks them here first: checkpoint loading
(every tensor), evaluation and prediction (the logits), training (the loss), and checkpoint saving (so a diverged run
never overwrites a good checkpoint). The policy is written up in docs/reliability.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tcclip.utils.errors import UserError


class NonFiniteError(UserError, ValueError):
    """A tensor that must be finite holds NaN or Inf; the message names it (and the file it came from)."""


def describe_nonfinite(tensor: Tensor) -> str | None:
    """`"3 NaN, 1 Inf of 40 values"`, or None when every value is finite (non-float tensors always are)."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return None
    finite = torch.isfinite(tensor.detach())
    if bool(finite.all()):
        return None
    nans = int(torch.isnan(tensor.detach()).sum())
    infs = int((~finite).sum()) - nans
    parts = [f"{nans} NaN" if nans else "", f"{infs} Inf" if infs else ""]
    return f"{', '.join(p for p in parts if p)} of {tensor.numel()} values"


def nonfinite_tensors(state: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
    """`(name, description)` of every tensor of a state dict (or named tensors) that is not all finite."""
    items = state.items() if isinstance(state, Mapping) else state
    bad = []
    for name, value in items:
        if isinstance(value, Tensor):
            what = describe_nonfinite(value)
            if what is not None:
                bad.append((str(name), what))
    return bad


def check_finite_state(state: Mapping[str, Any], source: str | Path, fix: str = "") -> None:
    """Raise `NonFiniteError` naming `source` and the first non-finite tensors of a state dict."""
    bad = nonfinite_tensors(state)
    if not bad:
        return
    shown = "; ".join(f"{name} ({what})" for name, what in bad[:3]) + ("; ..." if len(bad) > 3 else "")
    raise NonFiniteError(
        f"{len(bad)} tensor(s) hold non-finite values: {shown}; a network with them gives arbitrary answers",
        path=source,
        fix=fix or "Use a checkpoint saved before the training diverged (e.g. an earlier best-*.ckpt or last.ckpt).",
    )


def check_finite_logits(logits: Tensor, what: str, fix: str = "") -> None:
    """Raise `NonFiniteError` when logits (or probabilities) hold NaN / Inf; `what` says whose they are."""
    problem = describe_nonfinite(logits)
    if problem is None:
        return
    raise NonFiniteError(
        f"the network's logits for {what} are not finite ({problem}), so no class or accuracy can be reported",
        fix=fix
        or "Check the checkpoint's weights (tcclip refuses non-finite weights when it loads them) and the input "
        "video; with bf16/fp16 precision, try trainer.precision=32-true.",
    )
