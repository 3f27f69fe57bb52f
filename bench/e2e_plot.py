"""Table and bar chart of ``comfy-int8 bench e2e`` results (matplotlib if installed, else a tiny PNG writer).

Run on its own to redraw from a JSON file: ``python -m comfy_int8_w8a8.bench.e2e_plot docs/results/e2e_h100.json``.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

__all__ = ["markdown_table", "draw_chart", "write_png"]

_COLUMNS = (("variant", "variant"), ("step_ms", "step ms"), ("speedup", "vs bf16 stock compile"),
            ("peak_vram_gib", "peak VRAM GiB"), ("cosine", "cosine vs bf16"), ("psnr_db", "PSNR dB"),
            ("first_call_s", "first call s"), ("recompiles_after_first_call", "recompiles"),
            ("int8_backends", "int8 backend"))


def _speedups(results: dict) -> dict[str, float]:
    base = {v["variant"]: v["step_ms"] for v in results["variants"]}.get("bf16+stock_compile")
    return {v["variant"]: base / v["step_ms"] for v in results["variants"]} if base else {}


def markdown_table(results: dict) -> str:
    """One row per variant; speed-up is against bf16 + stock compile when that ran."""
    speed = _speedups(results)
    lines = ["| " + " | ".join(title for _, title in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for v in results["variants"]:
        row = dict(v, speedup=f"{speed[v['variant']]:.2f}x" if v["variant"] in speed else "-")
        if v.get("compile_failed"):
            row["variant"] += " (compile failed: ran eager)"
        cells = []
        for key, _ in _COLUMNS:
            value = row.get(key, "-")
            cells.append(", ".join(value) if isinstance(value, list) else f"{value:.4f}" if key == "cosine" else
                         f"{value:.1f}" if isinstance(value, float) and key == "psnr_db" else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    for variant in results["variants"]:
        if "breakdown" in variant:
            parts = ", ".join(f"{k} {g['ms']:.1f} ms" for k, g in sorted(variant["breakdown"].items()))
            busy = sum(g["ms"] for g in variant["breakdown"].values())
            lines.append(f"\n{variant['variant']}: GPU kernel time of one forward: {parts} (total {busy:.1f} ms of a "
                         f"{variant['step_ms']:.1f} ms step; the rest is launch/CPU gaps).")
    lines += [f"\nskipped: {s}" for s in results.get("skipped", [])]
    return "\n".join(lines) + "\n"


# 5x7 glyphs (rows top to bottom, 5 bits each, MSB = left column): enough for labels like "ours+node 98.1 ms".
_FONT = {
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14), "2": (14, 17, 1, 2, 4, 8, 31),
    "3": (31, 2, 4, 2, 1, 17, 14), "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8), "8": (14, 17, 17, 14, 17, 17, 14),
    "9": (14, 17, 17, 15, 1, 2, 12), "A": (14, 17, 17, 31, 17, 17, 17), "B": (30, 17, 17, 30, 17, 17, 30),
    "C": (14, 17, 16, 16, 16, 17, 14), "D": (28, 18, 17, 17, 17, 18, 28), "E": (31, 16, 16, 30, 16, 16, 31),
    "F": (31, 16, 16, 30, 16, 16, 16), "G": (14, 17, 16, 23, 17, 17, 15), "H": (17, 17, 17, 31, 17, 17, 17),
    "I": (14, 4, 4, 4, 4, 4, 14), "J": (7, 2, 2, 2, 2, 18, 12), "K": (17, 18, 20, 24, 20, 18, 17),
    "L": (16, 16, 16, 16, 16, 16, 31), "M": (17, 27, 21, 21, 17, 17, 17), "N": (17, 17, 25, 21, 19, 17, 17),
    "O": (14, 17, 17, 17, 17, 17, 14), "P": (30, 17, 17, 30, 16, 16, 16), "Q": (14, 17, 17, 17, 21, 18, 13),
    "R": (30, 17, 17, 30, 20, 18, 17), "S": (15, 16, 16, 14, 1, 1, 30), "T": (31, 4, 4, 4, 4, 4, 4),
    "U": (17, 17, 17, 17, 17, 17, 14), "V": (17, 17, 17, 17, 17, 10, 4), "W": (17, 17, 17, 21, 21, 21, 10),
    "X": (17, 17, 10, 4, 10, 17, 17), "Y": (17, 17, 10, 4, 4, 4, 4), "Z": (31, 1, 2, 4, 8, 16, 31),
    "+": (0, 4, 4, 31, 4, 4, 0), "-": (0, 0, 0, 31, 0, 0, 0), "_": (0, 0, 0, 0, 0, 0, 31),
    ".": (0, 0, 0, 0, 0, 12, 12), "(": (2, 4, 8, 8, 8, 4, 2), ")": (8, 4, 2, 2, 2, 4, 8),
    "/": (0, 1, 2, 4, 8, 16, 0), ":": (0, 12, 12, 0, 12, 12, 0), " ": (0,) * 7,
}


def write_png(path: Path, pixels: list[bytearray]) -> None:
    """Write RGB rows (``bytearray`` of 3*width bytes each) as a PNG with nothing but zlib and struct."""
    height, width = len(pixels), len(pixels[0]) // 3

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(row) for row in pixels)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.rows = [bytearray(b"\xff" * (3 * width)) for _ in range(height)]

    def rect(self, x0: int, y0: int, x1: int, y1: int, rgb: tuple[int, int, int]) -> None:
        for y in range(max(y0, 0), min(y1, self.height)):
            self.rows[y][3 * max(x0, 0): 3 * min(x1, self.width)] = bytes(rgb) * (min(x1, self.width) - max(x0, 0))

    def text(self, x: int, y: int, text: str, scale: int = 2) -> None:
        for ch in text.upper():
            for r, bits in enumerate(_FONT.get(ch, _FONT[" "])):
                for c in range(5):
                    if bits >> (4 - c) & 1:
                        self.rect(x + c * scale, y + r * scale, x + (c + 1) * scale, y + (r + 1) * scale, (0, 0, 0))
            x += 6 * scale


def _draw_with_png_writer(bars: list[tuple[str, float, str]], path: Path, title: str) -> None:
    row_h, label_w, bar_w = 34, 420, 520
    canvas = _Canvas(label_w + bar_w + 230, 60 + row_h * len(bars))
    canvas.text(10, 12, title)
    top = max(ms for _, ms, _ in bars)
    for i, (label, ms, note) in enumerate(bars):
        y = 50 + i * row_h
        canvas.text(10, y + 6, label)
        color = (70, 130, 180) if label.startswith("OURS") or label.startswith("ours") else (160, 160, 160)
        canvas.rect(label_w, y, label_w + int(bar_w * ms / top), y + row_h - 8, color)
        canvas.text(label_w + int(bar_w * ms / top) + 8, y + 6, f"{ms:.1f} MS {note}")
    write_png(path, canvas.rows)


def draw_chart(results: dict, path: Path) -> None:
    """Horizontal bars of step time per variant, annotated with the speed-up against bf16 + stock compile."""
    speed = _speedups(results)
    bars = [(v["variant"], float(v["step_ms"]), f"{speed[v['variant']]:.2f}X" if v["variant"] in speed else "")
            for v in results["variants"]]
    if not bars:
        return
    title = f"{results.get('model', '')} {results.get('image_size', '')}PX STEP TIME ({results['environment'].get('gpu', results['environment'].get('device'))})"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _draw_with_png_writer(bars, path, title)
        return
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(bars) + 1.2))
    ax.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], color="steelblue")
    for i, (_, ms, note) in enumerate(bars[::-1]):
        ax.text(ms, i, f" {ms:.1f} ms {note}", va="center")
    ax.set_xlabel("ms per step (lower is better)")
    ax.set_title(title.lower())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    source = Path(sys.argv[1])
    data = json.loads(source.read_text())
    draw_chart(data, source.with_suffix(".png"))
    source.with_suffix(".md").write_text(markdown_table(data))
