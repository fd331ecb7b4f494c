// The pages' one way to call the API: same-origin fetch with the session
// cookie, the CSRF header on every request that changes something, and
// problem+json answers turned into a `Problem` the page can show.

/** An API refusal (`status` 4xx/5xx) or no answer at all (`status` 0). */
export class Problem extends Error {
  constructor(status, body, retryAfter) {
    const detail = (body && (body.detail || body.title)) || "Something went wrong.";
    super(detail);
    this.status = status;
    this.code = (body && body.code) || (status === 0 ? "offline" : "error");
    this.detail = detail;
    this.retryAfter = retryAfter ? Number(retryAfter) : null;
    // `seats_taken` names the seats that were not free.
    this.seats = (body && Array.isArray(body.seats) && body.seats) || null;
  }
}

/**
 * Calls the API. `body` is sent as JSON; `headers` are added. Resolves to
 * the parsed JSON (or text, or null for 204); rejects with a `Problem`.
 */
export async function api(method, path, body, headers = {}) {
  const init = { method, credentials: "same-origin", headers: { ...headers } };
  if (method !== "GET" && method !== "HEAD") init.headers["x-flashsale-csrf"] = "1";
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new Problem(0, {
      code: "offline",
      detail: "No connection to the server. Retrying…",
    });
  }
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json().catch(() => null) : await res.text();
  if (!res.ok) throw new Problem(res.status, data, res.headers.get("retry-after"));
  return data;
}

/** The signed-in account (`{user_id, role}`), or null. */
export async function me() {
  try {
    return await api("GET", "/v1/me");
  } catch (err) {
    if (err.status === 401) return null;
    throw err;
  }
}

/** Builds an element: `h("p", {class: "x", "data-testid": "y"}, "text", child)`. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Fills the page header's account corner: who is signed in, and sign out. */
export async function accountCorner(user) {
  const corner = document.getElementById("account");
  if (!corner) return;
  if (!user) {
    const back = encodeURIComponent(location.pathname);
    corner.replaceChildren(
      h("a", { href: `/login?next=${back}` }, "Sign in"),
      " ",
      h("a", { href: `/register?next=${back}` }, "Register"),
    );
    return;
  }
  corner.replaceChildren(
    user.role === "organizer" ? h("a", { href: "/console" }, "Console") : "",
    " ",
    h(
      "button",
      {
        type: "button",
        class: "link",
        "data-testid": "sign-out",
        onclick: async () => {
          await api("DELETE", "/v1/auth/session").catch(() => {});
          location.href = "/";
        },
      },
      "Sign out",
    ),
  );
}

/** "in 3 min 20 s" style durations, for ETAs and countdowns. */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${String(m % 60).padStart(2, "0")} min`;
  return `${Math.floor(hours / 24)} days`;
}

/** A sale's opening time in the reader's own time zone. */
export function when(rfc3339) {
  return new Date(rfc3339).toLocaleString(undefined, {
    dateStyle: "medium",
    timeStyle: "short",
  });
}

/** Prices are integer cents. */
export function price(cents) {
  return (cents / 100).toLocaleString(undefined, { style: "currency", currency: "EUR" });
}
