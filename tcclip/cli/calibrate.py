"""`tcclip calibrate`'s option spellings from before it ran through LightningCLI (`TCCLIPTrainer.calibrate` in
`tcclip.cli.lightning` runs it; the work is `tcclip.inference.calibrate`)."""

from __future__ import annotations

from collections.abc import Sequence

from tcclip.utils.errors import UserError

# Options of the calibrate command before it ran through LightningCLI, and their LightningCLI spelling.
OLD_SPELLINGS = {
    "--target-recall": "--target_recall",
    "--min-videos": "--min_videos",
    "--ckpt-path": "--ckpt_path",
    "--set": "--set_name",
}


def translate_old_options(argv: Sequence[str]) -> list[str]:
    """`tcclip calibrate` options as users typed them before (dashes, `--set`, `--quiet` alone, `--device`) in
    LightningCLI's spelling: `--device cpu|cuda[:N]|auto` becomes `--trainer.accelerator` (and `--trainer.devices
    [N]`)."""
    out: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if name in OLD_SPELLINGS:
            out.append(OLD_SPELLINGS[name] + eq + value)
        elif word == "--quiet" and (i + 1 >= len(words) or words[i + 1].lower() not in ("true", "false")):
            out.append("--quiet=true")  # a flag before; LightningCLI's booleans take a value
        elif name == "--device":
            if not eq:
                if i + 1 >= len(words):
                    raise UserError("--device needs a value", fix="e.g. --trainer.accelerator cpu (or gpu)")
                i += 1
                value = words[i]
            out.extend(_device_options(value))
        else:
            out.append(word)
        i += 1
    return out


def _device_options(device: str) -> list[str]:
    kind, _, index = device.partition(":")
    accelerator = {"cpu": "cpu", "cuda": "gpu", "gpu": "gpu", "mps": "mps", "auto": "auto"}.get(kind)
    if accelerator is None or (index and not index.isdigit()):
        raise UserError(
            f"--device {device!r} is not a device",
            fix="Use --trainer.accelerator cpu|gpu|auto (and --trainer.devices [N] for one GPU), as tcclip test does.",
        )
    return ["--trainer.accelerator", accelerator, *(["--trainer.devices", f"[{index}]"] if index else [])]
