"""The CreativeStudio: a catalog product -> channel-sized banners with headline, price and a call
to action, and the checks each one carries. Used by the Serve route and the Ray Data batch job.

    studio = CreativeStudio(cfg.creative, embed=embedder.embed_images)
    creatives = studio.render_all(product, ["1200x628", "1080x1920"])

Compose (the default, no weights): the product is cut from its packshot, scaled (aspect kept) onto
a generated background, and the texts are fitted into their column (shrink, wrap, ellipsis). Each
text's colour is chosen against the pixels behind it; where neither dark nor light text reaches
`min_contrast`, a translucent panel goes behind the texts, made more opaque until they do. With
`style: diffusion` a diffusers pipeline repaints the scene around the product's own pixels first.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from mmray.config.creative import CreativeConfig, FormatConfig
from mmray.creative import background as bg
from mmray.creative.checks import (
    Embed,
    aspect_check,
    layout_check,
    legibility_check,
    product_region,
    similarity_check,
)
from mmray.creative.cutout import Cutout, cut_out, dominant_colors, main_color
from mmray.creative.layout import Box, CreativeRequestError, Plan, plan, resolve_format
from mmray.creative.text import (
    ELLIPSIS,
    contrast_ratio,
    ellipsize,
    find_font,
    fit_text,
    lead,
    line_height,
    load_font,
    relative_luminance,
    text_width,
    worst_contrast,
)

STYLES = ("gradient", "pattern", "palette", "diffusion")
DARK, LIGHT = (17, 17, 17), (255, 255, 255)


@dataclass
class Product:
    """What a creative needs of a catalog item."""

    id: str
    product_id: str
    title: str
    image: Image.Image
    price: float | None = None
    category: str | None = None
    color: str | None = None
    gender: str | None = None


@dataclass
class Copy:
    """The headline a creative carries, and the copy guardrails' verdict on it."""

    text: str
    source: str = "catalog"
    passed: bool = True
    reasons: list[str] = field(default_factory=list)


def headline_for(product: Product) -> Copy:
    """The default headline: the catalog title (a guarded Copywriter can take this place)."""
    return Copy(product.title, source="catalog")


@dataclass
class Creative:
    format: str
    image: Image.Image
    style: str
    product_box: Box
    product_mask: Image.Image  # L, the creative's size: 255 on the product's own pixels
    backdrop: tuple[int, int, int]  # the catalog photo's backdrop colour
    elements: list[dict]
    checks: dict
    copy: Copy | None

    @property
    def passed(self) -> bool:
        return all(c.get("passed") is not False for c in self.checks.values()) and \
            all(c.get("passed") is not None for c in self.checks.values())

    def encode(self, fmt: str = "PNG", quality: int = 90) -> bytes:
        buf = io.BytesIO()
        if fmt == "JPEG":
            self.image.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True)
        else:
            self.image.save(buf, "PNG", optimize=True)
        return buf.getvalue()


class CreativeStudio:
    """Renders and checks creatives; one instance per process (fonts are cached)."""

    def __init__(self, cfg: CreativeConfig, embed: Embed | None = None,
                 headline: Callable[[Product], Copy] = headline_for, painter=None):
        """`embed`: images -> vectors for the product check (None: the check is reported as not run and
        the creative does not pass); `painter`: a `DiffusionPainter` for `style: diffusion`."""
        self.cfg, self.embed, self.headline, self.painter = cfg, embed, headline, painter
        self.bold = find_font(cfg.font_bold, True)

    # ------------------------------------------------------------------ requests
    def check_request(self, formats: Sequence[str], style: str | None) -> str:
        """Validate a request before any work: the formats exist and fit the limits, the style is known
        and available. Returns the style to use."""
        if not formats:
            raise CreativeRequestError("invalid_request", "formats: give at least one")
        if len(formats) > self.cfg.max_formats:
            raise CreativeRequestError("too_many_formats", f"formats: at most {self.cfg.max_formats} per request")
        for name in formats:
            resolve_format(name, self.cfg)
        style = style or self.cfg.style
        if style not in STYLES:
            raise CreativeRequestError("unknown_style", f"style {style[:40]!r}: one of {', '.join(STYLES)}")
        if style == "diffusion" and self.painter is None:
            raise CreativeRequestError("style_unavailable", "style diffusion needs creative.diffusion.weights "
                                                            "(a diffusers inpainting pipeline) on a GPU replica")
        return style

    def render_all(self, product: Product, formats: Sequence[str], style: str | None = None,
                   with_copy: bool = True, copy: Copy | None = None, embed: Embed | None = None) -> list[Creative]:
        """Every format for one product; the product is cut out and the catalog photo embedded once.
        `embed` overrides the studio's own (a request's path to the served model)."""
        style = self.check_request(formats, style)
        if with_copy and copy is None:
            copy = self.headline(product)
        cut = cut_out(product.image, self.cfg.mask_threshold)
        creatives = [self._render(product, cut, name, style, copy if with_copy else None) for name in formats]
        embed = embed or self.embed
        if embed is not None:
            vectors = embed([reference_region(product.image, cut)]
                            + [product_region(c.image, c.product_box, c.product_mask, c.backdrop) for c in creatives])
            for c, v in zip(creatives, vectors[1:]):
                c.checks["product"] = similarity_check(v, vectors[0], self.cfg.min_similarity)
        return creatives

    def check_product(self, creative: Creative, photo: Image.Image, embed: Embed | None = None) -> dict:
        """The product check of `creative` against a catalog `photo` (the one it claims to show)."""
        embed = embed or self.embed
        if embed is None:
            raise ValueError("no image model to compare with")
        cut = cut_out(photo, self.cfg.mask_threshold)
        vectors = embed([reference_region(photo, cut),
                         product_region(creative.image, creative.product_box, creative.product_mask, creative.backdrop)])
        return similarity_check(vectors[1], vectors[0], self.cfg.min_similarity)

    def render(self, product: Product, fmt: str, style: str | None = None, with_copy: bool = True,
               copy: Copy | None = None) -> Creative:
        return self.render_all(product, [fmt], style, with_copy, copy)[0]

    # ------------------------------------------------------------------ one creative
    def _render(self, product: Product, cut: Cutout, name: str, style: str, copy: Copy | None) -> Creative:
        fmt = resolve_format(name, self.cfg)
        size = (fmt.width, fmt.height)
        layout = plan(fmt, with_text=True)
        colors = dominant_colors(cut)
        start, end = bg.palette_for(product.category, self.cfg.palettes) if style == "palette" else bg.tints(colors)
        canvas = (bg.pattern if style == "pattern" else bg.gradient)(size, start, end)
        placed, box = self._place(cut, layout)
        if not cut.cropped_at_bottom:
            canvas = bg.drop_shadow(canvas, box.as_list())
        canvas.paste(placed, (box.x0, box.y0), placed)
        keep = Image.new("L", size, 0)
        keep.paste(placed.getchannel("A"), (box.x0, box.y0))
        if style == "diffusion":
            canvas = self.painter.paint(canvas, keep, product)
        elements = self._texts(canvas, layout, fmt, product, copy, colors)
        checks = {
            "layout": layout_check(size, layout.safe, box, elements),
            "legibility": legibility_check(elements, self.cfg.min_contrast, self.cfg.min_font_px),
            "aspect": aspect_check(cut.image.size, box),
            "product": {"passed": None, "skipped": "no image model to compare with"},
        }
        if copy is not None:
            checks["copy"] = {"source": copy.source, "passed": copy.passed, "reasons": list(copy.reasons)}
        return Creative(name, canvas, style, box, keep, cut.backdrop, elements, checks, copy)

    def _place(self, cut: Cutout, layout: Plan) -> tuple[Image.Image, Box]:
        """The cut-out scaled by one factor (never distorted), centred in the product box."""
        room = layout.product
        cw, ch = cut.image.size
        scale = min(room.w * self.cfg.product_share / cw, room.h * self.cfg.product_share / ch, self.cfg.max_upscale)
        w, h = max(1, round(cw * scale)), max(1, round(ch * scale))
        x = room.x0 + (room.w - w) // 2
        y = room.y0 + (room.h - h) // 2
        return cut.image.resize((w, h), Image.LANCZOS), Box(x, y, x + w, y + h)

    def _texts(self, canvas: Image.Image, layout: Plan, fmt: FormatConfig, product: Product, copy: Copy | None,
               colors) -> list[dict]:
        """Fit, colour and draw headline, price and button into the text column; returns what was drawn."""
        col = layout.text
        u = min(fmt.width, fmt.height)
        lo = self.cfg.min_font_px
        head_max, price_size, cta_size = max(lo, round(0.075 * u)), max(lo, round(0.068 * u)), max(lo, round(0.042 * u))
        gap = max(4, round(0.03 * u))
        price = self.cfg.price_format.format(price=product.price) if product.price is not None else None
        # the button: its label shrinks to the column, then is cut
        cta_font = load_font(self.bold, cta_size)
        while cta_size > lo and text_width(cta_font, self.cfg.cta) + 1.8 * cta_size > col.w:
            cta_size -= 1
            cta_font = load_font(self.bold, cta_size)
        pad_x = round(0.9 * cta_size)
        label = self.cfg.cta if text_width(cta_font, self.cfg.cta) + 2 * pad_x <= col.w else \
            ellipsize(cta_font, self.cfg.cta, col.w - 2 * pad_x)
        button_h = round(2.3 * cta_size)
        button_w = min(col.w, text_width(cta_font, label) + 2 * pad_x)
        price_font = load_font(self.bold, price_size)
        while price and price_size > lo and text_width(price_font, price) > col.w:
            price_size -= 1
            price_font = load_font(self.bold, price_size)
        price_h = line_height(price_font) if price else 0
        fixed = button_h + (price_h + gap if price else 0)
        head = None
        if copy is not None and copy.text.strip():
            head = fit_text(copy.text, self.bold, col.w, max(0, col.h - fixed - gap), head_max, lo,
                            self.cfg.headline_max_lines)
            if not head.lines:
                head = None
        total = fixed + (head.height + gap if head else 0)
        y = col.y0 + max(0, (col.h - total) // 2)
        centred = not layout.side

        def x_for(width: int) -> int:
            return col.x0 + (col.w - width) // 2 if centred else col.x0

        # allotted boxes, top to bottom
        slots = []
        if head:
            slots.append(("headline", Box(col.x0, y, col.x1, y + head.height), head.lines, head.size,
                          head.line_height, head.truncated))
            y += head.height + gap
        if price:
            slots.append(("price", Box(col.x0, y, col.x1, y + price_h), [price], price_size, price_h,
                          price_size < max(lo, round(0.068 * u))))
            y += price_h + gap
        button = Box(x_for(button_w), y, x_for(button_w) + button_w, y + button_h)

        draw = ImageDraw.Draw(canvas)
        ink_boxes = {role: self._ink_box(lines, size, lh, room, x_for) for role, room, lines, size, lh, _ in slots}
        colours = self._text_colours(canvas, ink_boxes, col)
        elements = []
        for role, room, lines, size, lh, truncated in slots:
            ink = ink_boxes[role]
            behind = np.asarray(canvas.crop(ink.as_list()))
            colour = colours[role]
            self._draw_lines(draw, lines, size, lh, room, x_for, colour)
            elements.append({"role": role, "text": " ".join(lines), "size_px": size, "color": _hex(colour),
                             "box": ink.as_list(), "layout_box": room.as_list(), "truncated": bool(truncated),
                             "contrast": worst_contrast(colour, behind)})
        # the button: a fill that stands off its surroundings (3:1) and carries its label (min_contrast)
        around = np.asarray(canvas.crop(button.as_list())).reshape(-1, 3).mean(axis=0)
        fill, ink_colour = self._button_colours(colors, around)
        draw.rounded_rectangle(button.as_list(), radius=button_h // 2, fill=fill)
        font = load_font(self.bold, cta_size)
        origin = (button.x0 + (button.w - text_width(font, label)) // 2 + lead(font, label), button.y0 + button_h // 2)
        label_box = draw.textbbox(origin, label, font=font, anchor="lm")
        label_box = Box(*(int(v) for v in label_box))
        behind = np.asarray(canvas.crop(label_box.as_list()))
        draw.text(origin, label, font=font, fill=ink_colour, anchor="lm")
        elements.append({"role": "cta", "text": label, "size_px": cta_size, "color": _hex(ink_colour),
                         "box": label_box.as_list(), "layout_box": button.as_list(),
                         "truncated": label.endswith(ELLIPSIS) and not self.cfg.cta.endswith(ELLIPSIS),
                         "contrast": worst_contrast(ink_colour, behind)})
        return elements

    def _ink_box(self, lines, size, lh, room: Box, x_for) -> Box:
        font = load_font(self.bold, size)
        x0 = y0 = 10 ** 9
        x1 = y1 = -1
        for i, line in enumerate(lines):
            lx = x_for(text_width(font, line)) + lead(font, line)
            bx0, by0, bx1, by1 = font.getbbox(line, anchor="la")
            x0, y0 = min(x0, lx + bx0), min(y0, room.y0 + i * lh + by0)
            x1, y1 = max(x1, lx + bx1), max(y1, room.y0 + i * lh + by1)
        return Box(int(x0), int(y0), int(x1), int(y1))

    def _draw_lines(self, draw, lines, size, lh, room: Box, x_for, colour) -> None:
        font = load_font(self.bold, size)
        for i, line in enumerate(lines):
            draw.text((x_for(text_width(font, line)) + lead(font, line), room.y0 + i * lh), line, font=font, fill=colour, anchor="la")

    def _text_colours(self, canvas: Image.Image, boxes: dict[str, Box], column: Box) -> dict:
        """Dark or light text per element, against its actual pixels; a panel behind the texts
        (made more opaque step by step) when neither reaches `min_contrast`."""
        def best(role):
            behind = np.asarray(canvas.crop(boxes[role].as_list()))
            return max((worst_contrast(c, behind), c) for c in (DARK, LIGHT))

        choice = {role: best(role) for role in boxes}
        if all(c >= self.cfg.min_contrast for c, _ in choice.values()) or not boxes:
            return {role: c for role, (_, c) in choice.items()}
        union = Box(min(b.x0 for b in boxes.values()), min(b.y0 for b in boxes.values()),
                    max(b.x1 for b in boxes.values()), max(b.y1 for b in boxes.values()))
        pad = max(6, union.h // 12)
        panel = Box(max(column.x0, union.x0 - pad), max(column.y0, union.y0 - pad), min(column.x1, union.x1 + pad),
                    min(column.y1, union.y1 + pad))
        region = canvas.crop(panel.as_list())
        tone = LIGHT if float(relative_luminance(np.asarray(region).reshape(-1, 3).mean(axis=0))) > 0.18 else (0, 0, 0)
        for alpha in (0.55, 0.7, 0.85, 1.0):
            veiled = Image.blend(region, Image.new("RGB", region.size, tone), alpha)
            trial = canvas.copy()
            trial.paste(veiled, (panel.x0, panel.y0))
            choice = {role: max((worst_contrast(c, np.asarray(trial.crop(boxes[role].as_list()))), c)
                                for c in (DARK, LIGHT)) for role in boxes}
            if all(c >= self.cfg.min_contrast for c, _ in choice.values()):
                break
        canvas.paste(veiled, (panel.x0, panel.y0))
        return {role: c for role, (_, c) in choice.items()}

    def _button_colours(self, colors, around) -> tuple[tuple, tuple]:
        vivid = main_color(colors)
        light_bg = float(relative_luminance(around)) > 0.25
        target, label = ((0, 0, 0), LIGHT) if light_bg else ((255, 255, 255), DARK)
        need = max(self.cfg.min_contrast, 4.5)
        for t in np.linspace(0.0, 1.0, 21):
            fill = bg.mix(vivid, target, float(t))
            if contrast_ratio(fill, label) >= need and contrast_ratio(fill, around) >= 3.0:
                return fill, label
        return target, label


def reference_region(photo: Image.Image, cut: Cutout) -> Image.Image:
    """The catalog photo framed as `product_region` frames a creative's product: its cut-out box,
    the product's own pixels on the photo's backdrop."""
    mask = Image.new("L", photo.size, 0)
    mask.paste(cut.image.getchannel("A"), cut.box[:2])
    return product_region(photo, Box(*cut.box), mask, cut.backdrop)


def _hex(c) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in c[:3])
