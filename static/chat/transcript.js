// One message on screen. Offsets count Unicode code points, as the server does (docs/protocol.md).
//
// An answer is shown as the HTML of its finished markdown blocks, rendered and sanitized by the server and
// received once each, followed by its unfinished tail (see `Tail`). Model text never reaches innerHTML:
// text goes through text nodes, and only server-sanitized HTML goes through the one Trusted Types policy
// below (the chat page's Content-Security-Policy refuses any other HTML sink).

const html = window.trustedTypes
  ? window.trustedTypes.createPolicy("chat-html", { createHTML: (sanitized) => sanitized })
  : { createHTML: (sanitized) => sanitized };

export function codePoints(text) {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

/** Where the first `count` code points of `text` end, in UTF-16 units (JavaScript string indexes). */
function codePointIndex(text, count) {
  let index = 0;
  while (count > 0 && index < text.length) {
    const unit = text.charCodeAt(index);
    const pair = unit >= 0xd800 && unit <= 0xdbff && (text.charCodeAt(index + 1) & 0xfc00) === 0xdc00;
    index += pair ? 2 : 1;
    count -= 1;
  }
  return index;
}

/** `text` without its first `count` code points. */
export function dropCodePoints(text, count) {
  return text.slice(codePointIndex(text, count));
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, action, { title, pressed } = {}) {
  const node = element("button", `action ${action}`, label);
  node.type = "button";
  node.dataset.action = action;
  if (title) {
    node.title = title;
    // A label in words is its own name (speech users say what they see); an emoji gets the title as its name.
    if (!/^\p{L}/u.test(label)) node.setAttribute("aria-label", title);
  }
  if (pressed !== undefined) node.setAttribute("aria-pressed", String(pressed));
  return node;
}

const ROLE_LABELS = { user: "You", assistant: "Assistant", tool: "Tool result" };

const STATUS_TEXT = {
  streaming: "Writing…",
  cancelled: "Stopped",
  interrupted: "Interrupted",
  error: "Failed",
  sending: "Sending…",
  queued: "Waiting for the connection…",
};

export class MessageView {
  constructor(payload, { simulator }) {
    this.id = payload.id;
    this.role = payload.role;
    this.seq = payload.seq;
    this.simulator = simulator;
    this.node = element("article", `message ${payload.role}`);
    this.node.dataset.id = payload.id;
    // Who said it, for screen readers (sighted readers tell by the layout).
    this.node.setAttribute("aria-label", ROLE_LABELS[payload.role] || payload.role);
    this.body = element("div", "message-body");
    this.meta = element("footer", "message-meta");
    this.node.append(this.body, this.meta);
    if (this.role === "assistant") this.initAnswer(payload);
    else if (this.role === "tool") this.initToolResult(payload);
    else this.initUser(payload);
    this.setStatus(payload.status, payload);
  }

  /** A tool's result that an API client sent back (docs/api.md): shown as it came, not editable. */
  initToolResult(payload) {
    this.text = payload.content;
    this.length = codePoints(this.text);
    this.body.append(element("div", "tool-label", "Tool result"), element("pre", "plain", this.text));
    this.actions = element("span", "actions");
    this.actions.append(button("Copy", "copy", { title: "Copy this result" }));
    this.meta.append(this.actions);
  }

  initUser(payload) {
    this.text = payload.content;
    this.length = codePoints(this.text);
    this.textNode = element("div", "plain", this.text);
    this.body.append(this.textNode);
    this.actions = element("span", "actions");
    this.actions.append(button("Edit", "edit", { title: "Edit this message and answer again" }), button("Copy", "copy", { title: "Copy this message" }));
    this.meta.append(this.actions);
  }

  initAnswer(payload) {
    this.text = payload.content;
    this.length = codePoints(this.text);
    this.rendered = payload.rendered;
    this.blocks = element("div", "rendered");
    this.tail = new Tail(element("div", "tail"));
    this.tail.set(dropCodePoints(this.text, this.rendered));
    this.tools = element("div", "tools");
    this.body.append(this.blocks, this.tail.node, this.tools);
    this.insertHTML(payload.html);
    if (payload.tool_calls?.length) this.showTools(payload.tool_calls);
    this.statusNode = element("span", "status");
    this.usageNode = element("span", "usage");
    this.actions = element("span", "actions");
    this.feedbackUp = button("👍", "feedback-up", { title: "Good answer", pressed: payload.feedback === "up" });
    this.feedbackDown = button("👎", "feedback-down", { title: "Bad answer", pressed: payload.feedback === "down" });
    this.actions.append(button("Copy", "copy", { title: "Copy this answer" }), this.feedbackUp, this.feedbackDown);
    this.meta.append(this.statusNode, this.usageNode, this.actions);
    // Which model wrote it: a conversation may change models between answers.
    if (payload.model) this.meta.insertBefore(element("span", "model", payload.model), this.actions);
    if (this.simulator) this.meta.append(element("span", "simulated", "simulated"));
    if (payload.context_left_out) {
      const count = payload.context_left_out;
      const note = `${count} earlier message${count === 1 ? " was" : "s were"} left out to fit the model's context`;
      this.meta.append(element("span", "left-out", note));
    }
  }

  insertHTML(markup) {
    if (!markup) return;
    const before = this.blocks.lastElementChild;
    this.blocks.insertAdjacentHTML("beforeend", html.createHTML(markup));
    let node = before ? before.nextElementSibling : this.blocks.firstElementChild;
    for (; node; node = node.nextElementSibling) {
      if (node.tagName === "PRE") decorateCode(node);
    }
  }

  /** Applies a delta; false when something before it was lost (its text or a block): then resume. */
  applyDelta({ offset, text, blocks }) {
    if (offset > this.length) return false;
    const fresh = offset < this.length ? dropCodePoints(text, this.length - offset) : text;
    const length = this.length + codePoints(fresh);
    // A block this view cannot place means one before it was lost: take nothing of this delta, so that the
    // resume (from this view's length and blocks) brings it all again, in order.
    if (!this.fits(blocks, length)) return false;
    if (fresh) {
      this.text += fresh;
      this.length = length;
    }
    if (this.addBlocks(blocks)) this.tail.set(dropCodePoints(this.text, this.rendered));
    else if (fresh) this.tail.append(fresh);
    return true;
  }

  /** Whether `blocks` follow on from this view's rendered part, once its text is `length` long. */
  fits(blocks, length) {
    let rendered = this.rendered;
    for (const block of blocks || []) {
      if (block.end <= rendered) continue;
      if (block.start > rendered || block.end > length) return false;
      rendered = block.end;
    }
    return true;
  }

  /** Appends the blocks this view lacks (they must fit, see `fits`); whether any was added. */
  addBlocks(blocks) {
    let added = false;
    for (const block of blocks || []) {
      if (block.end <= this.rendered) continue;
      this.insertHTML(block.html);
      this.rendered = block.end;
      added = true;
    }
    return added;
  }

  /** The end of the answer: its last blocks, or its whole HTML when the server could not be sure we had the rest. */
  applyDone(event) {
    if (event.length < this.length) {
      // Live text its process never saved before it died: not part of the answer.
      this.text = this.text.slice(0, codePointIndex(this.text, event.length));
      this.length = event.length;
    }
    if (event.html !== undefined) {
      this.blocks.replaceChildren();
      this.insertHTML(event.html);
      this.rendered = this.length;
      this.tail.set("");
    } else if (this.fits(event.blocks, this.length)) {
      this.addBlocks(event.blocks);
      this.tail.set(dropCodePoints(this.text, this.rendered));
    }
    this.setStatus(event.status, event);
  }

  showTools(toolCalls) {
    this.tools.replaceChildren(
      ...toolCalls.map((call) => element("div", "tool-call", `🔧 ${call.name || "tool"}(${call.arguments})`)),
    );
  }

  setStatus(status, { usage, error } = {}) {
    this.status = status;
    this.node.dataset.status = status;
    if (this.role !== "assistant") {
      this.node.classList.toggle("pending", status === "sending" || status === "queued" || status === "failed");
      return;
    }
    let text = STATUS_TEXT[status] || "";
    if (status === "cancelled") text = this.length ? "Stopped — the answer so far is kept" : "Stopped before the first word";
    if (status === "interrupted") text = "Interrupted — the server stopped while writing; the answer so far is kept";
    if (status === "error" && error) text = `Failed: ${error.message}`;
    this.statusNode.textContent = text;
    this.statusNode.classList.toggle("problem", status === "error" || status === "interrupted");
    if (usage) {
      this.usageNode.textContent = `${usage.total_tokens} tokens`;
      this.usageNode.title = `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`;
    }
    this.node.setAttribute("aria-busy", String(status === "streaming"));
    this.node.classList.toggle("empty", this.length === 0); // nothing to copy or rate
  }

  setFeedback(value) {
    this.feedbackUp.setAttribute("aria-pressed", String(value === "up"));
    this.feedbackDown.setAttribute("aria-pressed", String(value === "down"));
  }

  feedback() {
    if (this.feedbackUp.getAttribute("aria-pressed") === "true") return "up";
    if (this.feedbackDown.getAttribute("aria-pressed") === "true") return "down";
    return null;
  }

  /** Shows the latest-answer actions (regenerate, or retry for a failed answer) on this view only. */
  setLatest(latest) {
    this.actions.querySelector(".regenerate")?.remove();
    if (!latest || this.status === "streaming") return;
    const retry = this.status === "error" || this.status === "interrupted";
    this.actions.append(
      button(retry ? "Retry" : "Regenerate", "regenerate", { title: retry ? "Try this answer again" : "Answer again" }),
    );
  }
}

// A line that opens a fenced code block, as the server's splitter reads it (conversations/markdown.py).
const FENCE = /^\s*(`{3,}|~{3,})\s*([^\s`]*)/;

/**
 * The unfinished block of an answer, shown as what it will become: plain text, and once a line in it opens a
 * code fence, the text before that line followed by a code box, labelled with the fence's language, whose
 * text grows as it arrives (highlighted once the block is finished and its HTML arrives). Appending costs
 * time proportional to what is appended; the whole tail is set again only when a block is finished.
 */
class Tail {
  constructor(node) {
    this.node = node;
    this.plain = document.createTextNode("");
    this.node.append(this.plain);
    this.code = null; // the text node of the open code box, once a fence has opened
    this.line = ""; // the last line of the plain text, while it is unfinished
    this.lineStart = 0; // where that line begins in the plain text
  }

  set(text) {
    this.node.replaceChildren(this.plain);
    this.plain.data = "";
    this.code = null;
    this.line = "";
    this.lineStart = 0;
    this.append(text);
  }

  append(text) {
    let rest = text;
    while (!this.code) {
      const end = rest.indexOf("\n");
      if (end < 0) {
        this.plain.appendData(rest);
        this.line += rest;
        return;
      }
      const line = this.line + rest.slice(0, end);
      const piece = rest.slice(0, end + 1);
      rest = rest.slice(end + 1);
      this.line = "";
      const fence = FENCE.exec(line);
      if (fence) {
        this.openCode(fence[2]);
        break;
      }
      this.plain.appendData(piece);
      this.lineStart = this.plain.length;
    }
    if (rest) this.code.appendData(rest);
  }

  /** Replaces the fence's line, shown as text so far, with an empty code box. */
  openCode(language) {
    this.plain.data = this.plain.data.slice(0, this.lineStart);
    const pre = element("pre", "code open");
    if (language) pre.append(element("span", "code-lang", language));
    const code = element("code");
    this.code = document.createTextNode("");
    code.append(this.code);
    pre.append(code);
    this.node.append(pre);
  }
}

function decorateCode(pre) {
  const copy = button("Copy code", "copy-code", { title: "Copy this code" });
  pre.classList.add("has-copy");
  pre.prepend(copy);
}

export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = element("textarea", "visually-hidden");
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}
