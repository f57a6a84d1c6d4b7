// The chat page: conversations, the transcript and the composer, over one WebSocket (docs/protocol.md).
import { Connection } from "./connection.js";
import { MessageView, codePoints, copyText } from "./transcript.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const $ = (id) => document.getElementById(id);
const ui = {
  app: $("app"),
  sidebar: $("sidebar"),
  openSidebar: $("open-sidebar"),
  closeSidebar: $("close-sidebar"),
  search: $("search"),
  source: $("source"),
  conversations: $("conversations"),
  moreConversations: $("more-conversations"),
  noConversations: $("no-conversations"),
  newChat: $("new-chat"),
  title: $("title"),
  connection: $("connection"),
  transcript: $("transcript"),
  older: $("older"),
  messages: $("messages"),
  welcome: $("welcome"),
  jump: $("jump"),
  composer: $("composer"),
  input: $("composer-input"),
  hint: $("composer-hint"),
  send: $("send"),
  stop: $("stop"),
  settings: $("settings"),
  model: $("model"),
  temperature: $("temperature"),
  system: $("system"),
  announcer: $("announcer"),
  confirmDelete: $("confirm-delete"),
  conversationMenu: $("conversation-menu"),
  share: $("share"),
  exportMarkdown: $("export-md"),
  exportJson: $("export-json"),
  shareDialog: $("share-dialog"),
  shareText: $("share-text"),
  shareUrl: $("share-url"),
  shareCopy: $("share-copy"),
  shareStop: $("share-stop"),
  shareClose: $("share-close"),
  signedOut: $("signed-out"),
  signInAgain: $("sign-in-again"),
};

const state = {
  conversation: config.conversation, // the id on screen, or null for a new chat
  views: new Map(), // message id -> MessageView, for the conversation on screen
  pending: new Map(), // request id -> optimistic view of a send not yet acknowledged
  streaming: null, // the id of the answer being written in the conversation on screen
  hasMore: false,
  loadingOlder: false,
  follow: true, // the transcript follows new text until the reader scrolls up
  conversations: new Map(), // id -> conversation payload, for the sidebar
  query: "",
  source: "", // "chat" or "api": only conversations made there ("" for all)
  listed: 0,
  pinRank: new Map(), // conversation id -> its place among the pinned (higher first)
  signedOut: false, // the server closed the socket: the session no longer lets this page in
};

const scheme = location.protocol === "https:" ? "wss" : "ws";
const connection = new Connection({
  url: `${scheme}://${location.host}/ws/chat/`,
  onEvent: handle,
  onState: showConnection,
  onUnauthenticated: showSignedOut,
});

// --- Events from the server ---------------------------------------------------------------------------

const handlers = {
  ready() {
    if (state.signedOut) signedInAgain();
    if (state.conversation) connection.send({ type: "open", conversation: state.conversation, id: "open" });
    listConversations(0);
  },
  history(event) {
    if (event.conversation.id !== state.conversation) return;
    showConversationSettings(event.conversation);
    showTitle(event.conversation.title);
    const reopened = state.views.size > 0; // the same conversation again, after a reconnect
    const resumes = [];
    const views = event.messages.map((payload) => {
      const existing = state.views.get(payload.id);
      // After a reconnect, an answer we have more of than the database keeps its text and resumes from it.
      if (existing && payload.status === "streaming" && existing.length > codePoints(payload.content)) {
        resumes.push(existing);
        return existing;
      }
      return new MessageView(payload, config);
    });
    // Earlier pages the reader had loaded stay above the newest ones (which the history replaces), and
    // whether there is more before them is still what the last `older` said.
    const first = views[0];
    const earlier = first ? [...state.views.values()].filter((view) => view.seq < first.seq) : [];
    earlier.sort((a, b) => a.seq - b.seq);
    const shown = [...earlier, ...views];
    state.views = new Map(shown.map((view) => [view.id, view]));
    ui.messages.replaceChildren(...shown.map((view) => view.node), ...[...state.pending.values()].map((v) => v.node));
    if (!earlier.length) state.hasMore = event.has_more;
    state.loadingOlder = false;
    ui.older.hidden = !state.hasMore;
    for (const view of resumes) {
      connection.send({ type: "resume", message: view.id, offset: view.length, rendered: view.rendered });
    }
    refresh();
    scrollToEnd(!reopened); // a reconnect leaves a reader who scrolled up where they were
  },
  older(event) {
    if (event.conversation !== state.conversation) return;
    state.loadingOlder = false;
    const before = ui.transcript.scrollHeight - ui.transcript.scrollTop;
    const views = event.messages.filter((payload) => !state.views.has(payload.id)).map((p) => new MessageView(p, config));
    for (const view of views) state.views.set(view.id, view);
    ui.messages.prepend(...views.map((view) => view.node));
    state.hasMore = event.has_more;
    ui.older.hidden = !event.has_more;
    ui.transcript.scrollTop = ui.transcript.scrollHeight - before; // keep the reader's place
  },
  message(event) {
    const payload = event.message;
    const optimistic = event.ref ? state.pending.get(event.ref) : undefined;
    if (payload.conversation !== state.conversation) {
      if (!optimistic) return; // another conversation's news reaches the sidebar through `conversation`
      setConversation(payload.conversation, { push: true, reopen: false });
    }
    if (optimistic && payload.role === "user") {
      state.pending.delete(event.ref);
      optimistic.node.remove();
    }
    if (state.views.has(payload.id)) return; // a retried request: we have it already
    const view = new MessageView(payload, config);
    state.views.set(view.id, view);
    ui.messages.append(view.node);
    if (payload.role === "assistant" && payload.status === "streaming") announce("Writing an answer…");
    refresh();
    scrollToEnd();
  },
  delta(event) {
    const view = state.views.get(event.message);
    if (!view) return;
    const started = performance.now();
    if (!view.applyDelta(event)) {
      connection.send({ type: "resume", message: view.id, offset: view.length, rendered: view.rendered });
    }
    scrollToEnd();
    performance.measure("chat:update", { start: started });
  },
  tool_calls(event) {
    state.views.get(event.message)?.showTools(event.tool_calls);
  },
  done(event) {
    const view = state.views.get(event.message);
    if (!view) return;
    const started = performance.now();
    view.applyDone(event);
    performance.measure("chat:update", { start: started });
    refresh();
    scrollToEnd();
    const endings = { complete: "Answer complete.", cancelled: "Answer stopped.", interrupted: "Answer interrupted." };
    announce(event.status === "error" ? `Answer failed: ${event.error?.message ?? ""}` : endings[event.status]);
  },
  superseded(event) {
    if (event.conversation !== state.conversation) return;
    for (const id of event.messages) {
      state.views.get(id)?.node.remove();
      state.views.delete(id);
    }
    refresh();
  },
  conversation(event) {
    const known = state.conversations.get(event.conversation.id);
    if (!known && !event.conversation.title) return; // only a live flag for a conversation not in the list
    if (!known && state.source && (event.conversation.api_token === null) !== (state.source === "chat")) return;
    const merged = { ...known, ...event.conversation };
    if (merged.pinned && !known?.pinned) state.pinRank.set(merged.id, Date.now()); // newly pinned: first
    state.conversations.set(merged.id, merged);
    renderSidebarItem(merged);
    arrangeSidebar();
    if (merged.id === state.conversation) showTitle(merged.title);
  },
  conversation_deleted(event) {
    state.conversations.delete(event.conversation);
    ui.conversations.querySelector(`[data-id="${CSS.escape(event.conversation)}"]`)?.remove();
    ui.noConversations.hidden = state.conversations.size > 0;
    if (event.conversation === state.conversation) setConversation(null, { push: true });
  },
  conversations(event) {
    if (event.query !== state.query || event.source !== state.source) return; // a search since changed
    if (event.offset === 0) {
      state.conversations.clear();
      ui.conversations.replaceChildren();
    }
    for (const [index, conversation] of event.conversations.entries()) {
      state.conversations.set(conversation.id, conversation);
      // The server lists the pinned first, the latest pinned first: keep that order among them.
      if (conversation.pinned) state.pinRank.set(conversation.id, -(event.offset + index));
      renderSidebarItem(conversation);
    }
    arrangeSidebar();
    state.listed = event.offset + event.conversations.length;
    ui.moreConversations.hidden = !event.has_more;
    ui.noConversations.hidden = state.conversations.size > 0;
    ui.noConversations.textContent = state.query ? "No conversation matches." : "No conversations yet.";
  },
  feedback(event) {
    state.views.get(event.message)?.setFeedback(event.value);
  },
  error(event) {
    const optimistic = event.ref ? state.pending.get(event.ref) : undefined;
    if (event.code === "unavailable") {
      optimistic?.setStatus("queued"); // sent again, with its id, once reconnected to a running server
      showHint("The server is restarting; your message will be sent in a moment.");
      return;
    }
    if (optimistic) {
      state.pending.delete(event.ref);
      optimistic.setStatus("failed");
      optimistic.meta.prepend(Object.assign(document.createElement("span"), { className: "status problem", textContent: `Not sent: ${event.message}` }));
    }
    if (event.ref === "open" && event.code === "not_found") setConversation(null, { push: true });
    if (event.ref === "older") state.loadingOlder = false;
    showHint(event.message, true);
    refresh();
  },
  pong() {},
};

function handle(event) {
  handlers[event.type]?.(event);
}

// --- Conversations and the sidebar --------------------------------------------------------------------

function setConversation(id, { push = false, reopen = true } = {}) {
  state.conversation = id;
  state.views.clear();
  state.pending.clear();
  state.streaming = null;
  state.loadingOlder = false;
  ui.messages.replaceChildren();
  ui.older.hidden = true;
  showTitle(id ? state.conversations.get(id)?.title || "…" : null);
  const path = id ? `/c/${id}/` : "/";
  if (push && location.pathname !== path) history.pushState({ conversation: id }, "", path);
  for (const item of ui.conversations.querySelectorAll("a[aria-current]")) item.removeAttribute("aria-current");
  if (id) ui.conversations.querySelector(`[data-id="${CSS.escape(id)}"] a`)?.setAttribute("aria-current", "page");
  if (id && reopen) connection.send({ type: "open", conversation: id, id: "open" });
  showConversationMenu(id);
  if (!id) showConversationSettings({ model: config.defaults.model, temperature: null, system: config.defaults.system });
  closeSidebar();
  refresh();
}

const DAY = 24 * 60 * 60 * 1000;

/** Which heading of the list a conversation last active at `updatedAt` falls under, as the reader counts days. */
function dateGroup(updatedAt, today) {
  const days = Math.floor((today - new Date(updatedAt).setHours(0, 0, 0, 0)) / DAY);
  if (days <= 0) return "Today";
  if (days === 1) return "Yesterday";
  if (days < 7) return "Previous 7 days";
  if (days < 30) return "Previous 30 days";
  return "Older";
}

/**
 * Puts the list in order under its headings: the pinned first (the latest pinned first), then the rest by
 * when they were last active, under "Today", "Yesterday", "Previous 7 days"… (search results go without
 * headings). Runs after every change to the list; the list holds the pages loaded so far, a few dozen items.
 */
function arrangeSidebar() {
  // Not while a title is being renamed in place (moving its item would take the focus from it): once done.
  if (ui.conversations.querySelector(".rename-field")) return;
  const current = [...ui.conversations.children];
  const items = current.filter((node) => node.dataset.id);
  const info = (item) => state.conversations.get(item.dataset.id) || {};
  const pinned = items.filter((item) => info(item).pinned);
  const rest = items.filter((item) => !info(item).pinned);
  pinned.sort((a, b) => (state.pinRank.get(b.dataset.id) ?? 0) - (state.pinRank.get(a.dataset.id) ?? 0));
  rest.sort((a, b) => (info(b).updated_at || "").localeCompare(info(a).updated_at || ""));
  const headings = new Map(current.filter((node) => !node.dataset.id).map((node) => [node.textContent, node]));
  const heading = (text) => {
    if (headings.has(text)) return headings.get(text);
    const node = document.createElement("li");
    node.className = "group";
    node.append(Object.assign(document.createElement("h2"), { textContent: text }));
    return node;
  };
  const arranged = [];
  if (pinned.length && !state.query) arranged.push(heading("Pinned"));
  arranged.push(...pinned);
  const today = new Date().setHours(0, 0, 0, 0);
  let group = null;
  for (const item of rest) {
    const label = dateGroup(info(item).updated_at, today);
    if (label !== group && !state.query) arranged.push(heading(label));
    group = label;
    arranged.push(item);
  }
  // Left alone when already in order: moving a node takes the focus from it (a title being renamed, say).
  if (arranged.length === current.length && arranged.every((node, index) => node === current[index])) return;
  ui.conversations.replaceChildren(...arranged);
}

/** The conversation's title in the bar and in the browser tab (its history and bookmarks). */
function showTitle(title) {
  ui.title.textContent = title || "New chat";
  document.title = title ? `${title} · ${config.siteName}` : config.siteName;
}

// --- Sharing and export (over HTTP: the REST API for share links, plain links for the downloads) --------

function showConversationMenu(id) {
  ui.conversationMenu.hidden = !id;
  ui.conversationMenu.open = false;
  if (!id) return;
  ui.exportMarkdown.href = `/c/${id}/export.md`;
  ui.exportJson.href = `/c/${id}/export.json`;
}

/** The REST API with this page's session: its CSRF token comes from the page's own logout form. */
async function api(method, path) {
  const csrf = document.querySelector("input[name=csrfmiddlewaretoken]")?.value || "";
  const response = await fetch(`/api/v1/${path}`, { method, credentials: "same-origin", headers: { "X-CSRFToken": csrf } });
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(body?.error?.message || `The server answered ${response.status}.`);
  return body;
}

let shared = null; // the share shown in the dialog
ui.share.addEventListener("click", async () => {
  ui.conversationMenu.open = false;
  try {
    shared = await api("POST", `conversations/${state.conversation}/shares/`);
  } catch (error) {
    showHint(error.message, true);
    return;
  }
  ui.shareUrl.value = shared.url;
  ui.shareText.textContent = "Anyone with this link can read the conversation as it is now, without an account. What is said later is not shown.";
  ui.shareStop.disabled = false;
  ui.shareDialog.showModal();
  ui.shareUrl.select();
});
ui.shareCopy.addEventListener("click", () => copyText(ui.shareUrl.value).then(() => flash(ui.shareCopy, "Copied")));
ui.shareStop.addEventListener("click", async () => {
  try {
    await api("DELETE", `shares/${shared.id}/`);
  } catch (error) {
    ui.shareText.textContent = error.message;
    return;
  }
  ui.shareText.textContent = "No longer shared: the link now leads nowhere.";
  ui.shareStop.disabled = true;
});
ui.shareClose.addEventListener("click", () => ui.shareDialog.close());

function listConversations(offset) {
  connection.send({ type: "conversations", query: state.query, source: state.source, offset });
}

/** Makes or updates a conversation's item; where it goes in the list is arrangeSidebar's. */
function renderSidebarItem(conversation) {
  let item = ui.conversations.querySelector(`[data-id="${CSS.escape(conversation.id)}"]`);
  if (!item) {
    item = document.createElement("li");
    item.dataset.id = conversation.id;
    const link = document.createElement("a");
    link.href = `/c/${conversation.id}/`;
    const live = document.createElement("span");
    live.className = "live";
    live.textContent = "●";
    live.title = "An answer is being written";
    const source = document.createElement("span");
    Object.assign(source, { className: "source", textContent: "API", title: "Made through an API token", hidden: true });
    const rename = document.createElement("button");
    Object.assign(rename, { type: "button", className: "icon rename", textContent: "✎", title: "Rename" });
    const pin = document.createElement("button");
    Object.assign(pin, { type: "button", className: "icon pin", textContent: "📌", title: "Pin to the top" });
    const remove = document.createElement("button");
    Object.assign(remove, { type: "button", className: "icon delete", textContent: "🗑", title: "Delete" });
    item.append(link, source, live, pin, rename, remove);
    ui.conversations.append(item);
    ui.noConversations.hidden = true;
  }
  const link = item.querySelector("a");
  link.textContent = conversation.title || "Untitled";
  item.querySelector(".rename").setAttribute("aria-label", `Rename “${link.textContent}”`);
  item.querySelector(".delete").setAttribute("aria-label", `Delete “${link.textContent}”`);
  const pin = item.querySelector(".pin");
  pin.setAttribute("aria-label", `Pin “${link.textContent}” to the top`);
  pin.setAttribute("aria-pressed", String(Boolean(conversation.pinned)));
  item.classList.toggle("is-pinned", Boolean(conversation.pinned));
  if (conversation.id === state.conversation) link.setAttribute("aria-current", "page");
  if ("api_token" in conversation) item.querySelector(".source").hidden = conversation.api_token === null;
  item.classList.toggle("is-live", Boolean(conversation.live));
  item.querySelector(".live").hidden = !conversation.live;
}

ui.conversations.addEventListener("click", (event) => {
  const item = event.target.closest("li");
  if (!item) return;
  const id = item.dataset.id;
  if (event.target.closest("a")) {
    if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    if (id !== state.conversation) setConversation(id, { push: true });
    else closeSidebar();
  } else if (event.target.closest(".pin")) {
    connection.send({ type: "pin", conversation: id, pinned: !state.conversations.get(id)?.pinned });
  } else if (event.target.closest(".rename")) {
    renameInline(item);
  } else if (event.target.closest(".delete")) {
    ui.confirmDelete.querySelector("#confirm-delete-text").textContent =
      `“${state.conversations.get(id)?.title || "Untitled"}” and all its messages will be gone for good.`;
    ui.confirmDelete.returnValue = "";
    ui.confirmDelete.showModal();
    ui.confirmDelete.addEventListener(
      "close",
      () => ui.confirmDelete.returnValue === "delete" && connection.send({ type: "delete", conversation: id }),
      { once: true },
    );
  }
});

/** Rename in place: the title becomes a text field; Enter (or leaving it) saves, Escape keeps the old one. */
function renameInline(item) {
  const link = item.querySelector("a");
  if (item.querySelector(".rename-field")) return;
  const field = Object.assign(document.createElement("input"), {
    type: "text",
    className: "rename-field",
    value: state.conversations.get(item.dataset.id)?.title || "",
    maxLength: config.maxTitle,
  });
  field.setAttribute("aria-label", "New title");
  link.hidden = true;
  link.after(field);
  field.select();
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    const title = field.value.trim();
    field.remove();
    link.hidden = false;
    if (save && title && title !== state.conversations.get(item.dataset.id)?.title) {
      link.textContent = title;
      connection.send({ type: "rename", conversation: item.dataset.id, title });
    }
    item.querySelector(".rename").focus();
    arrangeSidebar();
  };
  field.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.isComposing) {
      event.preventDefault();
      finish(true);
    } else if (event.key === "Escape") {
      event.stopPropagation();
      finish(false);
    }
  });
  field.addEventListener("blur", () => finish(true));
}

let searchTimer = null;
ui.search.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    state.query = ui.search.value.trim();
    listConversations(0);
  }, 250);
});
ui.source.addEventListener("change", () => {
  state.source = ui.source.value;
  listConversations(0);
});
ui.moreConversations.addEventListener("click", () => listConversations(state.listed));
ui.newChat.addEventListener("click", (event) => {
  event.preventDefault();
  setConversation(null, { push: true });
  ui.input.focus();
});
window.addEventListener("popstate", () => {
  const match = location.pathname.match(/^\/c\/([0-9a-f-]{36})\/$/);
  setConversation(match ? match[1] : null);
});

function openSidebar() {
  ui.app.classList.add("sidebar-open");
  ui.openSidebar.setAttribute("aria-expanded", "true");
  ui.search.focus();
}
function closeSidebar() {
  if (!ui.app.classList.contains("sidebar-open")) return;
  ui.app.classList.remove("sidebar-open");
  ui.openSidebar.setAttribute("aria-expanded", "false");
}
ui.openSidebar.addEventListener("click", openSidebar);
ui.closeSidebar.addEventListener("click", () => {
  closeSidebar();
  ui.openSidebar.focus();
});

// --- The transcript -----------------------------------------------------------------------------------

ui.messages.addEventListener("click", (event) => {
  const target = event.target.closest("button[data-action]");
  if (!target) return;
  const view = state.views.get(target.closest(".message")?.dataset.id);
  if (!view) return;
  const action = target.dataset.action;
  if (action === "copy") copyText(view.text).then(() => flash(target, "Copied"));
  else if (action === "copy-code") copyText(target.closest("pre").querySelector("code").textContent).then(() => flash(target, "Copied"));
  else if (action === "feedback-up" || action === "feedback-down") {
    const value = action === "feedback-up" ? "up" : "down";
    const clearing = view.feedback() === value;
    connection.send({ type: "feedback", message: view.id, value: clearing ? null : value });
    view.node.querySelector(".feedback-form")?.remove();
    if (value === "down" && !clearing) askWhy(view);
  } else if (action === "regenerate") request({ type: "regenerate", message: view.id });
  else if (action === "edit") startEdit(view);
});

function startEdit(view) {
  if (view.node.querySelector(".editor")) return;
  const editor = document.createElement("div");
  editor.className = "editor";
  const area = document.createElement("textarea");
  area.value = view.text;
  area.setAttribute("aria-label", "Edit your message");
  area.maxLength = config.maxContent;
  const save = Object.assign(document.createElement("button"), { type: "button", className: "primary", textContent: "Send edited message" });
  const cancel = Object.assign(document.createElement("button"), { type: "button", textContent: "Cancel" });
  editor.append(area, save, cancel);
  view.textNode.hidden = true;
  view.body.append(editor);
  area.focus();
  const close = () => {
    editor.remove();
    view.textNode.hidden = false;
  };
  cancel.addEventListener("click", close);
  save.addEventListener("click", () => {
    const content = area.value.trim();
    if (!content) return;
    close();
    request({ type: "edit", message: view.id, content });
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      close();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      // As in the composer: Enter sends, Shift+Enter adds a line.
      event.preventDefault();
      save.click();
    }
  });
}

/** After a thumbs down: what was wrong, optionally (a reason and a comment, for the reviewers). */
function askWhy(view) {
  const form = Object.assign(document.createElement("form"), { className: "feedback-form" });
  const group = document.createElement("fieldset");
  group.append(Object.assign(document.createElement("legend"), { textContent: "What was wrong? (optional)" }));
  for (const [value, label] of config.feedbackReasons) {
    const choice = document.createElement("label");
    const radio = Object.assign(document.createElement("input"), { type: "radio", name: "reason", value });
    choice.append(radio, ` ${label}`);
    group.append(choice);
  }
  const comment = Object.assign(document.createElement("textarea"), { rows: 2, maxLength: config.maxFeedbackComment });
  comment.setAttribute("aria-label", "Tell us more (optional)");
  comment.placeholder = "Tell us more (optional)";
  const send = Object.assign(document.createElement("button"), { type: "submit", className: "primary", textContent: "Send feedback" });
  const skip = Object.assign(document.createElement("button"), { type: "button", textContent: "Not now" });
  const buttons = Object.assign(document.createElement("div"), { className: "feedback-buttons" });
  buttons.append(send, skip);
  form.append(group, comment, buttons);
  view.meta.after(form);
  group.querySelector("input")?.focus();
  const close = () => {
    form.remove();
    view.feedbackDown.focus();
  };
  skip.addEventListener("click", close);
  form.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      close();
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const reason = form.querySelector("input[name=reason]:checked")?.value;
    const frame = { type: "feedback", message: view.id, value: "down", comment: comment.value.trim() };
    if (reason) frame.reason = reason;
    connection.send(frame);
    close();
    showHint("Thanks: your feedback goes to the people who review answers.");
  });
}

function flash(node, text) {
  const previous = node.textContent;
  node.textContent = text;
  setTimeout(() => (node.textContent = previous), 1200);
}

ui.older.addEventListener("click", loadOlder);
function loadOlder() {
  const first = ui.messages.querySelector(".message[data-id]");
  const view = first && state.views.get(first.dataset.id);
  if (!view || state.loadingOlder || !state.hasMore) return;
  state.loadingOlder = connection.send({ type: "older", conversation: state.conversation, before: view.seq, id: "older" });
}

// Follow the answer while the reader is at the bottom; once they scroll up, leave them there and offer a jump.
ui.transcript.addEventListener("scroll", () => {
  const distance = ui.transcript.scrollHeight - ui.transcript.scrollTop - ui.transcript.clientHeight;
  state.follow = distance < 48;
  if (state.follow) ui.jump.hidden = true;
  if (ui.transcript.scrollTop < 200 && state.hasMore) loadOlder();
});
ui.jump.addEventListener("click", () => {
  state.follow = true;
  scrollToEnd(true);
  ui.input.focus();
});

let scrollQueued = false;
function scrollToEnd(force = false) {
  if (force) state.follow = true;
  if (!state.follow) {
    ui.jump.hidden = false;
    return;
  }
  if (scrollQueued) return;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    if (state.follow) ui.transcript.scrollTop = ui.transcript.scrollHeight;
  });
}

// --- The composer -------------------------------------------------------------------------------------

function options() {
  const frame = { model: ui.model.value, system: ui.system.value };
  if (ui.temperature.value !== "") frame.temperature = Number(ui.temperature.value);
  return frame;
}

function showConversationSettings(conversation) {
  if (conversation.model && [...ui.model.options].some((option) => option.value === conversation.model)) {
    ui.model.value = conversation.model;
  }
  ui.temperature.value = conversation.temperature ?? "";
  ui.system.value = conversation.system || "";
}

/** Sends a request that creates rows; it is retried with the same id after a reconnect until answered. */
function request(frame) {
  const full = { ...frame, ...options(), id: crypto.randomUUID() };
  const sent = connection.send(full, { remember: true });
  if (!sent) showHint("Not connected: it will be sent when the connection is back.");
  return full;
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const content = ui.input.value.trim();
  if (!content || state.streaming || state.signedOut) return;
  if (content.length > config.maxContent) {
    showHint(`A message can have at most ${config.maxContent} characters.`, true);
    return;
  }
  const frame = request({ type: "send", conversation: state.conversation, content });
  const view = new MessageView({ id: frame.id, role: "user", content, status: connection.ready ? "sending" : "queued" }, config);
  state.pending.set(frame.id, view);
  ui.messages.append(view.node);
  ui.input.value = "";
  ui.settings.open = false; // the settings were for this message; the answer needs the room
  autosize();
  refresh();
  scrollToEnd(true);
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.input.addEventListener("input", () => {
  autosize();
  refresh();
});
function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 240)}px`;
}

function stop() {
  if (!state.streaming) return;
  if (!connection.send({ type: "cancel", message: state.streaming })) {
    showHint("Not connected: press Stop again once the connection is back.", true);
  }
}
ui.stop.addEventListener("click", stop);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.streaming && !ui.confirmDelete.open) {
    event.preventDefault();
    stop();
  }
});

// --- Shared state on screen ---------------------------------------------------------------------------

function refresh() {
  const views = [...state.views.values()];
  const answers = views.filter((view) => view.role === "assistant" && view.node.isConnected);
  state.streaming = answers.find((view) => view.status === "streaming")?.id ?? null;
  ui.stop.hidden = !state.streaming;
  ui.send.hidden = Boolean(state.streaming);
  ui.send.disabled = !ui.input.value.trim() || state.signedOut;
  const nodes = [...ui.messages.querySelectorAll(".message.assistant")];
  const latest = nodes.length ? state.views.get(nodes[nodes.length - 1].dataset.id) : null;
  for (const view of answers) view.setLatest(view === latest && !state.streaming);
  ui.welcome.hidden = state.views.size > 0 || state.pending.size > 0;
  if (state.streaming) showHint("Writing… press Esc or Stop to stop.");
  else if (!ui.hint.classList.contains("problem")) showHint("");
}

function showHint(text, problem = false) {
  ui.hint.textContent = text;
  ui.hint.classList.toggle("problem", problem);
  if (problem) setTimeout(() => ui.hint.textContent === text && showHint(""), 8000);
}

function showConnection(kind, delay) {
  ui.app.dataset.state = kind;
  const texts = {
    connected: "Connected",
    reconnecting: `Reconnecting in ${Math.ceil((delay || 0) / 1000)} s…`,
    offline: "Offline — waiting for the network",
    limited: "Too many open tabs — close some; retrying in 30 s",
  };
  ui.connection.textContent = texts[kind];
  for (const view of state.pending.values()) view.setStatus(kind === "connected" ? "sending" : "queued");
}

// Signed out (a logout elsewhere, a password change, an expired session): the page stays as it is, and
// what the user typed but the server never took is kept for after signing in again.
const draftKey = () => `chat-draft:${location.pathname}`;
function showSignedOut() {
  state.signedOut = true;
  const unsent = [...connection.unacknowledged.values()].filter((frame) => frame.type === "send");
  const draft = [...unsent.map((frame) => frame.content), ui.input.value.trim()].filter(Boolean).join("\n\n");
  if (draft) sessionStorage.setItem(draftKey(), draft);
  ui.app.dataset.state = "signed-out";
  ui.connection.textContent = "Signed out";
  ui.signInAgain.href = `${ui.signInAgain.pathname}?next=${encodeURIComponent(location.pathname)}`;
  ui.signedOut.hidden = false;
  refresh();
  announce("You were signed out.");
}

// Signed in again in another tab: the next look at this one finds out, and it carries on where it was.
function signedInAgain() {
  state.signedOut = false;
  sessionStorage.removeItem(draftKey()); // the composer still holds it, and unsent messages go out again
  ui.signedOut.hidden = true;
  refresh();
}
document.addEventListener("visibilitychange", () => {
  if (state.signedOut && document.visibilityState === "visible" && !connection.socket) connection.connect();
});

function restoreDraft() {
  const draft = sessionStorage.getItem(draftKey());
  if (!draft) return;
  sessionStorage.removeItem(draftKey());
  ui.input.value = draft;
  autosize();
}

function announce(text) {
  if (text) ui.announcer.textContent = text;
}

showConversationSettings({ model: config.defaults.model, temperature: null, system: config.defaults.system });
restoreDraft();
showConversationMenu(state.conversation);
// Ready to type, where a keyboard is the likely way in (a phone would open its keyboard over the page).
if (window.matchMedia("(pointer: fine)").matches) ui.input.focus({ preventScroll: true });
connection.connect();
refresh();
// Exposed for tests and the screenshot script: the page's own view of its state.
window.chat = { state, connection };
