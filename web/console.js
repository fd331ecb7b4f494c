// The organizer's console: their sales, a new sale, and per sale the live
// figures, the controls, the audit log and the exports.
//
// A client of the public API like any other: every figure is a GET of
// /v1/sales/{id}/stats, every control a PATCH /v1/sales/{id}, with the same
// checks and the same problem+json refusals, shown next to the control.
// The selected sale is in the address (`/console#<sale id>`, `#new` for
// the form), so a reload or a shared link opens the same view.

import { api, me, h, accountCorner, duration, when, price } from "/assets/api.js";

const main = document.getElementById("main");
const announcer = document.getElementById("announce");
/** How often the selected sale's figures are read. */
const LIVE_MS = 2000;
/** The audit log is read again every this many figure reads. */
const CHANGES_EVERY = 5;

const STATES = {
  scheduled: "Scheduled",
  open: "Open",
  paused: "Paused",
  sold_out: "Sold out",
  closed: "Closed",
};

/** The settings a sale is created with, beyond its name, time and zones. */
const SETTINGS = [
  ["release_rate", "Release rate", "buyers admitted per second", 1, 100000, "100"],
  ["release_interval_ms", "Release interval", "ms between batches", 100, 60000, "1000"],
  ["max_active", "Max active", "buyers admitted and not yet done; empty: no cap", 1, 10000000, "no cap"],
  ["pass_ttl_seconds", "Queue pass lifetime", "seconds", 1, 3600, "300"],
  ["hold_ttl_seconds", "Hold lifetime", "seconds", 1, 3600, "600"],
  ["per_user_limit", "Tickets per buyer", "held and bought, in the whole sale", 1, 100, "4"],
  ["admit_idle_seconds", "Turn without a hold", "seconds an admitted buyer may hold nothing", 5, 3600, "60"],
  ["admit_headroom_percent", "Admission headroom", "% beyond the tickets left, near the end", 0, 1000, "100"],
];

let user = null;
let sales = [];
let nextCursor = null;
/** The view on screen: stops its live loop when replaced. */
let view = null;

const el = {};

/** Says something to screen readers, politely, once. */
function announce(text) {
  announcer.textContent = "";
  // A fresh text node after a tick, so the same words are said again.
  setTimeout(() => {
    announcer.textContent = text;
  }, 50);
}

function number(n) {
  return Number(n).toLocaleString();
}

function rate(n) {
  return `${Number(n).toLocaleString(undefined, { maximumFractionDigits: 1 })}/s`;
}

function badge(state, testid) {
  return h("span", { class: `badge ${state}`, "data-testid": testid }, STATES[state] || state);
}

/** An `<input>` with its label, hint and the place for the API's refusal. */
function field(id, label, input, hint) {
  input.id = id;
  const error = h("p", { class: "error", id: `${id}-error`, "data-testid": `${id}-error`, role: "alert" });
  const described = [error.id];
  let hintEl = null;
  if (hint) {
    hintEl = h("span", { class: "hint muted", id: `${id}-hint` }, hint);
    described.unshift(hintEl.id);
  }
  input.setAttribute("aria-describedby", described.join(" "));
  return { node: h("div", { class: "field" }, h("label", { for: id }, label), input, hintEl, error), input, error };
}

// ---- start -------------------------------------------------------------

async function start() {
  let who;
  try {
    who = await me();
  } catch (err) {
    main.replaceChildren(
      h("h1", {}, "Organizer console"),
      h("p", { class: "notice bad" }, err.detail),
      h("button", { type: "button", onclick: () => location.reload() }, "Try again"),
    );
    return;
  }
  await accountCorner(who);
  if (!who) {
    main.replaceChildren(
      h("h1", {}, "Organizer console"),
      h(
        "p",
        { class: "notice" },
        "Sign in with an organizer account to run your sales. ",
        h("a", { href: "/login?next=/console", "data-testid": "sign-in" }, "Sign in"),
      ),
    );
    return;
  }
  if (who.role !== "organizer") {
    main.replaceChildren(
      h("h1", {}, "Organizer console"),
      h(
        "p",
        { class: "notice", "data-testid": "organizers-only" },
        "The console is for organizers only. ",
        h("a", { href: "/" }, "See the sales"),
      ),
    );
    return;
  }
  user = who;
  el.list = h("ul", { class: "sale-list", "data-testid": "sales-list" });
  el.more = h("button", { type: "button", class: "secondary", hidden: true, onclick: () => loadSales(true) }, "More sales");
  el.listError = h("p", { class: "error", role: "alert" });
  el.detail = h("section", { class: "console-detail", "aria-label": "Sale" });
  main.replaceChildren(
    h(
      "div",
      { class: "console" },
      h(
        "nav",
        { class: "console-list", "aria-labelledby": "sales-heading" },
        h(
          "div",
          { class: "row between" },
          h("h1", { id: "sales-heading" }, "Your sales"),
          h("a", { href: "#new", class: "button", "data-testid": "new-sale" }, "New sale"),
        ),
        el.list,
        el.more,
        el.listError,
      ),
      el.detail,
    ),
  );
  await loadSales(false);
  window.addEventListener("hashchange", () => route(true));
  route(false);
}

async function loadSales(more) {
  el.listError.textContent = "";
  const query = new URLSearchParams({ limit: "50" });
  if (more && nextCursor) query.set("cursor", nextCursor);
  try {
    const page = await api("GET", `/v1/organizer/sales?${query}`);
    sales = more ? sales.concat(page.sales) : page.sales;
    nextCursor = page.next_cursor;
  } catch (err) {
    el.listError.textContent = err.detail;
  }
  el.more.hidden = !nextCursor;
  renderList();
}

function selectedId() {
  const id = decodeURIComponent(location.hash.slice(1));
  return id === "new" ? null : id;
}

function renderList() {
  const current = selectedId();
  if (!sales.length) {
    el.list.replaceChildren(h("li", { class: "muted" }, "No sales yet."));
    return;
  }
  el.list.replaceChildren(
    ...sales.map((s) =>
      h(
        "li",
        {},
        h(
          "a",
          {
            href: `#${s.id}`,
            "data-testid": "sale-item",
            "data-sale-id": s.id,
            "aria-current": s.id === current ? "page" : null,
          },
          h("span", { class: "sale-name" }, s.name),
          badge(s.state),
          h("span", { class: "muted small" }, `Opens ${when(s.opens_at)}`),
        ),
      ),
    ),
  );
}

/** Shows what the address asks for; `moved` when the user navigated, so
 * focus follows to the new view (on a phone it is below the list). */
function route(moved) {
  if (view) view.stop();
  view = null;
  renderList();
  const hash = location.hash.slice(1);
  if (hash === "new" || (!hash && !sales.length)) {
    el.detail.replaceChildren(createForm());
  } else if (hash) {
    view = new SaleView(decodeURIComponent(hash));
    el.detail.replaceChildren(view.root);
    view.start();
  } else {
    el.detail.replaceChildren(
      h("h2", { tabindex: "-1" }, "Pick a sale"),
      h("p", { class: "muted" }, "Choose a sale to follow it live and steer it, or create a new one."),
    );
  }
  if (moved) el.detail.querySelector("h2")?.focus();
}

// ---- a new sale ----------------------------------------------------------

/** A time as a datetime-local input shows it: the reader's own zone, to
 * the minute. */
function localTime(rfc3339) {
  const t = new Date(rfc3339);
  const pad = (n) => String(n).padStart(2, "0");
  return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())}T${pad(t.getHours())}:${pad(t.getMinutes())}`;
}

function localInput(id) {
  return h("input", { type: "datetime-local", name: id, step: "60" });
}

function numberInput(name, min, max, placeholder, step = "1") {
  return h("input", { type: "number", name, min, max, step, inputmode: "numeric", placeholder });
}

function createForm() {
  const fields = {};
  const add = (key, f) => {
    fields[key] = f;
    return f.node;
  };
  const zones = h("div", { class: "zones" });
  const zoneRows = [];
  let zoneSeq = 0;

  const addZone = () => {
    const n = zoneSeq++;
    const row = {
      code: field(`zone-${n}-code`, "Code", h("input", { name: "code", maxlength: "32", autocapitalize: "characters", placeholder: "A" }), "letters, digits, _ or -"),
      name: field(`zone-${n}-name`, "Name", h("input", { name: "zone-name", maxlength: "100", placeholder: "Floor" })),
      capacity: field(`zone-${n}-capacity`, "Capacity", numberInput("capacity", 1, 10000000, "5000")),
      price: field(`zone-${n}-price`, "Price (€)", numberInput("price", 0, 100000000, "0.00", "0.01")),
    };
    row.price.input.setAttribute("inputmode", "decimal");
    row.remove = h("button", { type: "button", class: "link", onclick: () => removeZone(row) }, "Remove this zone");
    row.legend = h("legend", {});
    row.node = h("fieldset", { class: "zone" }, row.legend, row.code.node, row.name.node, row.capacity.node, row.price.node, row.remove);
    zoneRows.push(row);
    zones.append(row.node);
    renumber();
    return row;
  };
  const removeZone = (row) => {
    zoneRows.splice(zoneRows.indexOf(row), 1);
    row.node.remove();
    renumber();
    zoneRows[0].code.input.focus();
  };
  const renumber = () => {
    zoneRows.forEach((row, i) => {
      row.legend.textContent = `Zone ${i + 1}`;
      row.remove.hidden = zoneRows.length === 1;
    });
  };

  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const form = h(
    "form",
    { class: "card", "data-testid": "create-sale", novalidate: true, "aria-labelledby": "create-heading" },
    h("h2", { id: "create-heading", tabindex: "-1" }, "New sale"),
    add("name", field("sale-name", "Name", h("input", { name: "name", required: true, maxlength: "200", autocomplete: "off" }))),
    h(
      "div",
      { class: "pair" },
      add("opens_at", field("opens-at", "Opens", localInput("opens_at"), `empty: now; your time (${zone})`)),
      add("closes_at", field("closes-at", "Closes", localInput("closes_at"), "empty: when you close it")),
    ),
    h("h3", {}, "Zones"),
    zones,
    h("button", { type: "button", class: "secondary", onclick: () => addZone().code.input.focus() }, "Add a zone"),
    h(
      "details",
      { class: "settings" },
      h("summary", {}, "Release settings"),
      h(
        "div",
        { class: "grid" },
        ...SETTINGS.map(([key, label, hint, min, max, dflt]) =>
          add(key, field(`new-${key.replaceAll("_", "-")}`, label, numberInput(key, min, max, dflt), hint)),
        ),
      ),
    ),
  );
  const formError = h("p", { class: "error", role: "alert", "data-testid": "create-sale-error" });
  const submit = h("button", { type: "submit", "data-testid": "create-sale-submit" }, "Create sale");
  form.append(formError, submit);
  addZone();

  /** The body as typed: numbers as numbers, empty optional fields left out,
   * anything else sent as it is for the API to judge. */
  const body = () => {
    const out = { name: fields.name.input.value };
    for (const key of ["opens_at", "closes_at"]) {
      const v = fields[key].input.value;
      if (v) out[key] = new Date(v).toISOString();
    }
    out.zones = zoneRows.map((row) => {
      const z = { code: row.code.input.value.trim() };
      if (row.name.input.value.trim()) z.name = row.name.input.value.trim();
      if (row.capacity.input.value !== "") z.capacity = Number(row.capacity.input.value);
      if (row.price.input.value !== "") z.price_cents = Math.round(Number(row.price.input.value) * 100);
      return z;
    });
    for (const [key] of SETTINGS) {
      const v = fields[key].input.value;
      if (v !== "") out[key] = Number(v);
    }
    return out;
  };

  /** The field a refusal names (`zones[1].capacity must be ...`). */
  const fieldOf = (detail) => {
    const m = /^(?:zones\[(\d+)\]\.)?([a-z_]+)/.exec(detail || "");
    if (!m) return null;
    if (m[1] !== undefined) {
      const row = zoneRows[Number(m[1])];
      const part = { code: "code", name: "name", capacity: "capacity", price_cents: "price" }[m[2]];
      return row && part ? row[part] : null;
    }
    return fields[m[2]] || null;
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const f of form.querySelectorAll(".error")) f.textContent = "";
    for (const f of form.querySelectorAll("[aria-invalid]")) f.removeAttribute("aria-invalid");
    const sent = body();
    if (Object.values(sent).some((v) => Number.isNaN(v)) || sent.zones.some((z) => Number.isNaN(z.capacity) || Number.isNaN(z.price_cents))) {
      formError.textContent = "A number field holds something that is not a number.";
      return;
    }
    submit.disabled = true;
    try {
      const sale = await api("POST", "/v1/sales", sent);
      sales.unshift(sale);
      announce(`Sale ${sale.name} created.`);
      location.hash = sale.id;
    } catch (err) {
      const target = fieldOf(err.detail);
      if (target) {
        target.error.textContent = err.detail;
        target.input.setAttribute("aria-invalid", "true");
        target.input.focus();
      } else {
        formError.textContent = err.detail;
      }
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

// ---- one sale, live ------------------------------------------------------

class SaleView {
  constructor(id) {
    this.id = id;
    this.path = `/v1/sales/${encodeURIComponent(id)}`;
    this.alive = true;
    this.reads = 0;
    this.timer = null;
    this.sale = null;
    this.built = false;
    this.status = h("p", { class: "muted small live", "data-testid": "live-status" }, "Loading…");
    // One heading from loading to loaded, so focus moved to it stays.
    this.heading = h("h2", { tabindex: "-1", class: "sale-title" }, "Loading the sale…");
    this.root = h("div", {}, this.heading, this.status);
    this.onVisible = () => {
      if (!document.hidden) this.tick();
    };
  }

  start() {
    document.addEventListener("visibilitychange", this.onVisible);
    this.tick();
  }

  stop() {
    this.alive = false;
    clearTimeout(this.timer);
    document.removeEventListener("visibilitychange", this.onVisible);
  }

  /** One read of the sale and its figures, then the next in LIVE_MS (or
   * when the server says to come back, when it is busy). One read at a
   * time: the page coming back into view while one is out waits for it. */
  async tick() {
    if (!this.alive || document.hidden || this.reading) return;
    clearTimeout(this.timer);
    this.reading = true;
    let wait = LIVE_MS;
    try {
      const [sale, stats] = await Promise.all([api("GET", this.path), api("GET", `${this.path}/stats`)]);
      if (!this.alive) return;
      this.show(sale, stats);
      if (this.reads++ % CHANGES_EVERY === 0) this.loadChanges();
      this.status.textContent = `Live · updated ${new Date().toLocaleTimeString()}`;
      this.status.classList.remove("bad");
    } catch (err) {
      if (!this.alive) return;
      // A refusal is final (signed out, not theirs, no such sale); being
      // busy or unreachable is not.
      if (err.status >= 400 && err.status < 500 && err.status !== 429) {
        this.fail(err);
        return;
      }
      if (err.retryAfter) wait = Math.max(wait, err.retryAfter * 1000);
      this.status.textContent = `${err.detail} Trying again in ${duration(wait / 1000)}.`;
      this.status.classList.add("bad");
    } finally {
      this.reading = false;
    }
    this.timer = setTimeout(() => this.tick(), wait);
  }

  fail(err) {
    const text =
      err.status === 401
        ? h("span", {}, "Your session has ended. ", h("a", { href: "/login?next=/console" }, "Sign in again"))
        : err.detail;
    const title = { 401: "Signed out", 403: "Not your sale", 404: "No such sale" }[err.status];
    this.heading.textContent = title || "This sale cannot be shown";
    this.root.replaceChildren(this.heading, h("p", { class: "notice bad", "data-testid": "sale-problem" }, text));
    this.stop();
  }

  show(sale, stats) {
    const before = this.sale;
    const beforeStats = this.stats;
    this.sale = sale;
    this.stats = stats;
    if (!this.built) this.build();
    this.update();
    if (before) this.announceChanges(before, beforeStats);
    const listed = sales.findIndex((s) => s.id === sale.id);
    if (listed < 0 && !this.relisted) {
      // Theirs, but made since the list was read (another tab, the API).
      this.relisted = true;
      loadSales(false);
    } else if (listed >= 0 && sales[listed].state !== sale.state) {
      sales[listed] = sale;
      renderList();
    }
  }

  /** Speaks what an organizer needs to hear without looking: the state,
   * a zone selling out, drift appearing or clearing. Not the figures. */
  announceChanges(before, beforeStats) {
    const said = [];
    if (before.state !== this.sale.state) said.push(`The sale is now ${STATES[this.sale.state] || this.sale.state}.`);
    for (const z of this.stats.zones) {
      const was = beforeStats.zones.find((b) => b.code === z.code);
      if (was && was.available > 0 && z.available === 0) said.push(`Zone ${z.code} has no tickets left.`);
    }
    if ((beforeStats.drift || 0) === 0 && this.stats.drift) said.push(`Drift of ${this.stats.drift} tickets between Redis and Postgres.`);
    if (beforeStats.drift && this.stats.drift === 0) said.push("Redis and Postgres agree again.");
    if (said.length) announce(said.join(" "));
  }

  build() {
    this.built = true;
    const figure = (label, testid, sub) => {
      const value = h("span", { class: "value", "data-testid": testid }, "–");
      const note = h("span", { class: "muted small" }, sub || "");
      return { node: h("div", { class: "figure" }, h("span", { class: "label" }, label), value, note), value, note };
    };
    this.f = {
      waiting: figure("Waiting", "sale-waiting", "in the queue"),
      admitted: figure("Admitted", "sale-admitted"),
      rate: figure("Admission rate", "sale-rate"),
      drift: figure("Drift", "drift"),
    };
    this.f.admitted.note.dataset.testid = "sale-active";
    this.f.rate.note.dataset.testid = "sale-release-rate";
    this.f.drift.note.dataset.testid = "reconciled-at";

    this.badge = h("span", {});
    this.times = h("p", { class: "muted small" });
    this.notice = h("p", { class: "notice", hidden: true });
    this.zoneBody = h("tbody", {});

    this.root.replaceChildren(
      h("div", { class: "row between" }, this.heading, this.badge),
      this.times,
      this.status,
      this.notice,
      h("div", { class: "figures", "data-testid": "sale-detail" }, ...Object.values(this.f).map((f) => f.node)),
      h("h3", {}, "Stock"),
      h(
        "div",
        { class: "scroll" },
        h(
          "table",
          { class: "zones-table" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", { scope: "col" }, "Zone"),
              h("th", { scope: "col" }, "Available"),
              h("th", { scope: "col" }, "Held"),
              h("th", { scope: "col" }, "Sold"),
              h("th", { scope: "col" }, h("abbr", { title: "confirmed tickets recorded in Postgres" }, "Recorded")),
            ),
          ),
          this.zoneBody,
        ),
      ),
      this.controls(),
      this.exports(),
      this.auditLog(),
    );
    this.zoneRows = new Map();
  }

  update() {
    const s = this.sale;
    const st = this.stats;
    this.heading.textContent = s.name;
    this.badge.replaceChildren(badge(s.state, "sale-state"));
    const times = [`Opens ${when(s.opens_at)}`];
    if (s.closes_at) times.push(`${new Date(s.closes_at) <= new Date() ? "Closed" : "Closes"} ${when(s.closes_at)}`);
    times.push(`${s.zones.length} zone${s.zones.length === 1 ? "" : "s"}`);
    this.times.textContent = times.join(" · ");
    if (s.frozen) this.setNotice("bad", "Frozen: the sale waits for its live state to be restored; buyers cannot hold until then.");
    else if (s.archived_at) this.setNotice("", `Archived ${when(s.archived_at)}: the sale is over and fully recorded; it no longer changes.`);
    else this.notice.hidden = true;

    this.f.waiting.value.textContent = number(st.waiting);
    this.f.admitted.value.textContent = number(st.admitted_total);
    this.f.admitted.note.textContent = `${number(st.active)} active now${s.max_active ? ` (max ${number(s.max_active)})` : ""}`;
    this.f.rate.value.textContent = rate(st.measured_rate);
    this.f.rate.note.textContent = `configured ${rate(s.release_rate)}${s.paused ? ", paused" : ""}`;
    const drift = st.drift;
    this.f.drift.value.textContent = drift === null || drift === undefined ? "–" : number(drift);
    this.f.drift.value.classList.toggle("bad", Boolean(drift));
    this.f.drift.note.textContent = st.reconciled_at
      ? `reconciled ${duration((Date.now() - new Date(st.reconciled_at)) / 1000)} ago`
      : "not reconciled yet";

    for (const z of st.zones) {
      let row = this.zoneRows.get(z.code);
      if (!row) {
        const zone = s.zones.find((d) => d.code === z.code);
        const cell = (testid) => h("td", { class: "num", "data-testid": `${testid}-${z.code}` });
        row = {
          available: cell("zone-stock"),
          held: cell("zone-held"),
          confirmed: cell("zone-confirmed"),
          persisted: cell("zone-persisted"),
          bar: h("span", { class: "stock-bar", "aria-hidden": "true" }, h("span", { class: "sold" }), h("span", { class: "held" })),
        };
        this.zoneBody.append(
          h(
            "tr",
            {},
            h(
              "th",
              { scope: "row" },
              h("span", { class: "zone-code" }, z.code),
              " ",
              zone
                ? h("span", { class: "muted small" }, `${zone.name === zone.code ? "" : `${zone.name} · `}${price(zone.price_cents)}`)
                : "",
              row.bar,
            ),
            row.available,
            row.held,
            row.confirmed,
            row.persisted,
          ),
        );
        this.zoneRows.set(z.code, row);
      }
      row.available.textContent = `${number(z.available)} of ${number(z.capacity)}`;
      row.held.textContent = number(z.held);
      row.confirmed.textContent = number(z.confirmed);
      row.persisted.textContent = number(z.persisted);
      row.persisted.classList.toggle("bad", z.persisted !== z.confirmed);
      const share = (n) => `${z.capacity ? (100 * n) / z.capacity : 0}%`;
      row.bar.children[0].style.width = share(z.confirmed);
      row.bar.children[1].style.width = share(z.held);
    }
    this.updateControls();
    this.updateExports();
  }

  setNotice(kind, text) {
    this.notice.className = `notice ${kind}`;
    this.notice.textContent = text;
    this.notice.hidden = false;
  }

  // ---- controls: every one a PATCH of the sale ----

  /** Sends `body` as a PATCH; shows the refusal in `error`, or the new
   * sale. Resolves to whether it was applied. */
  async change(body, error, button, said) {
    error.textContent = "";
    button.disabled = true;
    try {
      const sale = await api("PATCH", this.path, body);
      if (!this.alive) return true;
      this.sale = sale;
      this.update();
      announce(said(sale));
      this.loadChanges();
      return true;
    } catch (err) {
      error.textContent = err.detail;
      return false;
    } finally {
      button.disabled = false;
    }
  }

  /** A number setting: an input, its Apply button and its error. */
  setting(testid, label, hint, min, max, send, said) {
    const input = numberInput(testid, min, max, "");
    input.dataset.testid = testid;
    const f = field(`ctl-${testid}`, label, input, hint);
    const apply = h("button", { type: "submit", class: "secondary", "data-testid": `${testid}-apply` }, "Apply");
    f.error.dataset.testid = `${testid}-error`;
    const form = h("form", { class: "control", novalidate: true }, f.node, apply);
    input.addEventListener("input", () => {
      input.dataset.dirty = "1";
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const raw = input.value;
      const value = raw === "" ? null : Number(raw);
      if (await this.change(send(value), f.error, apply, said)) delete input.dataset.dirty;
    });
    return { form, input };
  }

  controls() {
    const rateCtl = this.setting("release-rate", "Release rate", "buyers admitted per second", 1, 100000,
      (v) => ({ release_rate: v }), (s) => `Release rate set to ${rate(s.release_rate)}.`);
    const activeCtl = this.setting("max-active", "Max active", "buyers admitted and not yet done; empty: no cap", 1, 10000000,
      (v) => ({ max_active: v }), (s) => (s.max_active ? `At most ${number(s.max_active)} buyers active.` : "No cap on active buyers."));
    this.rateInput = rateCtl.input;
    this.activeInput = activeCtl.input;

    const pauseError = h("p", { class: "error", role: "alert", "data-testid": "pause-error" });
    this.pauseBtn = h("button", { type: "button", class: "secondary", "data-testid": "pause" }, "Pause admissions");
    this.resumeBtn = h("button", { type: "button", "data-testid": "resume" }, "Resume admissions");
    this.pauseBtn.addEventListener("click", () =>
      this.change({ paused: true }, pauseError, this.pauseBtn, () => "Admissions paused.").then((ok) => ok && this.resumeBtn.focus()),
    );
    this.resumeBtn.addEventListener("click", () =>
      this.change({ paused: false }, pauseError, this.resumeBtn, () => "Admissions resumed.").then((ok) => ok && this.pauseBtn.focus()),
    );

    const closeError = h("p", { class: "error", role: "alert", "data-testid": "close-sale-error" });
    this.closeBtn = h("button", { type: "button", class: "danger", "data-testid": "close-sale" }, "Close the sale…");
    const confirmBtn = h("button", { type: "button", class: "danger", "data-testid": "close-sale-confirm" }, "Close it now");
    const cancelBtn = h("button", { type: "button", class: "secondary", "data-testid": "close-sale-cancel" }, "Keep it open");
    this.confirmBox = h(
      "div",
      { class: "confirm", role: "group", "aria-labelledby": "close-question", hidden: true },
      h("p", { id: "close-question" }, h("strong", {}, "Close this sale now?"),
        " Nobody more joins, is admitted or holds. Holds already placed can still be confirmed until they run out. A closed sale cannot be reopened."),
      h("div", { class: "row" }, confirmBtn, cancelBtn),
    );
    this.closeBtn.addEventListener("click", () => {
      closeError.textContent = "";
      this.confirmBox.hidden = false;
      this.closeBtn.hidden = true;
      confirmBtn.focus();
    });
    cancelBtn.addEventListener("click", () => {
      this.confirmBox.hidden = true;
      this.closeBtn.hidden = false;
      this.closeBtn.focus();
    });
    confirmBtn.addEventListener("click", async () => {
      const ok = await this.change({ state: "closed" }, closeError, confirmBtn, () => "The sale is closed.");
      this.confirmBox.hidden = true;
      this.updateControls();
      (ok ? this.heading : this.closeBtn).focus();
    });
    this.closedNote = h("p", { class: "muted", hidden: true }, "The sale has closed; a closed sale cannot be reopened.");

    return h(
      "section",
      { class: "card controls", "aria-labelledby": "controls-heading" },
      h("h3", { id: "controls-heading" }, "Controls"),
      h("div", { class: "control-grid" }, rateCtl.form, activeCtl.form),
      h("div", { class: "row" }, this.pauseBtn, this.resumeBtn, this.closeBtn),
      pauseError,
      this.confirmBox,
      closeError,
      this.closedNote,
      this.moreSettings(),
    );
  }

  /** The other live settings, sent together: only those the organizer
   * edited, so a change made meanwhile elsewhere is not undone. */
  moreSettings() {
    const numeric = [
      ["release_interval_ms", "release-interval", "Release interval", "ms between batches", 100, 60000],
      ["admit_idle_seconds", "admit-idle", "Turn without a hold", "seconds an admitted buyer may hold nothing", 5, 3600],
      ["admit_headroom_percent", "admit-headroom", "Admission headroom", "% beyond the tickets left, near the end", 0, 1000],
    ];
    const inputs = {};
    const fields = numeric.map(([key, id, label, hint, min, max]) => {
      const f = field(`ctl-${id}`, label, numberInput(key, min, max, ""), hint);
      inputs[key] = f.input;
      return f.node;
    });
    const closes = field("ctl-closes-at", "Closes", localInput("closes_at"), "your time; empty: when you close it");
    inputs.closes_at = closes.input;
    const error = h("p", { class: "error", role: "alert", "data-testid": "settings-error" });
    const apply = h("button", { type: "submit", class: "secondary", "data-testid": "settings-apply" }, "Apply settings");
    const form = h("form", { novalidate: true }, h("div", { class: "grid" }, ...fields, closes.node), error, apply);
    const details = h("details", { class: "settings", "data-testid": "more-settings" }, h("summary", {}, "More settings"), form);

    const edited = new Set();
    for (const [key, input] of Object.entries(inputs)) input.addEventListener("input", () => edited.add(key));
    const fill = () => {
      const s = this.sale;
      for (const [key] of numeric) if (!edited.has(key)) inputs[key].value = s[key];
      if (!edited.has("closes_at")) inputs.closes_at.value = s.closes_at ? localTime(s.closes_at) : "";
    };
    details.addEventListener("toggle", () => {
      if (details.open) fill();
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      const body = {};
      for (const key of edited) {
        const raw = inputs[key].value;
        if (key === "closes_at") body.closes_at = raw ? new Date(raw).toISOString() : null;
        else if (raw !== "") body[key] = Number(raw);
      }
      if (!Object.keys(body).length) {
        error.textContent = "Change a setting first.";
        return;
      }
      if (await this.change(body, error, apply, () => "Settings changed.")) {
        edited.clear();
        fill();
      }
    });
    return details;
  }

  updateControls() {
    const s = this.sale;
    if (!this.rateInput.dataset.dirty && document.activeElement !== this.rateInput) this.rateInput.value = s.release_rate;
    if (!this.activeInput.dataset.dirty && document.activeElement !== this.activeInput) this.activeInput.value = s.max_active ?? "";
    const closed = s.state === "closed";
    this.pauseBtn.hidden = closed || s.paused;
    this.resumeBtn.hidden = closed || !s.paused;
    if (closed) {
      this.closeBtn.hidden = true;
      this.confirmBox.hidden = true;
    } else if (this.confirmBox.hidden) {
      this.closeBtn.hidden = false;
    }
    this.closedNote.hidden = !closed;
  }

  // ---- exports ----

  exports() {
    this.exportError = h("p", { class: "error", role: "alert", "data-testid": "export-error" });
    this.prequeue = h("div", { class: "prequeue" });
    const attendees = h("button", { type: "button", class: "secondary", "data-testid": "attendees-export" }, "Attendees (CSV)");
    attendees.addEventListener("click", () =>
      this.download(attendees, async () => [
        `attendees-${this.id}.csv`,
        "text/csv",
        await api("GET", `${this.path}/attendees`, undefined, { accept: "text/csv" }),
      ]),
    );
    this.prequeueBtn = h("button", { type: "button", class: "secondary", "data-testid": "prequeue-export" }, "Pre-queue export (JSON)");
    this.prequeueBtn.addEventListener("click", () =>
      this.download(this.prequeueBtn, async () => [
        `prequeue-${this.id}.json`,
        "application/json",
        JSON.stringify(await api("GET", `${this.path}/prequeue`), null, 2),
      ]),
    );
    return h(
      "section",
      { class: "card", "aria-labelledby": "exports-heading" },
      h("h3", { id: "exports-heading" }, "Exports"),
      this.prequeue,
      h("div", { class: "row" }, attendees, this.prequeueBtn),
      this.exportError,
    );
  }

  updateExports() {
    const s = this.sale;
    const open = Boolean(s.prequeue_seed);
    this.prequeueBtn.hidden = !open;
    const key = open ? "seed" : "commitment";
    if (this.prequeue.dataset.shows === key) return;
    this.prequeue.dataset.shows = key;
    this.prequeue.replaceChildren(
      open
        ? h("p", {}, "Buyers who queued before opening were ordered by this seed; anyone can check the order from the export. Seed: ",
            h("code", { class: "hash" }, s.prequeue_seed))
        : h("p", {}, `The pre-queue order is drawn with a secret seed, published when the sale opens (${when(s.opens_at)}). Its SHA-256, fixed since creation: `,
            h("code", { class: "hash", "data-testid": "prequeue-commitment" }, s.prequeue_seed_sha256)),
    );
  }

  async download(button, make) {
    this.exportError.textContent = "";
    button.disabled = true;
    try {
      const [name, type, text] = await make();
      const url = URL.createObjectURL(new Blob([text], { type }));
      const link = h("a", { href: url, download: name, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      this.exportError.textContent = err.detail;
    } finally {
      button.disabled = false;
    }
  }

  // ---- audit log ----

  auditLog() {
    this.changesBody = h("tbody", {});
    this.changesError = h("p", { class: "error", role: "alert" });
    this.changesEmpty = h("p", { class: "muted" }, "No changes yet.");
    return h(
      "section",
      { class: "card", "aria-labelledby": "audit-heading" },
      h("h3", { id: "audit-heading" }, "Audit log"),
      h("p", { class: "muted small" }, "Every change of the sale's settings, newest first."),
      this.changesEmpty,
      h(
        "div",
        { class: "scroll" },
        h(
          "table",
          { "data-testid": "audit-log" },
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "When"), h("th", { scope: "col" }, "Who"), h("th", { scope: "col" }, "Change"))),
          this.changesBody,
        ),
      ),
      this.changesError,
    );
  }

  async loadChanges() {
    const all = [];
    let cursor = null;
    try {
      do {
        const query = new URLSearchParams({ limit: "1000" });
        if (cursor) query.set("cursor", cursor);
        const page = await api("GET", `${this.path}/changes?${query}`);
        all.push(...page.changes);
        cursor = page.next_cursor;
      } while (cursor && this.alive);
    } catch (err) {
      this.changesError.textContent = err.detail;
      return;
    }
    if (!this.alive) return;
    this.changesError.textContent = "";
    this.changesEmpty.hidden = all.length > 0;
    this.changesBody.replaceChildren(
      ...all.reverse().map((c) =>
        h(
          "tr",
          { "data-testid": "audit-entry" },
          h("td", {}, h("time", { datetime: c.at }, new Date(c.at).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" }))),
          h("td", {}, c.actor === user.user_id ? "you" : c.actor),
          h("td", {}, describe(c.before, c.after)),
        ),
      ),
    );
  }
}

const SETTING_NAMES = {
  release_rate: "release rate",
  release_interval_ms: "release interval (ms)",
  max_active: "max active",
  paused: "paused",
  admit_idle_seconds: "turn without a hold (s)",
  admit_headroom_percent: "admission headroom (%)",
  closes_at: "closes",
};

/** "release rate 100 → 250; paused no → yes" */
function describe(before, after) {
  const show = (key, v) => {
    if (v === null || v === undefined) return key === "max_active" ? "no cap" : "none";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (key === "closes_at") return when(v);
    return typeof v === "number" ? number(v) : String(v);
  };
  const keys = new Set([...Object.keys(before || {}), ...Object.keys(after || {})]);
  const parts = [];
  for (const key of keys) {
    const a = before ? before[key] : undefined;
    const b = after ? after[key] : undefined;
    if (JSON.stringify(a) === JSON.stringify(b)) continue;
    parts.push(`${SETTING_NAMES[key] || key} ${show(key, a)} → ${show(key, b)}`);
  }
  return parts.join("; ") || "no change";
}

start();
