// /login and /register: one form each, the session cookie on success
// (POST /v1/auth/session; no token ever reaches the page's script), then
// back to `?next=` when it is a path of this site, else to the sales.

import { accountCorner, api, me } from "./api.js";

/** `?next=` as a path of this origin, or "/" (never another site). */
function nextPath() {
  const raw = new URLSearchParams(location.search).get("next");
  if (!raw || !raw.startsWith("/") || raw.startsWith("//") || raw.startsWith("/\\")) return "/";
  try {
    const url = new URL(raw, location.origin);
    if (url.origin !== location.origin) return "/";
    return url.pathname + url.search + url.hash;
  } catch {
    return "/";
  }
}

const form = document.getElementById("account-form");
const email = document.getElementById("email");
const password = document.getElementById("password");
const error = document.getElementById("form-error");
const submit = form.querySelector("button[type=submit]");
const registering = form.dataset.kind === "register";
const next = nextPath();

// The other form keeps the way back.
if (next !== "/") {
  const other = document.getElementById("other");
  other.href = `${other.getAttribute("href")}?next=${encodeURIComponent(next)}`;
}

/** An API detail ("the email or the password is wrong") as a sentence. */
function sentence(text) {
  const s = String(text).trim();
  if (!s) return s;
  return s[0].toUpperCase() + s.slice(1) + (/[.!?…]$/.test(s) ? "" : ".");
}

function fail(message, field) {
  error.textContent = message;
  for (const input of [email, password]) input.removeAttribute("aria-invalid");
  if (field) {
    field.setAttribute("aria-invalid", "true");
    field.focus();
  }
}

/** Which field a refusal is about, to mark it and move the focus there. */
function fieldOf(problem) {
  if (problem.code === "invalid_email" || problem.code === "email_taken") return email;
  if (problem.code === "weak_password" || problem.code === "invalid_credentials") return password;
  return null;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const credentials = { email: email.value.trim(), password: password.value };
  if (!credentials.email) return fail("Enter your email address.", email);
  if (!credentials.password) return fail("Enter your password.", password);
  fail("");
  submit.disabled = true;
  form.setAttribute("aria-busy", "true");
  try {
    if (registering) await api("POST", "/v1/auth/register", credentials);
    await api("POST", "/v1/auth/session", credentials);
    location.replace(next);
  } catch (problem) {
    fail(sentence(problem.detail), fieldOf(problem));
    submit.disabled = false;
    form.removeAttribute("aria-busy");
  }
});

me()
  .then(accountCorner)
  .catch(() => accountCorner(null));
