"""tcclip: TC-CLIP (Temporally Contextualized CLIP) for video action recognition."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "predict", "timeline"]


def __getattr__(name: str):
    # Lazy so that `import tcclip` (and the CLI's --help) stays fast and torch-free until needed.
    if name == "load_model":
        # The one loader of every kind of weights: a tcclip .ckpt, an export folder, a save_model file, an official .pth
        from tcclip.training.checkpoints import load_model

        return load_model
    if name == "predict":
        from tcclip.inference.predict import predict

        return predict
    if name == "timeline":
        # (the module is `timelines`: a submodule named `timeline` would replace this function once imported)
        from tcclip.inference.timeline import timeline

        return timeline
    raise AttributeError(f"module 'tcclip' has no attribute {name!r}")
