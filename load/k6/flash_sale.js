// Flash sale: buyers arrive faster than tickets last, wait in the queue at a
// browser's pace, and buy, cancel or walk away until the sale sells out.
import { journey } from './lib.js';

const RATE = Number(__ENV.ARRIVALS_PER_SECOND || 50);
const SECONDS = Number(__ENV.ARRIVAL_SECONDS || 60);

export const options = {
  scenarios: {
    flash_sale: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${SECONDS}s`,
      preAllocatedVUs: 200,
      maxVUs: 2000,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_duration{name:poll}': ['p(99)<100'],
    'http_req_duration{name:hold}': ['p(99)<100'],
  },
};

export default function () {
  journey(120);
}
