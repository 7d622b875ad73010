#!/usr/bin/python3
"""A small triage worker for steward (standard library only).

It watches one scout's source, here a folder standing in for a mailbox: each message is
one file (RFC 822, as mail clients save `.eml` files). Every poll it

1. reads the scout (GET /v1/scouts/{id}) for the cursor it stored at its last run: the
   name of the last file it triaged, so a restarted worker carries on where it stopped;
2. triages the files that sort after that name: `spam` when a spam word appears in the
   subject or body, otherwise `relevant` with a short reason;
3. posts the verdicts in batches (POST /v1/scouts/{id}/items/batch, up to 500 items a
   request); each message's Message-ID (or its file name) is its source_msg_ref, so a
   message posted twice is a duplicate, never a second proposal;
4. records the run with the new cursor (POST /v1/scouts/{id}/runs).

One JSON line per poll goes to stdout. Usage:

    STEWARD_URL=http://127.0.0.1:8080 STEWARD_KEY=<service key> \\
        examples/triage_worker.py --scout <scout id> --mailbox ./mail [--once]
"""
import argparse
import email
import email.policy
import json
import os
import sys
import time
import urllib.error
import urllib.request

SPAM_WORDS = ('lottery', 'winner', 'viagra', 'crypto giveaway', 'act now')
BATCH_MAX = 500
SNIPPET_CHARS = 280


class Steward:
    def __init__(self, url, key, timeout=30):
        self.url = url.rstrip('/')
        self.key = key
        self.timeout = timeout

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header('Authorization', f'Bearer {self.key}')
        if data is not None:
            req.add_header('Content-Type', 'application/json')
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b'null')
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors='replace')
            raise RuntimeError(f'{method} {path}: {e.code} {detail}') from None


def triage(msg):
    """(verdict, reason) for one message."""
    subject = str(msg.get('Subject', ''))
    body = msg.get_body(preferencelist=('plain',))
    text = body.get_content() if body is not None else ''
    hay = f'{subject}\n{text}'.lower()
    for word in SPAM_WORDS:
        if word in hay:
            return 'spam', f'mentions "{word}"'
    return 'relevant', 'a person wrote to you' if msg.get('From') else 'new message'


def read_item(path):
    with open(path, 'rb') as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    verdict, reason = triage(msg)
    body = msg.get_body(preferencelist=('plain',))
    snippet = ' '.join((body.get_content() if body is not None else '').split())
    ref = str(msg.get('Message-ID', '')).strip() or os.path.basename(path)
    item = {'source_msg_ref': ref[:512], 'verdict': verdict, 'reason': reason,
            'source_type': 'email'}
    if verdict == 'relevant':  # spam is never stored: no need to send its content
        item['subject'] = str(msg.get('Subject', ''))[:2000]
        item['snippet'] = snippet[:SNIPPET_CHARS]
    return item


def poll(api, scout_id, mailbox, batch):
    scout = api.call('GET', f'/v1/scouts/{scout_id}')
    after = scout.get('cursor') or ''
    names = sorted(n for n in os.listdir(mailbox)
                   if n > after and os.path.isfile(os.path.join(mailbox, n)))
    summary = {'scout_id': scout_id, 'read': len(names), 'batches': 0, 'queued': 0,
               'duplicate': 0, 'spam': 0, 'paused': 0, 'other': 0}
    for start in range(0, len(names), batch):
        chunk = names[start:start + batch]
        items = [read_item(os.path.join(mailbox, n)) for n in chunk]
        out = api.call('POST', f'/v1/scouts/{scout_id}/items/batch', {'items': items})
        summary['batches'] += 1
        for res in out['results']:
            key = 'queued' if res['queued'] else res.get('reason', 'other')
            key = 'paused' if key == 'paused_device_inactive' else key
            summary[key if key in summary else 'other'] += 1
        # the cursor moves only past files whose verdicts were accepted
        api.call('POST', f'/v1/scouts/{scout_id}/runs', {'cursor': chunk[-1]})
    if not names:
        api.call('POST', f'/v1/scouts/{scout_id}/runs', {})
    summary['cursor'] = names[-1] if names else (after or None)
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--url', default=os.environ.get('STEWARD_URL', 'http://127.0.0.1:8080'))
    ap.add_argument('--key', default=os.environ.get('STEWARD_KEY'),
                    help='a service key (default: $STEWARD_KEY)')
    ap.add_argument('--scout', required=True, help='the scout id')
    ap.add_argument('--mailbox', required=True, help='folder with one message per file')
    ap.add_argument('--batch', type=int, default=100, help=f'items per request (1-{BATCH_MAX})')
    ap.add_argument('--interval', type=float, default=60.0, help='seconds between polls')
    ap.add_argument('--once', action='store_true', help='poll once and exit')
    args = ap.parse_args(argv)
    if not args.key:
        ap.error('a service key is needed: --key or STEWARD_KEY')
    if not 1 <= args.batch <= BATCH_MAX:
        ap.error(f'--batch must be 1 to {BATCH_MAX}')
    api = Steward(args.url, args.key)
    while True:
        try:
            print(json.dumps(poll(api, args.scout, args.mailbox, args.batch)), flush=True)
        except (RuntimeError, OSError) as e:
            if args.once:
                print(json.dumps({'error': str(e)}), flush=True)
                return 1
            print(json.dumps({'error': str(e), 'retry_in_s': args.interval}), flush=True)
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == '__main__':
    sys.exit(main())
