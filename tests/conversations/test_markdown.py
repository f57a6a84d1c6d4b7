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


# --- GitHub's additions, code labels and math --------------------------------------------------------------


def test_tex_becomes_mathml_with_its_source_kept_exactly():
    html = render_markdown(r"Energy $E=mc^2$, a thin space $a\,b$ and \(x^2\).")
    assert html.count('<math display="inline">') == 3
    assert "<msup><mi>c</mi><mn>2</mn></msup>" in html
    # The source as written, not eaten by markdown's backslash escapes.
    assert '<annotation encoding="application/x-tex">a\\,b</annotation>' in html
    assert "<mspace" in html


@pytest.mark.parametrize("text", ["$$\n\\int_0^1 x\\,dx\n$$", "\\[\n\\int_0^1 x\\,dx\n\\]"])
def test_display_math_is_a_block(text):
    html = render_markdown(text)
    assert '<div class="math"><math display="block">' in html
    assert "<msubsup><mo>∫</mo>" in html


@pytest.mark.parametrize("text", ["It costs $5 and $10.", "Between $3 and $4 a month", "$ x $ is not math"])
def test_dollar_amounts_in_prose_are_not_math(text):
    html = render_markdown(text)
    assert "<math" not in html
    assert text.split()[-1].rstrip(".") in html


def test_markup_inside_a_formula_is_text():
    html = render_markdown(r"$\text{</math><img src=x onerror=alert(1)><script>alert(2)</script>}$")
    assert "<img" not in html and "<script" not in html
    assert "&lt;img" in html


def test_a_formula_that_cannot_be_read_is_shown_as_its_source():
    html = render_markdown(r"Broken: $\begin{matrix} a$")
    assert '<code class="math-error">$\\begin{matrix} a$</code>' in html


def test_task_lists_are_disabled_checkboxes():
    html = render_markdown("- [x] done\n- [ ] to do")
    assert '<ul class="contains-task-list">' in html
    boxes = re.findall(r"<input [^>]*>", html)
    assert len(boxes) == 2 and all('type="checkbox"' in box and 'disabled="disabled"' in box for box in boxes)
    assert ["checked" in box for box in boxes] == [True, False]


def test_table_alignment_is_a_class_not_a_style():
    html = render_markdown("| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |")
    assert '<th class="align-left">a</th>' in html and '<td class="align-right">3</td>' in html
    assert "style" not in html


def test_bare_urls_with_a_scheme_become_links_and_file_names_stay_text():
    html = render_markdown("See https://example.com/a?b=1, or setup.py and example.com.")
    assert '<a href="https://example.com/a?b=1" target="_blank" rel="noopener noreferrer nofollow">' in html
    assert html.count("<a ") == 1


def test_code_blocks_are_labelled_with_their_language_known_or_not():
    html = render_markdown("```python\nprint(1)\n```\n\n```nosuchlang\n<b>\n```\n\n```\nplain\n```")
    assert '<pre class="code"><span class="code-lang">python</span><code class="language-python">' in html
    assert '<pre class="code"><span class="code-lang">nosuchlang</span><code>&lt;b&gt;' in html
    assert html.count("code-lang") == 2


def test_mathml_cannot_carry_links_or_styles():
    # What latex2mathml could be made to write, sanitized as the model's text would be.
    from conversations.markdown import _cleaner

    dirty = '<math href="javascript:alert(1)" style="color:red"><mi xlink:href="https://x.example">x</mi></math>'
    assert _cleaner().clean(dirty) == "<math><mi>x</mi></math>"
