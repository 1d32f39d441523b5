"""Shared pytest fixtures. Each owner appends fixtures in their own clearly marked block."""

from __future__ import annotations

from pathlib import Path

import pytest

# ====================================================================================================================
# Data: datasets, datamodules, splits (owner: tcclip/data/{labels,dataset,datamodule,families,splits,cli}.py)
# ====================================================================================================================

UPSTREAM_MIRROR = Path("/work/shared/reference/tcclip-upstream")


@pytest.fixture(scope="session")
def upstream_mirror() -> Path:
    """Local byte-for-byte mirror of the official split/label files (skipped where it is absent)."""
    import os

    mirror = Path(os.environ.get("TCCLIP_UPSTREAM_MIRROR", UPSTREAM_MIRROR))
    if not (mirror / "labels").is_dir():
        pytest.skip(f"no local mirror of the official split files at {mirror}")
    return mirror


@pytest.fixture(scope="session")
def data_synth(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (3 classes x 5 videos, 32 px, 8-12 frames, mp4/avi/webm) with protocol splits."""
    from tcclip.data.splits import make_synthetic_protocol_splits
    from tcclip.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("data_synth")
    make_synthetic_dataset(root, num_classes=3, videos_per_class=5, num_frames=(8, 12), size=32, seed=0)
    make_synthetic_protocol_splits(root)
    return root


# ====================================================================================================================
# end of the data block
# ====================================================================================================================
