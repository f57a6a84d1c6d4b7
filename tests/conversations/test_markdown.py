"""The markdown renderer: safe output for hostile input, and blocks that do not depend on how text arrived."""

import random
import re

import pytest

from conversations.markdown import Block, BlockSplitter, render_blocks, render_markdown
from devllm.simulator import DevOptions, answer_text


def test_raw_html_in_model_output_stays_text():
    html = render_markdown("Hi <script>alert(1)</script> <img src=x onerror=alert(1)> <iframe src=//evil.example>")
    assert "<script" not in html and "<img" not in html and "<iframe" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize(
    "link",
    [
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](data:text/html,<script>1</script>)",
        "<javascript:alert(1)>",
    ],
)
def test_script_and_data_links_lose_their_target(link):
    html = render_markdown(link)
    assert not re.search(r"href=[\"']?\s*(javascript|data):", html, re.IGNORECASE), html


def test_links_open_safely_and_only_for_web_and_mail_schemes():
    html = render_markdown(
        "[web](https://example.com/a?b=1) [mail](mailto:a@example.com) [rel](/admin/) [ftp](ftp://x)"
    )
    assert html.count('rel="noopener noreferrer nofollow"') == 4
    assert 'href="https://example.com/a?b=1"' in html and 'href="mailto:a@example.com"' in html
    assert "/admin/" not in html and "ftp://" not in html
    assert 'target="_blank"' in html


def test_images_are_never_fetched_but_shown_as_links():
    html = render_markdown("![a cat](https://images.example/cat.png)")
    assert "<img" not in html
    assert re.search(r'<a class="image-link" href="https://images.example/cat.png"[^>]*>🖼 a cat</a>', html)


def test_code_is_highlighted_and_unknown_languages_are_escaped():
    html = render_markdown('```python\nprint("<b>")\n```\n\n```nosuchlang\n<b>x</b>\n```')
    assert '<code class="language-python">' in html
    assert '<span class="nb">print</span>' in html
    assert "&lt;b&gt;" in html and "<b>" not in html


def test_tables_lists_and_emphasis_render():
    html = render_markdown("| a | b |\n|---|---|\n| 1 | 2 |\n\n1. one\n2. **two** ~~three~~")
    assert "<table>" in html and "<td>2</td>" in html
    assert "<ol>" in html and "<strong>two</strong>" in html and "<s>three</s>" in html


def test_blocks_end_at_blank_lines_outside_code_fences():
    text = "Para one.\n\n```\ncode\n\nstill code\n```\nafter\n\ntail"
    blocks, tail = render_blocks(text)
    assert [text[b.start : b.end] for b in blocks] == [
        "Para one.\n\n",
        "```\ncode\n\nstill code\n```\n",
        "after\n\n",
    ]
    assert tail == "tail"
    assert "still code" in blocks[1].html and "<pre>" in blocks[1].html


def test_blocks_do_not_depend_on_how_the_text_was_cut():
    text = answer_text([{"role": "user", "content": "blocks"}], DevOptions(ttft=0, tps=1, tokens=3000))
    expected = split_whole(BlockSplitter(), [text])
    rng = random.Random(7)
    for _ in range(5):
        pieces, position = [], 0
        while position < len(text):
            size = rng.randint(1, 40)
            pieces.append(text[position : position + size])
            position += size
        assert split_whole(BlockSplitter(), pieces) == expected
    assert "".join(block.html for block in expected) == render_markdown(text)
    assert [b.end for b in expected[:-1]] == [b.start for b in expected[1:]], "blocks are contiguous"
    assert expected[-1].end == len(text)


def split_whole(splitter: BlockSplitter, pieces: list[str]) -> list[Block]:
    blocks = [block for piece in pieces for block in splitter.feed(piece)]
    last = splitter.finish()
    return [*blocks, last] if last is not None else blocks


def test_a_prefix_has_the_same_finished_blocks_as_the_whole():
    text = answer_text([{"role": "user", "content": "prefix"}], DevOptions(ttft=0, tps=1, tokens=800))
    all_blocks, _ = render_blocks(text)
    for cut in (len(text) // 3, len(text) // 2, len(text) - 5):
        blocks, tail = render_blocks(text[:cut])
        assert blocks == all_blocks[: len(blocks)]
        assert (blocks[-1].end if blocks else 0) + len(tail) == cut
