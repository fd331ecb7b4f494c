// Stress: a constant 10,000 requests a second of sale traffic for 60 s
// (RATE, DURATION): 80% polls, 14% joins, 6% holds and confirmations.
import { common, iteration, thresholds, PER_ITERATION, VUS } from './mix.js';

const RATE = Number(__ENV.RATE || 10000);
const DURATION = Number(__ENV.DURATION || 60);

export const options = {
  ...common,
  scenarios: {
    stress_10k: {
      executor: 'constant-arrival-rate',
      rate: RATE / PER_ITERATION,
      timeUnit: '1s',
      duration: `${DURATION}s`,
      preAllocatedVUs: VUS,
      maxVUs: VUS,
    },
  },
  thresholds: thresholds((RATE / PER_ITERATION) * DURATION),
};

export default iteration;
