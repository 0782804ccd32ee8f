"""Show which reply tokens depend on the persona: PIR as colours in the terminal and in HTML.

Red means the persona made the token more likely (PIR > 0: the "cat" in "my cat"), blue less
likely; white is a token the persona did not change (the generic "the", "and"). Colours saturate
at ±SCALE nats.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.style import Style
from rich.text import Text

from personalm import report
from personalm.perce.contrast import TokenInfluence

SCALE = 4.0


@dataclass
class Explained:
    """One example and its reply tokens' influence."""

    persona: str
    messages: list[dict[str, str]]
    influence: TokenInfluence


def colour(pir: float) -> tuple[int, int, int]:
    """White at 0, red toward +SCALE, blue toward −SCALE."""
    strength = min(abs(pir) / SCALE, 1.0)
    fade = round(255 * (1 - strength))
    return (255, fade, fade) if pir > 0 else (fade, fade, 255)


def visible(token: str, special: set[str]) -> str:
    """How a token prints: end-of-turn markers as ⏎, newlines kept."""
    return "⏎" if token in special else token


def terminal_text(influence: TokenInfluence, special: set[str]) -> Text:
    text = Text()
    for token, pir in zip(influence.tokens, influence.pir, strict=True):
        if token in special or not token:
            continue
        r, g, b = colour(pir)
        text.append(token, Style(color="black", bgcolor=f"rgb({r},{g},{b})"))
    return text


def top_tokens(influence: TokenInfluence, special: set[str], k: int = 5) -> list[tuple[str, float]]:
    """The k tokens with the highest PIR (special tokens and whitespace left out)."""
    scored = [
        (token.strip(), pir)
        for token, pir in zip(influence.tokens, influence.pir, strict=True)
        if token not in special and token.strip()
    ]
    return sorted(scored, key=lambda item: -item[1])[:k]


STYLE = """.reply{font-family:ui-monospace,monospace;font-size:1.1rem;margin:.6rem 0;padding:.5rem;border:1px solid #ccc}
.reply span,.legend span{padding:1px 0;border-radius:2px} .legend span{padding:2px 8px}
.persona{color:#444;white-space:pre-wrap} .turn{color:#666} .top{color:#444;font-size:.9rem}"""


def legend() -> str:
    spans = "".join(
        f'<span style="background:rgb{colour(v)}">{v:+g}</span>' for v in (-SCALE, -SCALE / 2, 0, SCALE / 2, SCALE)
    )
    return (
        "<p>PIR = log p(token | persona, context) − log p(token | context). Red tokens became more likely "
        "because of the persona; blue less likely. Hover a token for its values.</p>"
        f'<p class="legend">scale (nats): {spans}</p>'
    )


def heatmap_sections(items: Sequence[Explained], special: set[str]) -> str:
    """One <section> per example: persona, context turns, the reply as a PIR heatmap."""
    blocks = []
    for number, item in enumerate(items, start=1):
        spans = []
        for token, pir, lw, lo in zip(
            item.influence.tokens,
            item.influence.pir,
            item.influence.logp_with,
            item.influence.logp_without,
            strict=True,
        ):
            r, g, b = colour(pir)
            tip = f"PIR {pir:+.2f} | log p with persona {lw:.2f} | without {lo:.2f}"
            shown = html.escape(visible(token, special)).replace("\n", "<br>")
            spans.append(f'<span style="background:rgb({r},{g},{b})" title="{tip}">{shown}</span>')
        context = "".join(
            f"<div class='turn'><b>{html.escape(m['role'])}:</b> {html.escape(m['content'])}</div>"
            for m in item.messages[:-1]
        )
        top = ", ".join(f"{html.escape(t)} ({p:+.2f})" for t, p in top_tokens(item.influence, special))
        blocks.append(
            f"<section><h2>Example {number}</h2>"
            f"<div class='persona'><b>persona:</b> {html.escape(item.persona)}</div>{context}"
            f"<div class='reply'>{''.join(spans)}</div><div class='top'>highest PIR: {top}</div></section>"
        )
    return "".join(blocks)


def write_html(
    path: Path, items: Sequence[Explained], special: set[str], title: str = "PerContrast: persona influence"
) -> Path:
    """A standalone page of heatmaps, written by the one report writer."""
    return report.write_page(path, title, [legend(), heatmap_sections(items, special)], style=STYLE)
