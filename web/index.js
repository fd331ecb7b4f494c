// `/`: the sales on now and the ones coming up, each linking to its page.

import { accountCorner, api, h, me, price, when } from "./api.js";

const STATE_LABEL = {
  scheduled: "Coming up",
  open: "On sale",
  paused: "Paused",
  sold_out: "Sold out",
  closed: "Closed",
};

/** "€40.00" or "€40.00 – €120.00", from the general-admission zones. */
function priceRange(zones) {
  const prices = zones.filter((z) => !z.seating).map((z) => z.price_cents);
  const all = prices.length ? prices : zones.map((z) => z.price_cents);
  if (!all.length) return "";
  const low = Math.min(...all);
  const high = Math.max(...all);
  return low === high ? price(low) : `${price(low)} – ${price(high)}`;
}

function card(sale) {
  const opened = Date.parse(sale.opens_at) <= Date.now();
  return h(
    "article",
    { class: "card sale", "data-testid": `sale-${sale.id}` },
    h("h3", {}, h("a", { href: `/sales/${encodeURIComponent(sale.id)}` }, sale.name)),
    h(
      "p",
      { class: "row meta" },
      h("span", { class: `badge ${sale.state}`, "data-testid": "sale-state" }, STATE_LABEL[sale.state] || sale.state),
      h("span", {}, `${opened ? "Opened" : "Opens"} `, h("time", { datetime: sale.opens_at }, when(sale.opens_at))),
    ),
    h("p", { class: "price", "data-testid": "sale-price" }, priceRange(sale.zones)),
  );
}

function fill(id, sales, empty) {
  const box = document.getElementById(id);
  box.removeAttribute("aria-busy");
  box.replaceChildren(...(sales.length ? sales.map(card) : [h("p", { class: "muted" }, empty)]));
}

async function load() {
  const [open, upcoming] = await Promise.all([
    api("GET", "/v1/sales?state=open&limit=100"),
    api("GET", "/v1/sales?state=scheduled&limit=100"),
  ]);
  fill("open", open.sales, "Nothing is on sale right now.");
  // Soonest first: the next to open leads.
  const soon = [...upcoming.sales].sort((a, b) => Date.parse(a.opens_at) - Date.parse(b.opens_at));
  fill("upcoming", soon, "No sales are scheduled yet.");
}

me()
  .then(accountCorner)
  .catch(() => accountCorner(null));
load().catch((problem) => {
  document.getElementById("error").textContent = `The sales could not be loaded: ${problem.detail}`;
  for (const id of ["open", "upcoming"]) {
    const box = document.getElementById(id);
    box.removeAttribute("aria-busy");
    box.replaceChildren();
  }
});
