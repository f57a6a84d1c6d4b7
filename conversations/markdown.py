"""Markdown → sanitized HTML, one block at a time.

Model output is untrusted input. It is rendered on the server with markdown-it-py (raw HTML disabled, so a
`<script>` in the text stays text) and the result is sanitized again with nh3 (an allow-list, after
rendering: sanitizing before rendering is the classic mistake). Links keep only http(s) and mailto, open in a
new tab with `rel="noopener noreferrer nofollow"`; images are never fetched: they become links.

A streaming answer is cut into blocks at blank lines outside fenced code. A block, once its terminating
blank line (or closing fence) has arrived, never changes, so it is rendered exactly once and its HTML sent
once; only the open tail is shown as plain text until it completes. The HTML of a whole text is the join of
its blocks' HTML, so the live view, the history and the admin transcript are the same, and rendering an
answer costs time linear in its length.
"""

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypedDict

import nh3
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
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
    "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "span",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}

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
    """Pygments spans for a fenced block with a known language; empty (markdown-it escapes it) otherwise."""
    if not language or len(code) > MAX_HIGHLIGHT_CHARS:
        return ""
    lexer = _lexer(language.split()[0])
    if lexer is None:
        return ""
    return (
        f'<pre class="code"><code class="language-{lexer.aliases[0]}">{highlight(code, lexer, _FORMATTER)}</code></pre>'
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


_FORMATTER = HtmlFormatter(nowrap=True)


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "highlight": _highlight}).enable(["table", "strikethrough"])
    md.add_render_rule("image", _image_as_link)
    return md


@lru_cache(maxsize=1)
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=_TAGS,
        clean_content_tags={"script", "style"},
        attributes=_ATTRIBUTES,
        link_rel=_LINK_REL,
        url_schemes={"http", "https", "mailto"},
        url_relative="deny",
        allowed_classes={
            "pre": {"code"},
            "a": {"image-link"},
            # Pygments' token classes ("k", "s2", …) and the language of a highlighted block.
            "span": {name for name in STANDARD_TYPES.values() if name},
            "code": {f"language-{alias}" for alias in _languages()},
        },
        set_tag_attribute_values={"a": {"target": "_blank"}},
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
