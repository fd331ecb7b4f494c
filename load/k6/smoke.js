// Smoke: a few buyers walk the whole journey; every request must work.
import { journey } from './lib.js';

export const options = {
  scenarios: {
    smoke: { executor: 'shared-iterations', vus: 5, iterations: 20, maxDuration: '2m' },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
  },
};

export default function () {
  journey(60);
}
