// The buyer's journey through a flash sale, shared by the k6 scenarios:
// join the queue, poll at a browser's pace until admitted, hold tickets with
// an idempotency key, then confirm, cancel or walk away.
//
// Environment: BASE_URL, SALE (sale id), TOKENS (file: one access token a
// line; every iteration takes the next buyer), ZONES (comma-separated codes),
// POLL_SECONDS (default 1).
import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';
import { Counter } from 'k6/metrics';

export const BASE = __ENV.BASE_URL;
export const SALE = __ENV.SALE;
const ZONES = (__ENV.ZONES || 'A').split(',');
const POLL_SECONDS = Number(__ENV.POLL_SECONDS || 1);

const tokens = new SharedArray('tokens', () => open(__ENV.TOKENS).split('\n').filter((l) => l.length > 0));

// Every confirmation is also logged as "confirmed <id>" (load/run.sh sends
// k6's log to a file), so the post-run check can find each in Postgres.
export const confirmed = new Counter('flashsale_confirmed');
export const soldOut = new Counter('flashsale_told_sold_out');
export const admitted = new Counter('flashsale_admitted');

// Statuses a correct service answers in a sale (sold out, limits, expired
// holds): not failures of the service.
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 299 }, 404, 409, 410));

function headers(token, extra) {
  return { headers: Object.assign({ Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }, extra || {}) };
}

export function buyer() {
  const i = exec.scenario.iterationInTest;
  return { id: i, token: tokens[i % tokens.length] };
}

/// Joins and polls until admitted; returns the pass, or null (sold out,
/// gave up after `maxPolls`).
export function waitForPass(token, maxPolls) {
  const joined = http.post(`${BASE}/v1/sales/${SALE}/queue`, null, headers(token), { tags: { name: 'join' } });
  let status = joined.status === 202 ? joined.json() : null;
  for (let n = 0; status && n < maxPolls; n++) {
    if (status.state === 'admitted') {
      admitted.add(1);
      return status.pass;
    }
    if (status.state === 'sold_out') {
      soldOut.add(1);
      return null;
    }
    sleep(POLL_SECONDS);
    const polled = http.get(`${BASE}/v1/sales/${SALE}/queue`, Object.assign(headers(token), { tags: { name: 'poll' } }));
    status = polled.status === 200 ? polled.json() : null;
  }
  return null;
}

/// Holds 1 or 2 tickets, trying another zone if the first is sold out.
export function hold(b, pass) {
  const qty = 1 + (b.id % 2);
  for (let k = 0; k < ZONES.length; k++) {
    const zone = ZONES[(b.id + k) % ZONES.length];
    const body = JSON.stringify({ zone, quantity: qty });
    const h = headers(b.token, { 'X-Queue-Pass': pass, 'Idempotency-Key': `k6-${b.id}-${zone}` });
    let r = http.post(`${BASE}/v1/sales/${SALE}/reservations`, body, Object.assign(h, { tags: { name: 'hold' } }));
    if (r.status === 201) {
      return r.json();
    }
    if (r.status !== 409) {
      return null;
    }
  }
  return null;
}

/// The whole journey: 70% confirm, 20% cancel, 10% walk away.
export function journey(maxPolls) {
  const b = buyer();
  const pass = waitForPass(b.token, maxPolls);
  if (!pass) {
    return;
  }
  const r = hold(b, pass);
  if (!r) {
    return;
  }
  sleep(Math.random());
  const roll = b.id % 10;
  if (roll < 7) {
    const c = http.post(`${BASE}/v1/reservations/${r.id}/confirm`, '{"payment_ref":"k6"}', Object.assign(headers(b.token), { tags: { name: 'confirm' } }));
    if (c.status === 200) {
      confirmed.add(1);
      console.log(`confirmed ${r.id}`);
    }
  } else if (roll < 9) {
    http.post(`${BASE}/v1/reservations/${r.id}/cancel`, null, Object.assign(headers(b.token), { tags: { name: 'cancel' } }));
  }
}
