// The request mix of the stress and spike scenarios. Each iteration sends 50
// requests at once: 40 polls (80%), 7 joins (14%), 3 holds or confirmations
// (6%); the scenarios run RATE / 50 iterations a second.
//
// Buyers come from files prepared by load/run.sh:
//   WAITING  tokens of buyers already in the queue (they poll);
//   JOINERS  tokens of buyers not yet in it (each joins once);
//   HOLDERS  "token pass" of admitted buyers (each holds once).
// A VU that holds keeps the reservation; its next iteration confirms it
// (4 in 5) or cancels it, so k6 reports every confirmation it is
// told of (logged as "confirmed <id>") and the post-run check finds each in
// Postgres. Holds a VU never
// gets back to expire: the expirer's work is checked too.
import http from 'k6/http';
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';
import { Counter } from 'k6/metrics';

const BASE = __ENV.BASE_URL;
const SALE = __ENV.SALE;
const ZONES = (__ENV.ZONES || 'A').split(',');

const lines = (file) => open(file).split('\n').filter((l) => l.length > 0);
const waiting = new SharedArray('waiting', () => lines(__ENV.WAITING));
const joiners = new SharedArray('joiners', () => lines(__ENV.JOINERS));
const holders = new SharedArray('holders', () => lines(__ENV.HOLDERS).map((l) => l.split(' ')));

export const confirmed = new Counter('flashsale_confirmed');
export const serverErrors = new Counter('flashsale_server_errors');
export const unexpected = new Counter('flashsale_unexpected_status');
export const outOfBuyers = new Counter('flashsale_out_of_buyers');
// The chaos variant kills Redis: requests that meet the outage get 503 with
// Retry-After, which is the service working as designed.
const CHAOS = __ENV.CHAOS === '1';
export const unavailable = new Counter('flashsale_unavailable');

// Answers a correct service gives in a sale (a sold-out zone, a hold that
// expired before its confirmation): not failures.
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 299 }, 409, 410));

const pending = []; // this VU's holds, not yet confirmed or cancelled

function auth(token, extra) {
  return Object.assign({ Authorization: `Bearer ${token}` }, extra || {});
}

// 5xx and transport errors (status 0) are the service failing; any other
// status outside `ok` is a wrong answer.
function record(name, r, ok) {
  if (CHAOS && r.status === 503) {
    unavailable.add(1, { name });
  } else if (r.status >= 500 || r.status === 0) {
    serverErrors.add(1, { name, status: String(r.status) });
  } else if (!ok.includes(r.status)) {
    unexpected.add(1, { name, status: String(r.status) });
  }
}

// The targets. Under CHAOS the outage makes requests wait for Redis to come
// back, so latency and dropped iterations are reported, not judged; wrong
// answers and 5xx other than the outage's 503 still fail the run.
export function thresholds(iterationsPlanned) {
  const p99 = CHAOS ? 'p(99)>=0' : 'p(99)<100';
  return {
    // No 5xx and no status a correct service would not give.
    flashsale_server_errors: ['count==0'],
    flashsale_unexpected_status: ['count==0'],
    flashsale_out_of_buyers: ['count==0'],
    flashsale_unavailable: ['count>=0'],
    // Under 1% of the planned iterations dropped.
    dropped_iterations: [CHAOS ? 'count>=0' : `count<${Math.ceil(iterationsPlanned * 0.01)}`],
    http_req_duration: [p99],
    // Per request kind, so the summary shows each.
    'http_req_duration{name:poll}': [p99],
    'http_req_duration{name:join}': [p99],
    'http_req_duration{name:hold}': [p99],
    'http_req_duration{name:confirm}': [p99],
    'http_req_duration{name:cancel}': [p99],
  };
}

// Each VU polls for its own slice of the waiting buyers, with requests built
// once: k6 shares the machine with the service, and building requests on
// every iteration costs k6 CPU the service then lacks (load/RESULTS.md).
const POLLERS_PER_VU = Number(__ENV.POLLERS_PER_VU || 1000);
const polls = [];
if (__VU > 0) {
  for (let k = 0; k < POLLERS_PER_VU; k++) {
    const token = waiting[((__VU - 1) * POLLERS_PER_VU + k) % waiting.length];
    polls.push(['GET', `${BASE}/v1/sales/${SALE}/queue`, null, { headers: auth(token), tags: { name: 'poll' } }]);
  }
}
let cursor = 0;

function join(j) {
  if (j >= joiners.length) {
    outOfBuyers.add(1);
    return null;
  }
  return { kind: 'join', ok: [202], req: ['POST', `${BASE}/v1/sales/${SALE}/queue`, null, { headers: auth(joiners[j]), tags: { name: 'join' } }] };
}

function settle(held) {
  if (held.n % 5 === 4) {
    return { kind: 'cancel', ok: [200, 410], req: ['POST', `${BASE}/v1/reservations/${held.id}/cancel`, null, { headers: auth(held.token), tags: { name: 'cancel' } }] };
  }
  return {
    kind: 'confirm',
    ok: [200, 410],
    held,
    req: ['POST', `${BASE}/v1/reservations/${held.id}/confirm`, '{"payment_ref":"k6"}', {
      headers: auth(held.token, { 'Content-Type': 'application/json' }),
      tags: { name: 'confirm' },
    }],
  };
}

function hold(h) {
  if (h >= holders.length) {
    outOfBuyers.add(1);
    return null;
  }
  const [token, pass] = holders[h];
  const zone = ZONES[h % ZONES.length];
  return {
    kind: 'hold',
    ok: [201, 409],
    holder: { token, n: h },
    req: ['POST', `${BASE}/v1/sales/${SALE}/reservations`, JSON.stringify({ zone, quantity: 1 }), {
      headers: auth(token, { 'Content-Type': 'application/json', 'X-Queue-Pass': pass, 'Idempotency-Key': `k6-${h}` }),
      tags: { name: 'hold' },
      responseType: 'text',
    }],
  };
}

// Requests in one iteration: the mix's 50, sent together with http.batch
// (k6 spends far less of the machine per request that way, and the machine
// is shared with the service under test).
export const PER_ITERATION = 50;

// What stress_10k and spike share. k6 runs on the machine it measures, so it
// is set to spend as little of it as it can:
// - Every VU (VUS, default 100) is made before the run starts, none during
//   it. Making a VU costs k6 tens of milliseconds of CPU, and mid-run that
//   cost comes exactly when the service is slowest, so k6 falls further
//   behind (figures in load/RESULTS.md). An iteration that finds no free VU
//   is dropped and counted against the 1% threshold.
// - BATCH_PER_HOST (default 10) connections per VU: an iteration's 50
//   requests go five to a connection, not one each: fewer connections cost
//   k6 and the API less CPU and memory.
// - Only the tags the thresholds and summary read.
export const VUS = Number(__ENV.VUS || 100);
export const common = {
  discardResponseBodies: true,
  batchPerHost: Number(__ENV.BATCH_PER_HOST || 10),
  systemTags: ['name', 'method', 'status', 'expected_response', 'error'],
};

const POLLS = 40;

export function iteration() {
  const round = exec.scenario.iterationInTest;
  const reqs = [];
  for (let s = 0; s < POLLS; s++) {
    reqs.push(polls[cursor]);
    cursor = (cursor + 1) % polls.length;
  }
  const others = [];
  for (let s = 0; s < 7; s++) {
    others.push(join(round * 7 + s));
  }
  for (let s = 0; s < 3; s++) {
    others.push(pending.length > 0 ? settle(pending.shift()) : hold(round * 3 + s));
  }
  const sent = others.filter((p) => p !== null);
  for (const p of sent) {
    reqs.push(p.req);
  }
  const responses = http.batch(reqs);
  for (let k = 0; k < POLLS; k++) {
    record('poll', responses[k], [200]);
  }
  for (let k = 0; k < sent.length; k++) {
    const p = sent[k];
    const r = responses[POLLS + k];
    record(p.kind, r, p.ok);
    if (p.kind === 'confirm' && r.status === 200) {
      confirmed.add(1);
      console.log(`confirmed ${p.held.id}`);
    }
    // One holder in ten walks away: the hold is left to expire.
    if (p.kind === 'hold' && r.status === 201 && p.holder.n % 10 !== 9) {
      pending.push({ id: r.json('id'), token: p.holder.token, n: p.holder.n });
    }
  }
}
