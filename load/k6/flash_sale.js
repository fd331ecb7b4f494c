// Flash sale: buyers arrive faster than tickets last, wait in the queue at a
// browser's pace, and buy, cancel or walk away until the sale sells out.
import { journey } from './lib.js';

const RATE = Number(__ENV.ARRIVALS_PER_SECOND || 50);
const SECONDS = Number(__ENV.ARRIVAL_SECONDS || 60);
// Room for every arrival to be in the sale at once (at most 5,000 VUs).
const VUS = Number(__ENV.VUS || Math.min(RATE * SECONDS, 5000));

export const options = {
  scenarios: {
    flash_sale: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${SECONDS}s`,
      // A buyer may wait a minute or two near the end, while the last
      // tickets come back from cancelled and lapsed holds, so many buyers are
      // in the sale at once. Every VU is made before the run: an arrival that
      // finds no free VU is dropped while k6 makes one in the background.
      preAllocatedVUs: VUS,
      maxVUs: VUS,
    },
  },
  thresholds: {
    dropped_iterations: ['count<1'],
    http_req_failed: ['rate<0.01'],
    'http_req_duration{name:poll}': ['p(99)<100'],
    'http_req_duration{name:hold}': ['p(99)<100'],
  },
};

export default function () {
  journey(120);
}
