// Minimal streaming chat client for protocol v1 (docs/protocol.md). Text is inserted with textContent only.
const log = document.getElementById("log");
const statusEl = document.getElementById("status");
const form = document.getElementById("composer");
const input = document.getElementById("content");
const modelSelect = document.getElementById("model");
const stopButton = document.getElementById("stop");

let socket = null;
let conversation = null;
let streaming = null; // id of the answer being written
const nodes = new Map(); // message id -> {body, state, length}

function messageNode(message) {
  let entry = nodes.get(message.id);
  if (!entry) {
    const el = document.createElement("div");
    el.className = `msg ${message.role}`;
    const body = document.createElement("span");
    const state = document.createElement("span");
    state.className = "state";
    el.append(body, state);
    log.append(el);
    entry = { body, state, length: 0 };
    nodes.set(message.id, entry);
  }
  entry.body.textContent = message.content;
  entry.length = [...message.content].length;
  entry.state.textContent = message.status === "complete" ? "" : message.status;
  return entry;
}

function send(frame) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
}

function onEvent(event) {
  switch (event.type) {
    case "ready":
      statusEl.textContent = "connected";
      if (conversation) send({ type: "open", conversation });
      break;
    case "history":
      log.replaceChildren();
      nodes.clear();
      event.messages.forEach(messageNode);
      break;
    case "message":
      conversation = event.message.conversation;
      messageNode(event.message);
      if (event.message.status === "streaming") {
        streaming = event.message.id;
        stopButton.disabled = false;
      }
      break;
    case "delta": {
      const entry = nodes.get(event.message);
      if (!entry) break;
      // Offsets count code points, like the server; text behind our length is trimmed.
      const chars = [...event.text];
      if (event.offset > entry.length) {
        send({ type: "resume", message: event.message, offset: entry.length });
        break;
      }
      const fresh = chars.slice(entry.length - event.offset).join("");
      entry.body.append(fresh);
      entry.length += chars.length - (entry.length - event.offset);
      entry.state.textContent = "streaming";
      log.scrollTop = log.scrollHeight;
      break;
    }
    case "done": {
      const entry = nodes.get(event.message);
      if (entry) entry.state.textContent = event.status === "complete" ? "" : event.error ? `${event.status}: ${event.error.message}` : event.status;
      if (streaming === event.message) {
        streaming = null;
        stopButton.disabled = true;
      }
      break;
    }
    case "error":
      statusEl.textContent = `error: ${event.message}`;
      break;
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/chat/`);
  socket.addEventListener("message", (e) => onEvent(JSON.parse(e.data)));
  socket.addEventListener("close", () => {
    statusEl.textContent = "reconnecting…";
    setTimeout(connect, 1000 + Math.random() * 1000);
  });
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const content = input.value.trim();
  if (!content) return;
  send({ type: "send", id: crypto.randomUUID(), conversation, content, model: modelSelect.value });
  input.value = "";
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    form.requestSubmit();
  }
});
stopButton.addEventListener("click", () => streaming && send({ type: "cancel", message: streaming }));

connect();
