"""Server-rendered markdown over the socket: each finished block once, and the same HTML everywhere."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from conversations.markdown import render_markdown
from conversations.models import Message
from tests.support import ChatSocket, unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def row(message_id: str) -> Message:
    return await sync_to_async(Message.objects.get)(pk=message_id)


async def test_blocks_stream_once_each_and_join_to_the_saved_html(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    _, answer = await chat.send_message("render", client_id=unique(), model=f"dev:tokens=500,tps=300,key={unique()}")
    blocks_before_done = 0
    while (event := await chat.recv())["type"] != "done":
        if event["type"] == "delta":
            blocks_before_done += len(event.get("blocks", []))
            # What is not yet a finished block is the tail, shown as text: it never holds a blank line
            # outside code, or it would have been cut.
            assert chat.rendered[answer] <= len(chat.texts[answer])
    assert blocks_before_done >= 3, "finished blocks must arrive while the answer streams"
    saved = await row(answer)
    assert chat.texts[answer] == saved.content
    assert chat.rendered[answer] == len(saved.content)
    assert chat.html[answer] == saved.content_html == render_markdown(saved.content)
    assert "<pre" in saved.content_html and "<script" not in saved.content_html
    await chat.close()


async def test_reopening_mid_answer_gets_the_blocks_so_far_then_the_rest(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    first = await ChatSocket.connect(daphne, session)
    conversation, answer = await first.send_message(
        "reopen", client_id=unique(), model=f"dev:tokens=600,tps=150,key={unique()}"
    )
    await first.recv_until(lambda e: e["type"] == "delta")
    await first.close()
    await asyncio.sleep(1.3)  # past a checkpoint

    again = await ChatSocket.connect(daphne, session)
    history = await again.request({"type": "open", "conversation": conversation}, "history")
    [streaming] = [m for m in history["messages"] if m["id"] == answer]
    assert streaming["status"] == "streaming" and streaming["rendered"] > 0 and streaming["html"]
    assert streaming["html"] == render_markdown(streaming["content"][: streaming["rendered"]])
    await again.done(answer)
    saved = await row(answer)
    assert again.texts[answer] == saved.content
    assert again.html[answer] == saved.content_html
    await again.close()


async def test_resume_with_rendered_sends_only_the_missing_blocks(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    _, answer = await chat.send_message("resume", client_id=unique(), model=f"dev:tokens=600,tps=150,key={unique()}")
    await chat.recv_until(lambda e: e["type"] == "delta" and chat.rendered.get(answer, 0) > 0)
    text, html, rendered = chat.texts[answer], chat.html[answer], chat.rendered[answer]
    await chat.close()

    again = await ChatSocket.connect(daphne, session)
    again.texts[answer], again.html[answer], again.rendered[answer] = text, html, rendered
    await again.send({"type": "resume", "message": answer, "offset": len(text), "rendered": rendered})
    await again.done(answer)
    saved = await row(answer)
    assert again.texts[answer] == saved.content
    assert again.html[answer] == saved.content_html

    # A finished answer resumed comes back as its remaining text and its whole HTML.
    late = await ChatSocket.connect(daphne, session)
    late.texts[answer] = text
    await late.send({"type": "resume", "message": answer, "offset": len(text), "rendered": rendered})
    done = await late.done(answer)
    assert done["html"] == saved.content_html
    assert late.texts[answer] == saved.content
    for socket in (again, late):
        await socket.close()


async def test_hostile_markdown_from_the_model_arrives_sanitized(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    hostile = (
        "Look: <script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n[click](javascript:alert(3))\n\n"
        "![tracker](https://tracker.example/pixel.png)\n\n<iframe src=https://evil.example></iframe>\n\ndone"
    )
    _, answer = await chat.send_message(hostile, client_id=unique(), model="dev:echo,tps=400")
    await chat.done(answer)
    html = chat.html[answer]
    assert chat.texts[answer] == hostile
    for needle in ("<script", "<img", "<iframe", 'javascript:alert(3)"', 'src="https://tracker'):
        assert needle not in html, needle
    assert 'href="https://tracker.example/pixel.png"' in html, "a remote image becomes a link"
    await chat.close()
