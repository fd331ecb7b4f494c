// Spike: from nothing to PEAK requests a second in RAMP seconds (the sale
// opens), held for HOLD seconds, then back down. Same mix as stress_10k.
import { common, iteration, thresholds, PER_ITERATION, VUS } from './mix.js';

const PEAK = Number(__ENV.PEAK || 10000);
const RAMP = Number(__ENV.RAMP || 5);
const HOLD = Number(__ENV.HOLD || 30);

export const options = {
  ...common,
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: 0,
      timeUnit: '1s',
      preAllocatedVUs: VUS,
      maxVUs: VUS,
      stages: [
        { target: PEAK / PER_ITERATION, duration: `${RAMP}s` },
        { target: PEAK / PER_ITERATION, duration: `${HOLD}s` },
        { target: 0, duration: '5s' },
      ],
    },
  },
  // Planned iterations: the two ramps average half the peak.
  thresholds: thresholds((PEAK / PER_ITERATION) * (RAMP / 2 + HOLD + 2.5)),
};

export default iteration;
