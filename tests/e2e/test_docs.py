"""The documentation stays true to the code: docs/configuration.md is exactly what the
binary prints for `steward config --markdown`, and every relative link in the Markdown
files points at a file that exists (and, with #anchor, at a heading in it)."""
import glob
import os
import re
import subprocess

from harness.steward import ROOT, binary

REGENERATE = 'build it, then run: ./build/steward config --markdown > docs/configuration.md'


def test_configuration_md_is_generated_from_the_config_table():
    r = subprocess.run([binary(), 'config', '--markdown'], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr.decode(errors='replace')
    assert b'| `STEWARD_DATABASE_URL` |' in r.stdout
    with open(os.path.join(ROOT, 'docs', 'configuration.md'), 'rb') as f:
        committed = f.read()
    if committed != r.stdout:
        want, have = r.stdout.decode().splitlines(), committed.decode().splitlines()
        first = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b),
                     min(len(want), len(have)))
        raise AssertionError(
            'docs/configuration.md differs from `steward config --markdown` at line '
            f'{first + 1}:\n  binary:    {want[first] if first < len(want) else "(end)"!r}\n'
            f'  committed: {have[first] if first < len(have) else "(end)"!r}\n'
            'It is generated from the table in src/core/config.c; do not edit it by hand. '
            + REGENERATE)


def test_every_setting_the_binary_reads_is_documented():
    """Every STEWARD_* name in config.c's table has a row in the generated table."""
    with open(os.path.join(ROOT, 'src', 'core', 'config.c')) as f:
        names = set(re.findall(r'\{"(STEWARD_[A-Z0-9_]+)", K_', f.read()))
    assert len(names) > 30
    with open(os.path.join(ROOT, 'docs', 'configuration.md')) as f:
        rows = set(re.findall(r'^\| `(STEWARD_[A-Z0-9_]+)` \|', f.read(), re.M))
    assert names == rows, (sorted(names - rows), sorted(rows - names))


def markdown_files():
    files = [os.path.join(ROOT, 'README.md')]
    files += sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
    for extra in ('tests/RELIABILITY.md', 'docker/README.md', 'bench/README.md',
                  'clients/js/README.md'):
        files.append(os.path.join(ROOT, extra))
    return files


FENCE = re.compile(r'^\s*(```|~~~)')
LINK = re.compile(r'\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')


def prose_lines(text):
    """Lines outside fenced code blocks, with inline code spans blanked out."""
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield re.sub(r'`[^`]*`', '', line)


def slug(heading):
    """The anchor GitHub gives a heading: its text without markup, lower case, without
    punctuation except '-' and '_', spaces turned into '-'."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)
    text = text.replace('`', '').strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path):
    seen = {}
    out = set()
    with open(path) as f:
        text = f.read()
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        m = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
        if inside or not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f'{base}-{n}')
    return out


def broken_links(path):
    broken = []
    with open(path) as f:
        text = f.read()
    for line in prose_lines(text):
        for target in LINK.findall(line):
            if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition('#')
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) \
                if file_part else path
            if not os.path.exists(dest):
                broken.append(f'{target}: no file {os.path.relpath(dest, ROOT)}')
            elif anchor and dest.endswith('.md') and anchor not in anchors(dest):
                broken.append(f'{target}: no heading #{anchor} in {os.path.relpath(dest, ROOT)}')
    return broken


def test_slug_follows_github():
    assert slug('Planning: stagnation evaluation, guarded actions, outcomes and retries') == \
        'planning-stagnation-evaluation-guarded-actions-outcomes-and-retries'
    assert slug('Re-classification (PATCH)') == 're-classification-patch'
    assert slug('/metrics') == 'metrics'
    assert slug('Device protocol (`ws://host/v1`)') == 'device-protocol-wshostv1'


def test_every_relative_link_points_at_something():
    problems = []
    checked = 0
    for path in markdown_files():
        assert os.path.exists(path), path
        with open(path) as f:
            checked += sum(len(LINK.findall(line)) for line in prose_lines(f.read()))
        problems += [f'{os.path.relpath(path, ROOT)}: {b}' for b in broken_links(path)]
    assert checked > 20, 'the link pattern found almost no links: is it broken?'
    assert not problems, 'broken links:\n' + '\n'.join(problems)


def test_the_link_check_catches_a_broken_link(tmp_path):
    doc = tmp_path / 'x.md'
    doc.write_text('# Title\n\n[ok](#title) [gone](missing.md) [bad](#nowhere)\n'
                   '`[code](not-a-link.md)`\n```\n[fenced](also-not.md)\n```\n')
    found = broken_links(str(doc))
    assert len(found) == 2, found
    assert 'missing.md' in found[0] and '#nowhere' in found[1]


def test_no_document_cites_an_outside_specification():
    """The repository stands alone: documents cite docs/ sections, not a spec file."""
    offenders = []
    for path in markdown_files():
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if re.search(r'\bSPEC\b|SPEC\.md', line):
                    offenders.append(f'{os.path.relpath(path, ROOT)}:{n}: {line.strip()}')
    assert not offenders, '\n'.join(offenders)
