"""Markdown → sanitized HTML, one block at a time.

Model output is untrusted input. It is rendered on the server with markdown-it-py (raw HTML disabled, so a
`<script>` in the text stays text) and the result is sanitized again with nh3 (an allow-list, after
rendering: sanitizing before rendering is the classic mistake). Links keep only http(s) and mailto, open in a
new tab with `rel="noopener noreferrer nofollow"`; images are never fetched: they become links.

Besides CommonMark: GitHub's tables (with column alignment, as classes: the page's CSP allows no inline
styles), strikethrough, task lists and bare URLs as links; fenced code highlighted with Pygments and labelled
with its language; and TeX math (`$…$`, `$$…$$`, `\\(…\\)`, `\\[…\\]`) as MathML, which browsers display
without any script. A formula's source is kept in its MathML (an `annotation`), and a `$` followed by a
digit or a space, as in "$5 and $10", is not taken for math.

A streaming answer is cut into blocks at blank lines outside fenced code. A block, once its terminating
blank line (or closing fence) has arrived, never changes, so it is rendered exactly once and its HTML sent
once; only the open tail is shown as plain text until it completes. The HTML of a whole text is the join of
its blocks' HTML, so the live view, the history and the admin transcript are the same, and rendering an
answer costs time linear in its length.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypedDict
from xml.etree.ElementTree import Element, SubElement, tostring

import nh3
from latex2mathml.converter import convert_to_element
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.tasklists import tasklists_plugin
from mdit_py_plugins.texmath import texmath_plugin
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_all_lexers, get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

# A fence may be indented (inside a list item); its closing line uses the same character, at least as many.
_FENCE = re.compile(r"\s*(`{3,}|~{3,})")
MAX_HIGHLIGHT_CHARS = 20_000  # longer code is shown plain: highlighting costs more than it is worth

_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "span", "div", "input",
}  # fmt: skip
# MathML Core's presentation elements, as latex2mathml writes them. No attribute that holds a URL or a style.
_MATH_TAGS = {
    "math", "semantics", "annotation", "mrow", "mi", "mo", "mn", "ms", "mtext", "mspace", "msup", "msub",
    "msubsup", "mfrac", "msqrt", "mroot", "mover", "munder", "munderover", "mtable", "mtr", "mtd", "mstyle",
    "mpadded", "mphantom", "menclose", "merror", "mmultiscripts", "mprescripts", "none",
}  # fmt: skip
_MATH_ATTRIBUTES = {
    "math": {"display"},
    "annotation": {"encoding"},
    "mi": {"mathvariant"},
    "mo": {"stretchy", "fence", "separator", "lspace", "rspace", "form", "largeop", "movablelimits", "symmetric",
           "minsize", "maxsize", "accent"},
    "mover": {"accent"},
    "munder": {"accentunder"},
    "munderover": {"accent", "accentunder"},
    "mfrac": {"linethickness"},
    "mspace": {"width", "height", "depth"},
    "mpadded": {"width", "height", "depth", "lspace", "voffset"},
    "mstyle": {"displaystyle", "scriptlevel", "mathvariant"},
    "mtable": {"columnalign", "rowalign", "columnspacing", "rowspacing", "columnlines", "rowlines", "frame"},
    "mtr": {"columnalign", "rowalign"},
    "mtd": {"columnalign", "rowalign", "columnspan", "rowspan"},
    "menclose": {"notation"},
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "input": {"checked"}, **_MATH_ATTRIBUTES}
_ALIGNMENTS = ("left", "center", "right")

_LINK_REL = "noopener noreferrer nofollow"


class BlockPayload(TypedDict):
    """A finished block as clients receive it: code points [start, end) of the text, and their HTML."""

    start: int
    end: int
    html: str


@dataclass(frozen=True)
class Block:
    """A finished block of markdown: the code points [start, end) of the text, and their HTML."""

    start: int
    end: int
    html: str

    def payload(self) -> BlockPayload:
        return {"start": self.start, "end": self.end, "html": self.html}


def _highlight(code: str, language: str, _attrs: Any) -> str:
    """A fenced block that names its language: labelled with it, and highlighted when Pygments knows it (and
    the code is not too long). Empty otherwise: markdown-it then escapes the code as it is."""
    if not language:
        return ""
    name = language.split()[0]
    label = f'<span class="code-lang">{nh3.escape(name)}</span>'
    lexer = _lexer(name) if len(code) <= MAX_HIGHLIGHT_CHARS else None
    if lexer is None:
        return f'<pre class="code">{label}<code>{nh3.escape(code)}</code></pre>'
    return (
        f'<pre class="code">{label}<code class="language-{lexer.aliases[0]}">'
        f"{highlight(code, lexer, _FORMATTER)}</code></pre>"
    )


@lru_cache(maxsize=256)
def _lexer(name: str) -> Lexer | None:
    """The lexer of a language name, made once: finding and making one cost more than many a block's render.
    (A lexer keeps no state between texts.)"""
    try:
        return get_lexer_by_name(name, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return None


def _image_as_link(self: RendererHTML, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    """An image in model output would make the browser fetch a URL the model chose: show a link instead."""
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env) or "image"
    src = str(token.attrGet("src") or "")
    return f'<a class="image-link" href="{nh3.escape(src)}">🖼 {nh3.escape(alt)}</a>'


_NUMERIC_REFERENCE = re.compile(r"&#x([0-9a-fA-F]+);")


def _mathml(latex: str, *, display: bool) -> str:
    """A formula as MathML, its source kept as an annotation; the source as code if it cannot be converted.

    latex2mathml's own serialisation leaves the text of `\text{…}` unescaped (its output would carry markup
    of the model's making); the element tree it builds is serialised here instead, with its character
    references (`&#x0003D;`) turned into the characters they stand for first.
    """
    try:
        math = convert_to_element(latex, display="block" if display else "inline")
    except Exception:  # latex2mathml raises many kinds of errors for malformed TeX
        delimiter = "$$" if display else "$"
        return f'<code class="math-error">{nh3.escape(delimiter + latex + delimiter)}</code>'
    for node in math.iter():
        if node.text:
            node.text = _NUMERIC_REFERENCE.sub(lambda match: chr(int(match.group(1), 16)), node.text)
    math.attrib.pop("xmlns", None)
    semantics = Element("semantics")
    semantics.extend(list(math))
    for child in list(math):
        math.remove(child)
    math.append(semantics)
    SubElement(semantics, "annotation", {"encoding": "application/x-tex"}).text = latex
    return tostring(math, encoding="unicode", short_empty_elements=False)


def _math_rule(display: bool) -> Any:
    def render(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
        html = _mathml(tokens[idx].content.strip(), display=display)
        return f'<div class="math">{html}</div>\n' if display else html

    return render


def _align_cells(state: StateCore) -> None:
    """Column alignment as a class (`align-right`), not the inline style markdown-it writes."""
    for token in state.tokens:
        if token.type in ("th_open", "td_open"):
            style = str(token.attrs.pop("style", ""))
            align = style.removeprefix("text-align:")
            if align in _ALIGNMENTS:
                token.attrSet("class", f"align-{align}")


_FORMATTER = HtmlFormatter(nowrap=True)


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "highlight": _highlight, "linkify": True})
    md.enable(["table", "strikethrough", "linkify"])
    # Only URLs with a scheme become links: "setup.py" or "example.com" in prose stay text.
    assert md.linkify is not None  # noqa: S101 - linkify-it-py is a dependency; markdown-it made it
    md.linkify.set({"fuzzy_link": False, "fuzzy_email": False})
    # No blank line inside $$…$$ (TeX allows none): a block of the streaming splitter never cuts a formula.
    dollarmath_plugin(md, allow_space=False, allow_digits=False, allow_labels=False, allow_blank_lines=False)
    texmath_plugin(md, delimiters="brackets")
    tasklists_plugin(md)
    md.core.ruler.push("align_cells", _align_cells)
    for rule in ("math_inline", "math_inline_double"):
        md.add_render_rule(rule, _math_rule(display=rule == "math_inline_double"))
    for rule in ("math_block", "math_block_eqno", "math_block_label"):
        md.add_render_rule(rule, _math_rule(display=True))
    md.add_render_rule("image", _image_as_link)
    return md


@lru_cache(maxsize=1)
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=_TAGS | _MATH_TAGS,
        clean_content_tags={"script", "style"},
        attributes=_ATTRIBUTES,
        link_rel=_LINK_REL,
        url_schemes={"http", "https", "mailto"},
        url_relative="deny",
        allowed_classes={
            "pre": {"code"},
            "a": {"image-link"},
            # Pygments' token classes ("k", "s2", …), a code block's label, and the language of a highlighted
            # block.
            "span": {name for name in STANDARD_TYPES.values() if name} | {"code-lang"},
            "code": {f"language-{alias}" for alias in _languages()} | {"math-error"},
            "div": {"math"},
            "th": {f"align-{align}" for align in _ALIGNMENTS},
            "td": {f"align-{align}" for align in _ALIGNMENTS},
            "ul": {"contains-task-list"},
            "li": {"task-list-item"},
            "input": {"task-list-item-checkbox"},
        },
        # A task list's boxes show a state; they are never a form control the model could make live.
        set_tag_attribute_values={
            "a": {"target": "_blank"},
            "input": {"type": "checkbox", "disabled": "disabled", "aria-label": "Task"},
        },
    )


@lru_cache(maxsize=1)
def _languages() -> frozenset[str]:
    return frozenset(alias for _, aliases, _, _ in get_all_lexers() for alias in aliases)


def render_block(text: str) -> str:
    """The sanitized HTML of one block (or of any markdown text, rendered as a whole)."""
    if not text.strip():
        return ""
    return _cleaner().clean(_markdown().render(text))


class BlockSplitter:
    """Cuts a growing markdown text into finished blocks, each rendered once.

    `feed()` takes the text as it arrives and returns the blocks it completed; `finish()` renders what is
    left. Only complete lines are examined, so where the text was cut into pieces does not matter: the
    blocks of a text are a function of the text alone.
    """

    def __init__(self) -> None:
        self.start = 0  # code points before the open block
        self._pending = ""  # the open block's text
        self._scan = 0  # where the next unexamined line begins in _pending
        self._fence: tuple[str, int] | None = None  # the open fence's character and length

    @property
    def tail(self) -> str:
        return self._pending

    def feed(self, text: str) -> list[Block]:
        self._pending += text
        blocks: list[Block] = []
        while (newline := self._pending.find("\n", self._scan)) != -1:
            line = self._pending[self._scan : newline]
            self._scan = newline + 1
            if self._fence is not None:
                if self._closes_fence(line):
                    self._fence = None
                    blocks.append(self._cut())
            elif match := _FENCE.match(line):
                self._fence = (match.group(1)[0], len(match.group(1)))
            elif not line.strip() and self._pending[: self._scan].strip():
                blocks.append(self._cut())
        return blocks

    def finish(self) -> Block | None:
        """The last block: whatever is left, rendered even if unfinished (an unclosed fence ends here)."""
        if not self._pending:
            return None
        self._scan = len(self._pending)
        return self._cut()

    def _closes_fence(self, line: str) -> bool:
        assert self._fence is not None  # noqa: S101 - only called inside a fence
        char, length = self._fence
        stripped = line.strip()
        return len(stripped) >= length and stripped == char * len(stripped)

    def _cut(self) -> Block:
        text, self._pending = self._pending[: self._scan], self._pending[self._scan :]
        self._scan = 0
        block = Block(self.start, self.start + len(text), render_block(text))
        self.start = block.end
        return block


def render_blocks(text: str) -> tuple[list[Block], str]:
    """The finished blocks of a text that may still grow, and its unfinished tail (plain text)."""
    splitter = BlockSplitter()
    blocks = splitter.feed(text)
    return blocks, splitter.tail


def render_markdown(text: str) -> str:
    """The sanitized HTML of a whole text: the join of its blocks, as a streaming client ends up with."""
    splitter = BlockSplitter()
    blocks = splitter.feed(text)
    last = splitter.finish()
    return "".join(block.html for block in [*blocks, *([last] if last else [])])
