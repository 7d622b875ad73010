"""Soak: mixed REST and WebSocket load against one steward for a number of minutes,
sampling its RSS and open file descriptors every 10 s. Run through tests/soak/run.

Passes when, after the warm-up (the first 20% of the run, at least one sample), RSS and
the fd count grow by less than 5% (last third of the samples against the first third),
no request is answered 5xx or dropped, and the error rate of each interval stays within
the expected (deliberately bad) requests. Writes every sample and the verdict as JSON."""
import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..'))

import requests  # noqa: E402
import websockets  # noqa: E402

from harness.pgcluster import PgCluster  # noqa: E402
from harness.steward import ADMIN_KEY, Steward  # noqa: E402

USERS = 20


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}

    def add(self, k, n=1):
        with self.lock:
            self.c[k] = self.c.get(k, 0) + n

    def snap(self):
        with self.lock:
            return dict(self.c)


def rest_worker(server, scouts, stop, ctr, seed, pause):
    rng = random.Random(seed)
    s = requests.Session()
    h = {'Authorization': 'Bearer ' + ADMIN_KEY}
    url = server.url
    while not stop.is_set():
        user = f'soak-{rng.randrange(USERS)}'
        op = rng.randrange(12)
        expect_4xx = False
        try:
            if op == 0:
                r = s.post(url + '/v1/lessons', headers=h, json={
                    'lesson_type': 'gate_failure', 'repo': f'r{rng.randrange(50)}',
                    'detail': {'n': rng.random()}})
            elif op == 1:
                r = s.get(url + '/v1/lessons?limit=20', headers=h)
            elif op == 2:
                post = f'post-{rng.randrange(200)}'
                r = s.post(url + f'/v1/posts/{post}/metrics', headers=h, json={'points': [
                    {'timestamp': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                     'impressions': rng.randrange(10000), 'engagements': rng.randrange(100)}]})
            elif op == 3:
                r = s.post(url + f'/v1/posts/post-{rng.randrange(200)}/plan', headers=h,
                           json={})
            elif op == 4:
                r = s.post(url + f'/v1/bonds/{user}/detections', headers=h, json={
                    'detection': {'phase': rng.choice(['bonding', 'dormant', 'trust'])},
                    'ulm_vector': {'trust': rng.random()}})
            elif op == 5:
                r = s.post(url + f'/v1/bonds/{user}/messages', headers=h)
                expect_4xx = True  # 429 once a cap is reached
            elif op == 6:
                r = s.post(url + f'/v1/scouts/{scouts[user]}/items', headers=h, json={
                    'source_msg_ref': uuid.uuid4().hex, 'verdict': rng.choice(
                        ['relevant', 'relevant', 'spam']), 'subject': 'subject',
                    'snippet': 'snippet'})
            elif op == 7:
                r = s.get(url + f'/v1/users/{user}/proposals?limit=50', headers=h)
            elif op == 8:
                r = s.get(url + '/v1/status', headers=h)
            elif op == 9:
                post = f'post-{rng.randrange(200)}'
                key = 'sheal_' + hashlib.sha256(f'{post}:comment:tier_1'.encode()).hexdigest()[:32]
                r = s.put(url + f'/v1/actions/{key}', headers=h, json={
                    'post_id': post, 'action_type': 'comment', 'tier': 'tier_1',
                    'status': rng.choice(['running', 'success', 'failed']),
                    'error_code': 'timeout'})
            elif op == 10:
                # deliberately bad: malformed JSON and an unknown field
                expect_4xx = True
                if rng.random() < 0.5:
                    r = s.post(url + '/v1/lessons', headers=dict(h, **{
                        'Content-Type': 'application/json'}), data=b'{"lesson_type":')
                else:
                    r = s.post(url + '/v1/lessons', headers=h, json={'zz': 1})
            else:
                r = s.get(url + '/metrics')
            code = r.status_code
            if code >= 500:
                ctr.add('http_5xx')
            elif code >= 400 and not expect_4xx:
                ctr.add('http_unexpected_4xx')
            elif code >= 400:
                ctr.add('http_expected_4xx')
            ctr.add('http_requests')
        except requests.RequestException:
            ctr.add('http_dropped')
            s = requests.Session()
        if pause:
            time.sleep(pause)


async def device_loop(server, dev, stop, ctr, seed):
    """A device that connects, takes and acks proposals, and reconnects now and then."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            async with websockets.connect(server.ws_url, ping_interval=None,
                                          open_timeout=10) as ws:
                ctr.add('ws_connects')
                await ws.send(json.dumps({'type': 'device_hello', 'device_id': dev['device_id'],
                                          'token': dev['token']}))
                until = time.monotonic() + rng.uniform(5, 30)
                while time.monotonic() < until and not stop.is_set():
                    try:
                        m = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                    except asyncio.TimeoutError:
                        if rng.random() < 0.2:  # a bad frame now and then: an error frame
                            await ws.send('{"type":')
                        continue
                    ctr.add('ws_frames_in')
                    if m['type'] == 'scout_proposal':
                        await ws.send(json.dumps({'type': 'scout_proposal_ack',
                                                  'proposal_id': m['proposal']['id']}))
                    elif m['type'] == 'error' and m.get('code') not in ('bad_frame',):
                        ctr.add('ws_unexpected_errors')
        except (OSError, websockets.WebSocketException, asyncio.TimeoutError):
            ctr.add('ws_dropped')
            await asyncio.sleep(0.5)


def ws_thread(server, devs, stop, ctr):
    async def main():
        await asyncio.gather(*[device_loop(server, d, stop, ctr, i)
                               for i, d in enumerate(devs)])
    asyncio.run(main())


def proc_sample(pid):
    rss = 0
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                rss = int(line.split()[1])
    fds = len(os.listdir(f'/proc/{pid}/fd'))
    return rss, fds


def growth(values):
    third = max(1, len(values) // 3)
    first = statistics.mean(values[:third])
    last = statistics.mean(values[-third:])
    return (last - first) / first * 100 if first else 0.0


def valgrind_summary(path):
    import re
    out = {}
    with open(path, errors='replace') as f:
        text = f.read()
    for key, label in (('definitely_lost', 'definitely lost'), ('indirectly_lost',
                       'indirectly lost'), ('possibly_lost', 'possibly lost'),
                       ('still_reachable', 'still reachable')):
        m = re.findall(label + r': ([\d,]+) bytes in ([\d,]+) blocks', text)
        if m:
            out[key + '_bytes'] = int(m[-1][0].replace(',', ''))
            out[key + '_blocks'] = int(m[-1][1].replace(',', ''))
        elif 'All heap blocks were freed' in text:
            out[key + '_bytes'] = 0
    m = re.findall(r'ERROR SUMMARY: ([\d,]+) errors from ([\d,]+) contexts', text)
    if m:
        out['error_summary'] = f'{m[-1][0]} errors from {m[-1][1]} contexts'
    lines = [ln for ln in text.splitlines() if 'LEAK SUMMARY' in ln or 'lost:' in ln or
             'reachable:' in ln or 'ERROR SUMMARY' in ln]
    out['summary_lines'] = [re.sub(r'^==\d+== ', '', ln) for ln in lines]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--minutes', type=float, default=10)
    ap.add_argument('--out', required=True)
    ap.add_argument('--rest-threads', type=int, default=3)
    ap.add_argument('--pause', type=float, default=0.0, help='seconds between requests')
    ap.add_argument('--interval', type=float, default=10)
    ap.add_argument('--label', default='')
    ap.add_argument('--valgrind-log', default='',
                    help='steward runs under valgrind writing here: judge leaks, not growth')
    args = ap.parse_args()

    pg = PgCluster(port=7000 + os.getpid() % 1000)
    pg.start()
    server = None
    try:
        db = pg.createdb('soak')
        server = Steward(db, STEWARD_ACCESS_LOG='false', STEWARD_HEAL_INTERVAL_S='60',
                         STEWARD_ACK_TIMEOUT_S='30')
        scouts, devs = {}, []
        for i in range(USERS):
            user = f'soak-{i}'
            r = server.post('/v1/scouts', json={'user_id': user, 'provider': 'gmail'})
            scouts[user] = r.json()['id']
            server.put(f'/v1/bonds/{user}/rate-limit', json={'daily_msg_cap': 1000})
            devs.append(server.post('/v1/devices', json={'user_id': user, 'name': 'd'}).json())
        stop = threading.Event()
        ctr = Counters()
        threads = [threading.Thread(target=rest_worker, args=(server, scouts, stop, ctr, i,
                                                              args.pause), daemon=True)
                   for i in range(args.rest_threads)]
        threads.append(threading.Thread(target=ws_thread, args=(server, devs, stop, ctr),
                                        daemon=True))
        for t in threads:
            t.start()
        samples = []
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        prev = {}
        while time.monotonic() < end:
            time.sleep(args.interval)
            if server.proc.poll() is not None:
                raise SystemExit(f'steward exited with {server.proc.returncode}')
            rss, fds = proc_sample(server.proc.pid)
            c = ctr.snap()
            d = {k: c.get(k, 0) - prev.get(k, 0) for k in set(c) | set(prev)}
            prev = c
            samples.append({'t_s': round(time.monotonic() - t0), 'rss_kb': rss, 'fds': fds,
                            'requests': d.get('http_requests', 0),
                            'errors_5xx': d.get('http_5xx', 0),
                            'dropped': d.get('http_dropped', 0),
                            'unexpected_4xx': d.get('http_unexpected_4xx', 0),
                            'expected_4xx': d.get('http_expected_4xx', 0),
                            'ws_frames_in': d.get('ws_frames_in', 0),
                            'ws_connects': d.get('ws_connects', 0)})
            s = samples[-1]
            print(f"[{s['t_s']:5d}s] rss {s['rss_kb'] / 1024:7.1f} MiB  fds {s['fds']:4d}  "
                  f"req {s['requests']:6d}  5xx {s['errors_5xx']}  4xx(exp) {s['expected_4xx']}  "
                  f"ws in {s['ws_frames_in']}  connects {s['ws_connects']}", flush=True)
        stop.set()
        for t in threads:
            t.join(30)
        warm = max(1, int(len(samples) * 0.2))
        steady = samples[warm:]
        total = ctr.snap()
        rates = [s['expected_4xx'] / s['requests'] for s in steady if s['requests']]
        verdict = {
            'label': args.label,
            'minutes': args.minutes,
            'samples': len(samples),
            'warmup_samples': warm,
            'rss_kb_after_warmup_first': steady[0]['rss_kb'] if steady else None,
            'rss_kb_last': samples[-1]['rss_kb'] if samples else None,
            'rss_growth_pct': round(growth([s['rss_kb'] for s in steady]), 2) if steady else None,
            'fds_growth_pct': round(growth([s['fds'] for s in steady]), 2) if steady else None,
            'fds_min_max': [min(s['fds'] for s in steady), max(s['fds'] for s in steady)]
            if steady else None,
            'totals': total,
            'requests_per_s': round(total.get('http_requests', 0) / (args.minutes * 60), 1),
            'bad_request_rate_min_max': [round(min(rates), 4), round(max(rates), 4)]
            if rates else None,
        }
        ok = (steady and verdict['rss_growth_pct'] < 5 and verdict['fds_growth_pct'] < 5 and
              total.get('http_5xx', 0) == 0 and total.get('http_dropped', 0) == 0 and
              total.get('http_unexpected_4xx', 0) == 0 and
              total.get('ws_unexpected_errors', 0) == 0)
        status = server.stop(timeout=300 if args.valgrind_log else 15)
        verdict['exit_status'] = status
        if args.valgrind_log:
            vg = valgrind_summary(args.valgrind_log)
            verdict['valgrind'] = vg
            ok = (vg.get('definitely_lost_bytes') == 0 and total.get('http_5xx', 0) == 0 and
                  total.get('http_unexpected_4xx', 0) == 0)
        verdict['passed'] = bool(ok) and status == 0 and not server.sanitizer_reports()
        verdict['log'] = server.log_path
        with open(args.out, 'w') as f:
            json.dump({'verdict': verdict, 'samples': samples}, f, indent=1)
        print(json.dumps(verdict, indent=1))
        return 0 if verdict['passed'] else 1
    finally:
        if server and server.proc.poll() is None:
            server.kill()
        pg.destroy()


if __name__ == '__main__':
    sys.exit(main())
