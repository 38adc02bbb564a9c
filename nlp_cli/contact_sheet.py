"""Pictures of suspected wrong labels: a PNG contact sheet and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from nlp_cli.artifacts import atomic_write_bytes

THUMB = 128
CAPTION = 50
COLUMNS = 6


def _font(size: int = 11) -> tuple[Any, str]:
    """A font with an arrow glyph (DejaVu Sans when found), else Pillow's and "->"."""
    candidates = ["DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
    try:
        import matplotlib

        candidates.append(
            str(Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf/DejaVuSans.ttf")
        )
    except ImportError:
        pass
    for name in candidates:
        try:
            return ImageFont.truetype(name, size), "→"
        except OSError:
            continue
    return ImageFont.load_default(), "->"


def _thumbnail(path: str, size: int = THUMB) -> Image.Image:
    """The image fitted into a size × size square on grey; a crossed box if unreadable."""
    tile = Image.new("RGB", (size, size), (235, 235, 235))
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = size / max(im.width, im.height)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
            tile.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    except (OSError, ValueError):
        draw = ImageDraw.Draw(tile)
        draw.line((0, 0, size, size), fill=(180, 0, 0), width=2)
        draw.line((0, size, size, 0), fill=(180, 0, 0), width=2)
    return tile


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_sheet(rows: list[dict[str, Any]], columns: int = COLUMNS) -> Image.Image:
    """Thumbnails of `rows` (path, given_label, suggested_label, score, split), captioned."""
    font, arrow = _font()
    cols = max(1, min(columns, len(rows)))
    lines = max(1, -(-len(rows) // cols))
    cell_w, cell_h = THUMB + 8, THUMB + CAPTION + 8
    sheet = Image.new("RGB", (cols * cell_w, lines * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, row in enumerate(rows):
        x, y = (k % cols) * cell_w + 4, (k // cols) * cell_h + 4
        sheet.paste(_thumbnail(row["path"]), (x, y))
        lines = [
            (str(row["given_label"]), (0, 0, 0)),
            (f"{arrow} {row['suggested_label']}", (170, 0, 0)),
            (
                f"#{row.get('rank', k + 1)} {row.get('split', '')} p={float(row['score']):.2g}",
                (90,) * 3,
            ),
        ]
        for j, (text, colour) in enumerate(lines):
            draw.text(
                (x, y + THUMB + 2 + 15 * j), _fit(draw, text, font, THUMB), font=font, fill=colour
            )
    return sheet


def save_sheet(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the contact sheet as PNG, atomically."""
    buf = io.BytesIO()
    render_sheet(rows).save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def render_html(rows: list[dict[str, Any]], title: str, notes: list[str]) -> str:
    """One HTML page with the thumbnails inlined (base64), captions and the notes on top."""
    cells = []
    for k, row in enumerate(rows):
        buf = io.BytesIO()
        _thumbnail(row["path"], 160).save(buf, format="PNG")
        src = base64.b64encode(buf.getvalue()).decode()
        caption = (
            f"<b>{html.escape(str(row['given_label']))} → "
            f"{html.escape(str(row['suggested_label']))}</b><br>"
            f"#{row.get('rank', k + 1)} {html.escape(str(row.get('split', '')))} "
            f"p={float(row['score']):.3f}<br><small>{html.escape(str(row['path']))}</small>"
        )
        cells.append(
            f'<figure><img src="data:image/png;base64,{src}" width="160" height="160">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1em}figure{display:inline-block;width:170px;"
        "margin:4px;vertical-align:top;font-size:12px;word-break:break-all}"
        "figure img{background:#eee}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><ul>{note_items}</ul>{''.join(cells)}</body></html>"
    )
