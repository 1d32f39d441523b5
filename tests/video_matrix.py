"""The encoding matrix: short videos made with the encoders that made the real datasets, by FFmpeg's command line.

A fixture made by another encoder than the one that made the real data proves nothing about the real data:
FFmpeg's own ``mpeg4`` encoder writes neither XviD's placeholder packets (N-VOPs) nor its key-frame flags, so a
reader can pass on it and fail on every UCF-101 clip. Each entry here names the encoder and the options of the
files it stands for:

- UCF-101 and HMDB-51: MPEG-4 part 2 in AVI by XviD (``XVID`` tag) and DivX 5 (``DX50``), 0, 1 or 2 B-frames,
  25 and 30 fps, and one XviD file with a single 300-frame group of pictures (XviD's own default);
- older AVIs: FFmpeg's ``mpeg4``, DivX 3 (``msmpeg4``), Motion JPEG; H.264 with B-frames in AVI (NTU RGB+D and
  many users' own data);
- Kinetics: H.264 with B-pyramids and open GOPs in MP4 and MKV; HEVC; a variable-frame-rate MP4;
- Something-Something v2: VP9 WebM at 12 fps (with hidden alt-ref frames);
- an XviD AVI with a damaged packet, which FFmpeg decodes with concealment.

Videos are 160x120 (the decoding paths do not depend on size), about 2.5 s of ``testsrc2`` (moving content, every
frame different) with light noise so that encoders spend bits as on camera footage.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MatrixEntry:
    name: str
    ext: str
    args: tuple[str, ...]
    """Output options of ``ffmpeg`` (codec and its settings)."""
    encoder: str
    """The FFmpeg encoder the entry needs."""
    rate: int = 25
    seconds: float = 2.5
    source: str = ""
    """Extra filters after the test source (e.g. frame selection for variable rates)."""
    damage: bool = False
    """Overwrite the end of one non-key packet in the middle (a bad sector or a broken transfer)."""


def _xvid(bf: int, tag: str, rate: int, gop: int = 25) -> MatrixEntry:
    return MatrixEntry(
        f"xvid_{tag.lower()}_bf{bf}_{rate}fps" + (f"_g{gop}" if gop != 25 else ""),
        "avi",
        ("-c:v", "libxvid", "-bf", str(bf), "-g", str(gop), "-q:v", "4", "-vtag", tag),
        "libxvid",
        rate,
        seconds=12.0 if gop > 100 else 2.5,
    )


MATRIX: tuple[MatrixEntry, ...] = (
    *(_xvid(bf, tag, rate) for tag in ("XVID", "DX50") for bf in (0, 1, 2) for rate in (25, 30)),
    _xvid(2, "XVID", 25, gop=300),
    MatrixEntry("mpeg4_bf2_avi", "avi", ("-c:v", "mpeg4", "-bf", "2", "-g", "12", "-vtag", "XVID"), "mpeg4"),
    MatrixEntry("msmpeg4_divx3_avi", "avi", ("-c:v", "msmpeg4", "-vtag", "DIV3", "-g", "25"), "msmpeg4"),
    MatrixEntry("mjpeg_avi", "avi", ("-c:v", "mjpeg", "-q:v", "5", "-pix_fmt", "yuvj420p"), "mjpeg"),
    MatrixEntry("x264_bf3_avi", "avi", ("-c:v", "libx264", "-bf", "3", "-g", "25", "-pix_fmt", "yuv420p"), "libx264"),
    MatrixEntry(
        "x264_pyramid_opengop_mp4",
        "mp4",
        ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-x264-params", "bframes=3:b-pyramid=normal:open-gop=1:keyint=24"),
        "libx264",
    ),
    MatrixEntry(
        "x264_pyramid_opengop_mkv",
        "mkv",
        ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-x264-params", "bframes=3:b-pyramid=normal:open-gop=1:keyint=24"),
        "libx264",
    ),
    MatrixEntry("vp9_webm_12fps", "webm", ("-c:v", "libvpx-vp9", "-b:v", "300k", "-g", "24"), "libvpx-vp9", rate=12),
    MatrixEntry(
        "x265_mp4",
        "mp4",
        ("-c:v", "libx265", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error:bframes=4:keyint=24"),
        "libx265",
    ),
    MatrixEntry(
        "x264_vfr_mp4",
        "mp4",
        ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-bf", "2", "-fps_mode", "vfr"),
        "libx264",
        rate=30,
        source=",select='not(eq(mod(n\\,5)\\,2))*not(eq(mod(n\\,7)\\,3))'",
    ),
    MatrixEntry(
        "xvid_damaged_avi",
        "avi",
        ("-c:v", "libxvid", "-bf", "2", "-g", "25", "-q:v", "4", "-vtag", "XVID"),
        "libxvid",
        damage=True,
    ),
)
"""Every entry of the matrix."""


def ffmpeg_problem(encoders: set[str]) -> str | None:
    """Why the matrix cannot be made here (no ``ffmpeg``, or it lacks an encoder), or None."""
    if shutil.which("ffmpeg") is None:
        return "the ffmpeg command is not installed (Debian: apt-get install ffmpeg)"
    listed = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    have = {line.split()[1] for line in listed.splitlines() if len(line.split()) > 1 and line.startswith(" V")}
    missing = sorted(encoders - have)
    return f"ffmpeg lacks the encoders {', '.join(missing)}" if missing else None


def _damage(path: Path) -> None:
    """Overwrite the last fifth of a non-key packet in the middle of the file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [(int(p.pos), int(p.size), p.is_keyframe) for p in container.demux(stream) if p.size > 100]
    offset, size, _ = next(p for p in packets[len(packets) // 2 :] if not p[2])
    tail = max(8, size // 5)
    with open(path, "r+b") as f:
        f.seek(offset + size - tail)
        f.write(bytes((37 * i + 11) % 256 for i in range(tail)))


def write_matrix_video(entry: MatrixEntry, folder: Path) -> Path:
    """Encode ``entry`` into ``folder`` with the ffmpeg command line; returns the file."""
    path = folder / f"{entry.name}.{entry.ext}"
    source = f"testsrc2=size=160x120:rate={entry.rate},noise=alls=6:allf=t{entry.source}"
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-t", str(entry.seconds)]
    subprocess.run([*command, *entry.args, str(path)], check=True, capture_output=True, timeout=120)
    if entry.damage:
        _damage(path)
    return path
