// The WebSocket to /ws/chat/ (protocol v1, docs/protocol.md): reconnects with exponential backoff and
// jitter, and re-sends requests that were never acknowledged with their original id, which the server
// treats as the same request (no second message, no second upstream call).

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;
const CLOSE_UNAUTHENTICATED = 4401;
const CLOSE_TOO_MANY_SOCKETS = 4429;
const CLOSE_SERVICE_RESTART = 4503; // that server process is stopping: reconnect (to another one) at once
// A ping every 25 s keeps proxies from closing an idle socket and tells the server the tab is alive; a
// socket that has heard nothing for 60 s (pongs included) is presumed dead and replaced.
const PING_MS = 25_000;
const REAUTH_DELAY_MS = 1_000;
const SILENCE_MS = 60_000;

export class Connection {
  constructor({ url, onEvent, onState, onUnauthenticated }) {
    this.url = url;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onUnauthenticated = onUnauthenticated;
    this.socket = null;
    this.ready = false;
    this.attempt = 0;
    this.timer = null;
    // Requests that create rows, by id, until the server answers them (message or error with that ref).
    this.unacknowledged = new Map();
    this.heardAt = 0;
    setInterval(() => this.heartbeat(), PING_MS);
    // A socket may stay open through a short outage: then the network's return only needs saying so.
    window.addEventListener("online", () => (this.ready ? this.onState("connected") : this.reconnectNow()));
    window.addEventListener("offline", () => this.onState("offline"));
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener("message", (message) => this.receive(message));
    socket.addEventListener("close", (close) => this.closed(socket, close));
  }

  heartbeat() {
    if (!this.ready) return;
    if (Date.now() - this.heardAt > SILENCE_MS) {
      // A dead link may take minutes to report its close: give up on it now and connect anew.
      const dead = this.socket;
      this.socket = null;
      this.ready = false;
      dead.close();
      this.schedule();
      return;
    }
    this.socket.send(JSON.stringify({ type: "ping" }));
  }

  receive(message) {
    this.heardAt = Date.now();
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return; // the server only sends JSON; anything else is noise
    }
    if (event.type === "ready") {
      this.ready = true;
      this.attempt = 0;
      this.onState("connected");
      // Unanswered requests first: each makes the server follow its own conversation, and the page's
      // `open` (sent by the ready handler) must come last, so that the conversation on screen is followed.
      // Marked as sent again, so the server checks that it is new before it asks the model.
      for (const frame of this.unacknowledged.values()) this.socket.send(JSON.stringify({ ...frame, retry: true }));
      this.onEvent(event);
      return;
    }
    // `unavailable`: this server process is shutting down; the request is sent again after the reconnect.
    const answered = event.type === "message" || (event.type === "error" && event.code !== "unavailable");
    if (event.ref && answered) this.unacknowledged.delete(event.ref);
    this.onEvent(event);
  }

  closed(socket, close) {
    if (socket !== this.socket) return;
    const wasReady = this.ready;
    this.ready = false;
    this.socket = null;
    if (close.code === CLOSE_UNAUTHENTICATED) {
      // A socket that was let in and is now closed as signed out may belong to a browser still signed in
      // under a new session (a password change here rotates the cookie, in a response that may still be on
      // its way): one fresh handshake a moment later tells.
      if (wasReady) this.timer = setTimeout(() => this.connect(), REAUTH_DELAY_MS);
      else this.onUnauthenticated();
      return;
    }
    if (close.code === CLOSE_SERVICE_RESTART) this.attempt = 0;
    if (close.code === CLOSE_TOO_MANY_SOCKETS) {
      this.onState("limited", BACKOFF_MAX_MS);
      this.timer = setTimeout(() => this.connect(), BACKOFF_MAX_MS);
      return;
    }
    this.schedule();
  }

  schedule() {
    if (!navigator.onLine) {
      this.onState("offline"); // the "online" event reconnects
      return;
    }
    // Full range jitter around an exponential step, so that a restarted server is not hit by every tab at once.
    const step = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    const delay = Math.round(step * (0.5 + Math.random()));
    this.attempt += 1;
    this.onState("reconnecting", delay);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.socket) return;
    this.attempt = 0;
    this.connect();
  }

  /** Sends now if connected; a request with `remember` is kept and re-sent after a reconnect until answered. */
  send(frame, { remember = false } = {}) {
    if (remember) this.unacknowledged.set(frame.id, frame);
    if (this.ready && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }
}
