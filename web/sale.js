// /sales/{id}: the buyer's page. Before opening a countdown and the
// pre-queue; then the buyer's place in line, live; on admission the zones,
// a hold with its countdown, the confirmation and the ticket.
//
// The server owns every step: the place in line, the pass and the hold are
// read back from the API on load and after any interruption (GET /v1/me,
// GET /v1/me/reservations, GET .../queue), never kept by the page, so a
// reload or a dropped connection resumes where the buyer was. Changes in
// line arrive on the event stream (.../queue/events); when it is missing or
// keeps dropping the page polls instead, as often as the server's
// `poll_after_ms` says. A lost connection is shown and retried with backoff.

import { accountCorner, api, duration, h, me, price, when } from "./api.js";

const saleId = decodeURIComponent(location.pathname.split("/")[2] || "");
const base = `/v1/sales/${encodeURIComponent(saleId)}`;
const here = `/sales/${encodeURIComponent(saleId)}`;

const $title = document.getElementById("title");
const $head = document.getElementById("head");
const $step = document.getElementById("step");
const $connection = document.getElementById("connection");
const $announce = document.getElementById("announce");

/** How often the zones' availability (and the turn) is re-read while choosing. */
const REFRESH_MS = 3000;
/** Bounds on the server's `poll_after_ms`, in case of a missing or odd value. */
const POLL_MIN_MS = 1000;
const POLL_MAX_MS = 60000;
/** Waits between attempts to reach the server again, then the last one repeats. */
const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];

const STATE_LABEL = {
  scheduled: "Coming up",
  open: "On sale",
  paused: "Paused",
  sold_out: "Sold out",
  closed: "Closed",
};

let sale = null; // GET /v1/sales/{id}, re-read while choosing
let mine = []; // the buyer's reservations in this sale
let status = null; // the last QueueStatus
let view = ""; // the step on screen
let seq = 0; // bumped on every change of step: late answers for an older step are dropped

// ---- small helpers -------------------------------------------------------

/** An API detail ("not enough tickets left…") as a sentence. */
function sentence(text) {
  const s = String(text || "").trim();
  if (!s) return s;
  return s[0].toUpperCase() + s.slice(1) + (/[.!?…]$/.test(s) ? "" : ".");
}

/** No answer, an overloaded or unreachable store, a rate limit: worth retrying. */
function transient(problem) {
  return problem.status === 0 || problem.status === 429 || problem.status >= 500;
}

function clock(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}

function secondsUntil(rfc3339) {
  return (Date.parse(rfc3339) - Date.now()) / 1000;
}

function announce(text) {
  // Cleared first, so the same words said twice are said again.
  $announce.textContent = "";
  setTimeout(() => {
    $announce.textContent = text;
  }, 50);
}

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A zone's name, from its code. */
function zoneName(code) {
  return sale?.zones.find((z) => z.code === code)?.name || code;
}

/** Tickets the buyer may still take in this sale (held and confirmed count). */
function remainingLimit() {
  const taken = mine
    .filter((r) => r.status === "held" || r.status === "confirmed")
    .reduce((n, r) => n + r.quantity, 0);
  return Math.max(0, (sale?.per_user_limit || 0) - taken);
}

/** Whether the sale has opened: the server says so, or the clock does. */
function opened() {
  return Boolean(sale) && (sale.state !== "scheduled" || Date.parse(sale.opens_at) <= Date.now());
}

// ---- timers: one ticker for countdowns, one job per step ------------------

const headTickers = new Set();
let stepTickers = new Set();
let jobTimer = null;

setInterval(() => {
  for (const fn of [...headTickers, ...stepTickers]) fn();
}, 1000);

/** Runs `fn` after `ms`, as the current step's one scheduled job. */
function later(fn, ms) {
  clearTimeout(jobTimer);
  const mark = seq;
  jobTimer = setTimeout(() => {
    if (mark === seq) fn();
  }, ms);
}

/** Shows a new step: the old one's countdowns, job and event stream stop. */
function setView(name, ...children) {
  seq += 1;
  view = name;
  stepTickers = new Set();
  clearTimeout(jobTimer);
  if (name !== "line") stopFollowing();
  const hadFocus = $step.contains(document.activeElement);
  $step.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  // Keyboard and screen-reader users continue from the new step's heading,
  // not from the top of the page, when what they were on is gone.
  const heading = $step.querySelector("h2");
  if (hadFocus && heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

// ---- the connection ------------------------------------------------------

let lost = false;
let attempt = 0;
let retryTimer = null;

function connectionLost() {
  if (lost) return;
  lost = true;
  $connection.replaceChildren(
    h("p", { class: "notice", "data-testid": "connection-lost" }, "Connection lost, retrying…"),
  );
}

function connectionBack() {
  // An answer that was already on its way proves nothing once the browser
  // says it is offline; the "online" event brings the page back.
  if (navigator.onLine === false) return;
  attempt = 0;
  clearTimeout(retryTimer);
  if (!lost) return;
  lost = false;
  const back = h("p", { class: "notice ok", "data-testid": "connection-back" }, "Connected again.");
  $connection.replaceChildren(back);
  setTimeout(() => back.remove(), 4000);
}

/** Tries again later, waiting longer each time (or as long as the server asked). */
function retrySoon(problem) {
  connectionLost();
  clearTimeout(retryTimer);
  const step = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
  attempt += 1;
  const wait = problem?.retryAfter ? problem.retryAfter * 1000 : step * (0.8 + Math.random() * 0.4);
  retryTimer = setTimeout(resync, wait);
}

/**
 * Re-reads where the buyer stands (reservation first, then the queue) and
 * shows it; on a failure worth retrying, says so and tries again.
 */
async function resync() {
  clearTimeout(retryTimer);
  const mark = seq;
  try {
    const [fresh, reservations, queued] = await Promise.all([
      api("GET", base),
      api("GET", "/v1/me/reservations"),
      api("GET", `${base}/queue`).catch((p) => {
        if (p.code === "not_in_queue") return null;
        throw p;
      }),
    ]);
    connectionBack();
    if (mark !== seq) return; // the buyer acted meanwhile; that answer shows
    sale = fresh;
    renderHead();
    mine = reservations.reservations.filter((r) => r.sale_id === saleId);
    const held = mine.find((r) => r.status === "held" && secondsUntil(r.expires_at) > 0);
    if (held) return showHeld(held);
    if (queued && ["waiting", "waitlisted", "admitted"].includes(queued.state)) return apply(queued);
    const tickets = mine.filter((r) => r.status === "confirmed");
    if (tickets.length) return showTickets(tickets);
    apply(queued);
  } catch (problem) {
    if (transient(problem)) return retrySoon(problem);
    connectionBack();
    if (problem.status === 401) return showSignIn();
    if (problem.code === "sale_not_found") return showMissing();
    showTrouble(problem);
  }
}

window.addEventListener("offline", () => {
  stopFollowing();
  connectionLost();
  retrySoon();
});
window.addEventListener("online", () => {
  if (lost) resync();
});

// ---- following the line: the event stream, or polling --------------------

let stream = null;
let pushBroken = false; // the stream never worked here: poll instead
let pushWorked = false;
let quickDrops = 0;

function stopFollowing() {
  if (stream) {
    stream.close();
    stream = null;
  }
}

/** Keeps the line's figures current while the buyer waits. */
function follow() {
  if (stream || lost) return;
  if (pushBroken || !("EventSource" in window)) {
    later(poll, pollDelay(status));
    return;
  }
  const es = new EventSource(`${base}/queue/events`);
  const started = Date.now();
  let heard = false;
  stream = es;
  es.addEventListener("status", (event) => {
    let next;
    try {
      next = JSON.parse(event.data);
    } catch {
      return;
    }
    heard = true;
    pushWorked = true;
    connectionBack();
    apply(next);
  });
  es.addEventListener("error", () => {
    es.close();
    if (stream !== es) return; // closed on purpose: a new step, or offline
    stream = null;
    if (view !== "line") return; // the stream ended after a final state
    // A stream that drops again and again right after starting (a proxy
    // that buffers or cuts it) is given up for polling.
    quickDrops = Date.now() - started < 5000 ? quickDrops + 1 : 0;
    if (quickDrops >= 3) pushBroken = true;
    if (!heard && !pushWorked) {
      // Never a word: either the stream is not offered here, or the network
      // is down. A plain read tells which.
      probe();
      return;
    }
    resync();
  });
}

/** After a stream that never started: poll if the server answers, else retry. */
async function probe() {
  const mark = seq;
  try {
    const next = await api("GET", `${base}/queue`);
    pushBroken = true;
    connectionBack();
    if (mark === seq) apply(next);
  } catch (problem) {
    if (transient(problem)) return retrySoon(problem);
    // Out of the line (or the sale gone): the stream was refused for that.
    if (problem.code !== "not_in_queue" && problem.code !== "sale_not_found") pushBroken = true;
    resync();
  }
}

function pollDelay(s) {
  const ms = Number(s?.poll_after_ms) || 5000;
  return Math.min(POLL_MAX_MS, Math.max(POLL_MIN_MS, ms));
}

async function poll() {
  const mark = seq;
  try {
    const next = await api("GET", `${base}/queue`);
    connectionBack();
    if (mark !== seq) return;
    apply(next);
  } catch (problem) {
    if (transient(problem)) return retrySoon(problem);
    resync();
  }
}

// ---- the steps -----------------------------------------------------------

/** Shows a QueueStatus (null: not in the queue). */
function apply(next) {
  status = next;
  switch (next?.state) {
    case "waiting":
    case "waitlisted":
      showLine(next);
      if (!stream) follow();
      return;
    case "admitted":
      return showChoosing(next);
    case "sold_out":
      return showSoldOut();
    case "expired":
      return showExpired();
    default:
      return showJoin();
  }
}

function renderHead() {
  document.title = `${sale.name} · flashsale`;
  $title.textContent = sale.name;
  const prices = sale.zones.map((z) => z.price_cents);
  const range = prices.length
    ? Math.min(...prices) === Math.max(...prices)
      ? price(prices[0])
      : `${price(Math.min(...prices))} – ${price(Math.max(...prices))}`
    : "";
  const meta = h(
    "p",
    { class: "row meta", id: "meta" },
    h("span", { class: `badge ${sale.state}`, "data-testid": "sale-state" }, STATE_LABEL[sale.state] || sale.state),
    h("span", {}, `${opened() ? "Opened" : "Opens"} `, h("time", { datetime: sale.opens_at }, when(sale.opens_at))),
    range && h("span", {}, range),
    h("span", { class: "muted" }, `Up to ${sale.per_user_limit} tickets each`),
  );
  const old = document.getElementById("meta");
  if (old) old.replaceWith(meta);
  else $head.append(meta);
  renderCountdown();
}

/** Before opening: how long until the sale opens, to the second. */
function renderCountdown() {
  headTickers.clear();
  document.getElementById("countdown")?.remove();
  if (opened() || sale.state === "closed") return;
  const left = h("span", { class: "big", role: "timer", "aria-live": "off" });
  const box = h(
    "p",
    { class: "countdown card", id: "countdown", "data-testid": "countdown" },
    h("span", { class: "muted" }, "Opens in "),
    left,
  );
  const tick = () => {
    const s = secondsUntil(sale.opens_at);
    if (s <= 0) {
      headTickers.clear();
      box.remove();
      announce("The sale is open.");
      refreshSale();
      return;
    }
    left.textContent = s < 3600 ? clock(s) : duration(s);
  };
  tick();
  headTickers.add(tick);
  $head.append(box);
}

async function refreshSale() {
  try {
    sale = await api("GET", base);
    renderHead();
    if (view === "join") showJoin();
  } catch (problem) {
    if (transient(problem)) retrySoon(problem);
  }
}

function showMissing() {
  setView("missing", h("div", { class: "card" }, h("p", {}, "There is no such sale."), h("a", { href: "/" }, "See the sales")));
  $title.textContent = "Sale not found";
}

function showTrouble(problem) {
  setView(
    "trouble",
    h("div", { class: "card" }, h("p", { class: "error", role: "alert" }, sentence(problem.detail)), h("button", { type: "button", onclick: () => resync() }, "Try again")),
  );
}

function showSignIn() {
  const next = encodeURIComponent(here);
  setView(
    "sign-in",
    h(
      "div",
      { class: "card", "data-testid": "sign-in" },
      h("p", {}, "Sign in to join the queue for this sale."),
      h(
        "p",
        { class: "row" },
        h("a", { class: "button", href: `/login?next=${next}`, "data-testid": "sign-in-link" }, "Sign in"),
        h("a", { href: `/register?next=${next}` }, "Create an account"),
      ),
    ),
  );
}

/** An action's error line, and a way to say what went wrong in it. */
function errorLine(testid) {
  const line = h("p", { class: "error", "data-testid": testid, "aria-live": "assertive" });
  const say = (problem) => {
    line.textContent =
      problem.status === 0 ? "No connection to the server. Check your connection and try again." : sentence(problem.detail);
    if (transient(problem)) retrySoon(problem);
  };
  return [line, say];
}

/** Runs an action once at a time: the button is disabled while it runs. */
function busy(button, action) {
  return async () => {
    if (button.disabled) return;
    button.disabled = true;
    try {
      await action();
    } finally {
      button.disabled = false;
      // The choice may allow nothing now (a zone sold out meanwhile).
      if (view === "choosing") updateZones();
    }
  };
}

function showJoin(note) {
  if (sale.state === "closed") {
    setView("join", h("div", { class: "card" }, h("p", {}, "This sale has closed.")));
    return;
  }
  const [error, say] = errorLine("join-error");
  const button = h("button", { type: "button", "data-testid": "join" }, opened() ? "Join the queue" : "Join the pre-queue");
  button.addEventListener(
    "click",
    busy(button, async () => {
      error.textContent = "";
      try {
        const next = await api("POST", `${base}/queue`);
        announce("You are in the queue.");
        apply(next);
      } catch (problem) {
        say(problem);
      }
    }),
  );
  setView(
    "join",
    h(
      "div",
      { class: "card" },
      note && h("p", { class: "notice", "data-testid": "left" }, note),
      h(
        "p",
        {},
        opened()
          ? "Join the queue: buyers are let in to choose their tickets in the order they joined."
          : "Join the pre-queue now. Everyone who joins before the sale opens gets a place in one random draw, so there is no need to hurry.",
      ),
      button,
      error,
    ),
  );
}

/**
 * A button that asks first: `ask` opens a question with a "yes" that runs
 * `action` and a "no" that closes it. Test ids are `<id>`, `<id>-confirm`
 * and `<id>-cancel`.
 */
function askFirst({ id, ask, question, yes, no, action }) {
  const [error, say] = errorLine(`${id}-error`);
  const open = h("button", { type: "button", class: "secondary", "data-testid": id }, ask);
  const yesButton = h("button", { type: "button", class: "danger", "data-testid": `${id}-confirm` }, yes);
  const noButton = h("button", { type: "button", class: "secondary", "data-testid": `${id}-cancel` }, no);
  const box = h(
    "div",
    { class: "asking", role: "group", "aria-label": ask, hidden: true },
    h("p", {}, question),
    h("p", { class: "row" }, yesButton, noButton),
  );
  open.addEventListener("click", () => {
    open.hidden = true;
    box.hidden = false;
    noButton.focus();
  });
  noButton.addEventListener("click", () => {
    box.hidden = true;
    open.hidden = false;
    open.focus();
  });
  yesButton.addEventListener(
    "click",
    busy(yesButton, async () => {
      error.textContent = "";
      try {
        await action();
      } catch (problem) {
        say(problem);
      }
    }),
  );
  return h("div", { class: "ask" }, open, box, error);
}

/** Gives the place in line (or the turn) up, after asking. */
function leaveControl(what) {
  return askFirst({
    id: "leave",
    ask: what === "queue" ? "Leave the queue" : "Give up my turn",
    question:
      what === "queue"
        ? "Leave the queue? You give up your place; joining again puts you at the back."
        : "Give up your turn? The tickets go to the next buyers; joining again puts you at the back of the line.",
    yes: "Yes, leave",
    no: what === "queue" ? "Stay in line" : "Keep my turn",
    action: async () => {
      await api("DELETE", `${base}/queue`);
      status = null;
      announce("You left the queue.");
      showJoin("You left the queue.");
    },
  });
}

// The line: built once, then its figures are updated in place, so a screen
// reader announces the change (the figures sit in a polite live region).
let line = null;

/** The largest position seen in this sale, for the progress bar. */
function lineStart(position) {
  const key = `flashsale:line-start:${saleId}`;
  const start = Math.max(Number(sessionStorage.getItem(key)) || 0, position);
  sessionStorage.setItem(key, String(start));
  return start;
}

function showLine(s) {
  if (view !== "line") {
    const state = h("p", { class: "state", "data-testid": "queue-state" });
    const position = h("dd", { class: "big", "data-testid": "queue-position" });
    const eta = h("dd", { class: "eta", "data-testid": "queue-eta" });
    const fill = h("div");
    const bar = h(
      "div",
      { class: "progress", role: "progressbar", "aria-label": "Progress through the line", "aria-valuemin": "0", "aria-valuemax": "100", "data-testid": "queue-progress" },
      fill,
    );
    const note = h("p", { class: "muted", "data-testid": "queue-note" });
    line = { state, position, eta, bar, fill, note };
    setView(
      "line",
      h(
        "section",
        { class: "card queue", "aria-labelledby": "line-title" },
        h("h2", { id: "line-title" }, "Your place in line"),
        h(
          "div",
          { "aria-live": "polite" },
          state,
          h(
            "dl",
            { class: "line-figures" },
            h("div", {}, h("dt", {}, "Position"), position),
            h("div", {}, h("dt", {}, "Estimated wait"), eta),
          ),
          note,
        ),
        bar,
        h("p", { class: "muted" }, "Keep this page open: a buyer who stops checking in for a while loses the place. Reloading is fine, the place is kept by the server."),
        leaveControl("queue"),
      ),
    );
  }
  const waitlisted = s.state === "waitlisted";
  const pre = !waitlisted && !opened();
  line.state.textContent = waitlisted
    ? "Waitlisted"
    : s.paused
      ? "Paused"
      : pre
        ? "In the pre-queue"
        : "Waiting in line";
  line.state.className = `state ${waitlisted ? "waitlisted" : s.paused ? "paused" : "waiting"}`;
  line.position.textContent = String(s.position);
  line.eta.textContent = waitlisted
    ? "—"
    : s.eta_seconds === null || s.eta_seconds === undefined
      ? "Unknown"
      : `about ${duration(s.eta_seconds).replace(/ (s|min|h|days)\b/g, "\u00a0$1")}`;
  line.note.textContent = waitlisted
    ? "Every ticket is held by other buyers right now. You keep your place: tickets that come back (a cancelled or expired hold) are offered to the waitlist in queue order."
    : s.paused
      ? "The organizer has paused admissions for now. You keep your place."
      : pre
        ? "The sale has not opened yet. At opening, buyers are let in from the front of the line."
        : "Buyers are let in to choose in the order of the line.";
  line.note.dataset.testid = waitlisted ? "waitlisted" : "queue-note";
  const start = lineStart(s.position);
  const pct = start > 0 ? Math.round((100 * (start - s.position)) / start) : 0;
  line.bar.hidden = waitlisted;
  line.bar.setAttribute("aria-valuenow", String(pct));
  line.fill.style.width = `${Math.max(2, pct)}%`;
}

// Choosing: the zones with their availability, re-read every few seconds.
let choosing = null;
// Held: the reservation on screen.
let heldId = null;

function showChoosing(s) {
  if (view === "choosing") {
    choosing.pass = s.pass;
    choosing.passExpires = s.pass_expires_at;
    updateZones();
    later(refreshChoosing, REFRESH_MS);
    return;
  }
  const [error, say] = errorLine("hold-error");
  const zones = sale.zones;
  const options = zones.map((z) => {
    const input = h("input", { type: "radio", name: "zone", value: z.code, id: `zone-${z.code}` });
    const left = h("span", { class: "available", "data-testid": `zone-available-${z.code}` });
    const label = h(
      "label",
      { class: "zone", for: `zone-${z.code}`, "data-testid": `zone-${z.code}` },
      input,
      h("span", { class: "zone-name" }, z.name),
      h("span", { class: "zone-price" }, price(z.price_cents)),
      left,
    );
    input.addEventListener("change", updateZones);
    return { code: z.code, input, left, label };
  });
  const quantity = h("select", { id: "quantity", "data-testid": "quantity" });
  const hold = h("button", { type: "button", "data-testid": "hold" }, "Hold tickets");
  const expiry = h("span", {});
  const limitNote = h("p", { class: "muted" });
  const seatBox = h("div", { class: "seats", hidden: true });
  const quantityBox = h("div", {}, h("label", { for: "quantity" }, "Tickets"), quantity);
  choosing = {
    pass: s.pass,
    passExpires: s.pass_expires_at,
    options,
    quantity,
    hold,
    limitNote,
    seatBox,
    quantityBox,
    seatZone: "",
    seatButtons: null,
    seatNote: null,
    chosen: [],
    key: null,
    keyFor: "",
  };
  quantity.addEventListener("change", () => {
    choosing.key = null;
  });
  hold.addEventListener(
    "click",
    busy(hold, async () => {
      error.textContent = "";
      const picked = options.find((o) => o.input.checked);
      if (!picked) {
        error.textContent = "Choose a zone first.";
        return;
      }
      const seated = isSeated(picked.code);
      const body = seated && choosing.chosen.length
        ? { zone: picked.code, seats: [...choosing.chosen] }
        : seated
          ? { zone: picked.code, quantity: Number(quantity.value), together: true }
          : { zone: picked.code, quantity: Number(quantity.value) };
      // One key per choice, kept across retries, so a hold whose answer was
      // lost is found again rather than made twice.
      const what = `${body.zone}/${body.quantity || 0}/${(body.seats || []).join(",")}`;
      if (choosing.keyFor !== what) {
        choosing.key = newKey();
        choosing.keyFor = what;
      }
      try {
        const reservation = await api("POST", `${base}/reservations`, body, {
          "x-queue-pass": choosing.pass,
          "idempotency-key": choosing.key,
        });
        mine.push(reservation);
        announce(`${reservation.quantity} tickets held. Confirm before the hold runs out.`);
        showHeld(reservation);
      } catch (problem) {
        if (!transient(problem)) choosing.keyFor = "";
        say(problem);
        if (["pass_expired", "pass_invalid", "pass_required", "sale_not_open"].includes(problem.code)) resync();
        else if (problem.code === "seats_taken") {
          const taken = new Set(problem.seats || []);
          choosing.chosen = choosing.chosen.filter((id) => !taken.has(id));
          loadSeats(true);
        } else if (problem.code === "sold_out") refreshChoosing();
      }
    }),
  );
  const idleSeconds = sale.admit_idle_seconds || 60;
  const idle = idleSeconds % 60 === 0 ? `${idleSeconds / 60} min` : duration(idleSeconds);
  announce("It's your turn: choose your tickets.");
  if (document.getElementById("countdown")) refreshSale();
  setView(
    "choosing",
    h(
      "section",
      { class: "card", "aria-labelledby": "choose-title" },
      h("h2", { id: "choose-title", "data-testid": "admitted" }, "It's your turn"),
      h(
        "p",
        { class: "muted" },
        `Hold your tickets within ${idle} of being let in, or the turn passes to the next buyer. `,
        expiry,
      ),
      zones.length
        ? h("fieldset", { class: "zones" }, h("legend", {}, "Zone"), options.map((o) => o.label))
        : h("p", {}, "This sale has no zone to choose."),
      seatBox,
      quantityBox,
      limitNote,
      error,
      h("p", { class: "row" }, hold),
      leaveControl("turn"),
    ),
  );
  const tick = () => {
    const s = secondsUntil(choosing.passExpires);
    expiry.textContent = `Your pass is valid for ${clock(s)}.`;
    if (s <= 0) {
      stepTickers.delete(tick);
      resync();
    }
  };
  tick();
  stepTickers.add(tick);
  const first = options.find((o) => sale.zones.find((z) => z.code === o.code)?.available > 0);
  if (first) first.input.checked = true;
  updateZones();
  later(refreshChoosing, REFRESH_MS);
}

/** Shows each zone's availability and the quantities the buyer may take. */
function updateZones() {
  if (view !== "choosing") return;
  for (const o of choosing.options) {
    const zone = sale.zones.find((z) => z.code === o.code);
    const available = zone ? zone.available : 0;
    o.left.textContent = available > 0 ? `${available} left` : "Sold out";
    o.label.classList.toggle("gone", available <= 0);
    o.input.disabled = available <= 0;
    if (available <= 0 && o.input.checked) o.input.checked = false;
  }
  const picked = choosing.options.find((o) => o.input.checked);
  const available = picked ? sale.zones.find((z) => z.code === picked.code)?.available || 0 : 0;
  const limit = remainingLimit();
  const most = Math.min(limit, picked ? available : limit);
  if (choosing.most !== most) {
    // Rebuilt only when the choice changes, so an open list is not closed
    // under the buyer's finger by a refresh.
    choosing.most = most;
    const current = Number(choosing.quantity.value) || 1;
    const options = [];
    for (let n = 1; n <= Math.max(1, most); n += 1) options.push(h("option", { value: String(n) }, String(n)));
    choosing.quantity.replaceChildren(...options);
    choosing.quantity.value = String(Math.min(current, Math.max(1, most)));
  }
  const seated = picked && isSeated(picked.code);
  choosing.quantity.disabled = most < 1 || (seated && choosing.chosen.length > 0);
  choosing.hold.disabled = most < 1 || !picked;
  choosing.seatBox.hidden = !seated;
  // Chosen seats are the number of tickets: no separate count to pick.
  choosing.quantityBox.hidden = Boolean(seated && choosing.chosen.length);
  if (seated && choosing.seatZone !== picked.code) {
    choosing.seatZone = picked.code;
    choosing.chosen = [];
    loadSeats(true);
  }
  choosing.limitNote.textContent =
    limit < 1
      ? `You have all ${sale.per_user_limit} tickets a buyer may have in this sale.`
      : `Up to ${limit} ${limit === 1 ? "ticket" : "tickets"} for you.`;
}

/** While choosing: fresh availability, and whether the turn still holds. */
async function refreshChoosing() {
  const mark = seq;
  try {
    const [fresh, next] = await Promise.all([
      api("GET", base),
      api("GET", `${base}/queue`).catch((p) => {
        if (p.code === "not_in_queue") return null;
        throw p;
      }),
    ]);
    connectionBack();
    if (mark !== seq) return;
    const stateChanged = fresh.state !== sale.state;
    sale = fresh;
    if (stateChanged) renderHead();
    if (view === "choosing" && choosing.seatZone && !choosing.seatBox.hidden) loadSeats(false);
    apply(next);
  } catch (problem) {
    if (transient(problem)) return retrySoon(problem);
    resync();
  }
}

function isSeated(code) {
  return Boolean(sale?.zones.find((z) => z.code === code)?.seating);
}

/** What a reservation is: "2 × Stalls", and its seats when it has any. */
function what(r) {
  const seats = r.seats && r.seats.length ? ` · seats ${r.seats.join(", ")}` : "";
  return `${r.quantity} × ${zoneName(r.zone)}${seats}`;
}

/**
 * The chosen seated zone's seat map: each seat a button, free ones to pick
 * (up to the buyer's limit), held and sold ones shown but not pickable. No
 * seat picked: the hold asks for the best seats together.
 */
async function loadSeats(first) {
  const code = choosing.seatZone;
  const mark = seq;
  let map;
  try {
    map = await api("GET", `${base}/zones/${encodeURIComponent(code)}/seats`);
  } catch (problem) {
    if (first) choosing.seatBox.replaceChildren(h("p", { class: "muted" }, "The seat map could not be read; the best seats are taken for you."));
    return;
  }
  if (mark !== seq || view !== "choosing" || choosing.seatZone !== code) return;
  const free = new Set(map.seats.filter((seat) => seat.status === "free").map((seat) => seat.id));
  choosing.chosen = choosing.chosen.filter((id) => free.has(id));
  const paint = (button, seat) => {
    button.className = `seat ${seat.status}`;
    button.dataset.status = seat.status;
    button.disabled = seat.status !== "free";
    button.setAttribute("aria-label", `Seat ${seat.id}, ${seat.status}`);
    button.setAttribute("aria-pressed", choosing.chosen.includes(seat.id) ? "true" : "false");
  };
  // The same zone again: each seat is repainted where it stands, so the
  // seat a buyer is on keeps the keyboard focus.
  const shown = choosing.seatButtons;
  if (shown && shown.zone === code && shown.buttons.size === map.seats.length) {
    for (const seat of map.seats) {
      const button = shown.buttons.get(seat.id);
      if (button) paint(button, seat);
    }
    sayChosen();
    return;
  }
  const rows = new Map();
  for (const seat of map.seats) {
    const cut = seat.id.lastIndexOf("-");
    const row = seat.id.slice(0, cut);
    if (!rows.has(row)) rows.set(row, []);
    rows.get(row).push({ ...seat, number: seat.id.slice(cut + 1) });
  }
  const buttons = new Map();
  const grid = h(
    "div",
    { class: "seatmap", role: "group", "aria-label": `Seats in ${zoneName(code)}` },
    h("p", { class: "stage" }, "Stage"),
    [...rows].map(([row, seats]) =>
      h(
        "div",
        { class: "seat-row" },
        h("span", { class: "row-name" }, row),
        seats.flatMap((seat, i) => {
          // Numbers that are no seat (an aisle, a blocked view) keep their
          // place as a gap, so the seats stand where they are in the hall.
          const before = i ? Number(seats[i - 1].number) : 0;
          const gaps = Array.from({ length: Math.max(0, Number(seat.number) - before - 1) }, () =>
            h("span", { class: "seat-gap", "aria-hidden": "true" }),
          );
          const button = h("button", { type: "button", "data-testid": `seat-${seat.id}` }, seat.number);
          paint(button, seat);
          button.addEventListener("click", () => {
            const at = choosing.chosen.indexOf(seat.id);
            if (at >= 0) choosing.chosen.splice(at, 1);
            else if (choosing.chosen.length < remainingLimit()) choosing.chosen.push(seat.id);
            button.setAttribute("aria-pressed", choosing.chosen.includes(seat.id) ? "true" : "false");
            choosing.key = null;
            sayChosen();
          });
          buttons.set(seat.id, button);
          return [...gaps, button];
        }),
      ),
    ),
  );
  choosing.seatButtons = { zone: code, buttons };
  choosing.seatNote = h("p", { class: "muted", "data-testid": "seats-chosen" });
  choosing.seatBox.replaceChildren(
    h("p", { class: "legend muted" }, h("span", { class: "seat free" }, "1"), " free ", h("span", { class: "seat held" }, "1"), " held ", h("span", { class: "seat sold" }, "1"), " sold"),
    grid,
    choosing.seatNote,
  );
  sayChosen();
}

/** Says which seats are chosen, and lets the count follow them. */
function sayChosen() {
  choosing.seatNote.textContent = choosing.chosen.length
    ? `Seats chosen: ${choosing.chosen.join(", ")}.`
    : "Pick seats, or hold without picking for the best seats together.";
  updateZones();
}

function showHeld(reservation) {
  if (view === "held" && heldId === reservation.id) return;
  const zone = sale.zones.find((z) => z.code === reservation.zone);
  const total = zone ? price(zone.price_cents * reservation.quantity) : "";
  const left = h("span", { class: "big", role: "timer", "aria-live": "off", "data-testid": "hold-expires" });
  const [error, say] = errorLine("confirm-error");
  const confirm = h("button", { type: "button", "data-testid": "confirm" }, "Confirm and buy");
  const cancel = askFirst({
    id: "cancel-hold",
    ask: "Cancel the hold",
    question: "Cancel the hold? The tickets go back on sale at once.",
    yes: "Yes, cancel",
    no: "Keep them",
    action: async () => {
      await api("POST", `/v1/reservations/${encodeURIComponent(reservation.id)}/cancel`);
      announce("Hold cancelled.");
      resync();
    },
  });
  confirm.addEventListener(
    "click",
    busy(confirm, async () => {
      error.textContent = "";
      try {
        const done = await api("POST", `/v1/reservations/${encodeURIComponent(reservation.id)}/confirm`);
        mine = mine.filter((r) => r.id !== done.id).concat(done);
        announce("Confirmed. Your tickets are booked.");
        showTickets(mine.filter((r) => r.status === "confirmed"));
      } catch (problem) {
        say(problem);
        if (problem.code === "hold_expired" || problem.status === 404) later(resync, 3000);
      }
    }),
  );
  heldId = reservation.id;
  setView(
    "held",
    h(
      "section",
      { class: "card", "aria-labelledby": "held-title" },
      h("h2", { id: "held-title" }, "Your tickets are held"),
      h("p", { "data-testid": "held" }, what(reservation), total && ` · ${total} in total`),
      h("p", { class: "countdown" }, h("span", { class: "muted" }, "Confirm within "), left),
      h("p", { class: "muted" }, `Held until ${new Date(reservation.expires_at).toLocaleTimeString()}. After that the tickets go back on sale.`),
      error,
      h("p", { class: "row" }, confirm),
      cancel,
    ),
  );
  const tick = () => {
    const s = secondsUntil(reservation.expires_at);
    left.textContent = clock(s);
    if (s <= 0) {
      stepTickers.delete(tick);
      confirm.disabled = true;
      error.textContent = "The hold expired: its tickets went back on sale.";
      announce("The hold expired.");
      later(resync, 3000);
    }
  };
  tick();
  stepTickers.add(tick);
}

function showTickets(tickets) {
  const more = remainingLimit() > 0 && sale.state === "open";
  const again = h("button", { type: "button", class: "secondary", "data-testid": "join-again" }, "Join the queue again for more");
  again.addEventListener("click", () => showJoin());
  setView(
    "ticket",
    h("h2", {}, tickets.length === 1 ? "Your ticket" : "Your tickets"),
    tickets.map((r) => {
      const zone = sale.zones.find((z) => z.code === r.zone);
      return h(
        "section",
        { class: "card ticket", "data-testid": "ticket", "aria-label": "Ticket" },
        h("p", { class: "ticket-event" }, sale.name),
        h("p", { class: "ticket-what" }, what(r)),
        h(
          "p",
          { class: "muted" },
          zone && `${price(zone.price_cents * r.quantity)} · `,
          r.confirmed_at ? `confirmed ${when(r.confirmed_at)}` : "confirmed",
        ),
        h("p", { class: "ticket-ref" }, h("span", { class: "muted" }, "Reservation"), h("code", { class: "ticket-id", "data-testid": "ticket-id" }, r.id)),
      );
    }),
    more && h("p", {}, again),
  );
}

function showSoldOut() {
  const closed = sale.state === "closed";
  announce(closed ? "The sale has closed." : "Sold out.");
  setView(
    "sold-out",
    h(
      "div",
      { class: "card notice bad", "data-testid": "sold-out" },
      h("p", { class: "state" }, closed ? "This sale has closed" : "Sold out"),
      h("p", {}, closed ? "No more tickets are sold in this sale." : "Every ticket of this sale has been sold."),
    ),
  );
}

function showExpired() {
  announce("Your turn has passed.");
  const button = h("button", { type: "button", "data-testid": "join" }, "Join again");
  button.addEventListener("click", () => showJoin());
  setView(
    "expired",
    h(
      "div",
      { class: "card", "data-testid": "expired" },
      h("p", { class: "state" }, "Your turn has passed"),
      h("p", {}, "You were let in but held nothing in time (or stopped checking in), so the tickets went to the next buyers. Joining again puts you at the back of the line."),
      button,
    ),
  );
}

// ---- start ---------------------------------------------------------------

async function start() {
  let user;
  try {
    [user, sale] = await Promise.all([me(), api("GET", base)]);
  } catch (problem) {
    if (problem.code === "sale_not_found" || problem.status === 404) return showMissing();
    if (transient(problem)) {
      connectionLost();
      setTimeout(start, BACKOFF_MS[Math.min(attempt++, BACKOFF_MS.length - 1)]);
      return;
    }
    return showTrouble(problem);
  }
  connectionBack();
  accountCorner(user);
  renderHead();
  if (!user) return showSignIn();
  resync();
}

start();
