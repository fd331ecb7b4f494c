// Login storm at opening: every buyer logs in at once, each login an
// argon2id check at the service's cost. load/run.sh login_storm creates the
// accounts (storm-<i>@load.test, one password) and reports the API's CPU
// time per login; k6 reports logins/s and their latency.
//
// Environment: BASE_URL, USERS (accounts, one login each), PASSWORD,
// VUS (buyers logging in at the same moment, default 200).
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';

const USERS = Number(__ENV.USERS || 2000);

export const options = {
  scenarios: {
    storm: {
      executor: 'shared-iterations',
      vus: Number(__ENV.VUS || 200),
      iterations: USERS,
      maxDuration: '10m',
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
  },
};

export default function () {
  const i = exec.scenario.iterationInTest;
  const res = http.post(
    `${__ENV.BASE_URL}/v1/auth/login`,
    JSON.stringify({ email: `storm-${i}@load.test`, password: __ENV.PASSWORD }),
    { headers: { 'Content-Type': 'application/json' } },
  );
  check(res, {
    'logged in': (r) => r.status === 200 && r.json('access_token') !== undefined,
    'not stored': (r) => r.headers['Cache-Control'] === 'no-store',
  });
}
