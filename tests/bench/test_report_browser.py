"""The HTML report as a browser renders it: headless Chromium loads the self-contained page, and the test
reads back the rendered cell text, the computed bold / underline of the best / second-best cells, the claims'
verdicts above the table (text and colour), and saves a screenshot (kept under pytest's tmp dir). Skips, saying why, where no Chromium is installed (.ci/run installs
Debian's chromium)."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from bench import reports as rp
from bench.reports import claims as cl

CHROMIUM = next((p for p in (os.environ.get("BENCH_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), shutil.which("google-chrome"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")

# Reads the computed style of every result cell after layout and writes it into the DOM for --dump-dom.
PROBE = """<script>
document.addEventListener('DOMContentLoaded', () => {
  const out = [];
  for (const td of document.querySelectorAll('#results tbody td:not(.row)')) {
    const v = td.querySelector('span.v') || td;
    out.push({text: td.innerText.trim(), weight: getComputedStyle(v.firstElementChild || v).fontWeight,
              underline: getComputedStyle(v.firstElementChild || v).textDecorationLine.includes('underline'),
              cls: td.className, visible: td.getBoundingClientRect().width > 0});
  }
  const claims = [];
  for (const tr of document.querySelectorAll('#claims tbody tr')) {
    const v = tr.querySelector('td.verdict');
    claims.push({id: tr.dataset.claim, verdict: v.innerText.trim(), color: getComputedStyle(v).color,
                 above: tr.getBoundingClientRect().bottom < document.getElementById('results').getBoundingClientRect().top});
  }
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({cells: out, claims: claims});
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args: str, profile: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def frame():
    """Three defenses and 'Before' on one row (two seeds each), plus a row with a missing cell."""
    rows, i = [], 0
    vals = {"none": (0.99, 0.90), "a": (0.10, 0.70), "b": (0.20, 0.88), "c": (0.30, 0.80)}
    for attack in ("badnets", "blend"):
        for defense, (asr, ba) in vals.items():
            if attack == "blend" and defense == "c":
                continue                                             # -> '—' with the footnote
            for seed in (0, 1):
                rows.append({"sweep": "browser", "cell": i, "scale": "mini", "profile": "mini", "dataset": "cifar10",
                             "model": "m", "recipe": "r", "attack": attack, "defense": defense,
                             "clean_ratio": 0.05, "seed": seed, "state": "done", "asr": asr + 0.02 * seed,
                             "ba": ba + 0.02 * seed, "key": f"k{i}", "config": "{}"})
                i += 1
    return pd.DataFrame(rows)


SPEC = rp.spec_from_dict({"name": "browser", "title": "Browser & <render> test", "rows": ["dataset", "attack"],
                          "groups": [{"label": "Before", "where": {"defense": "none"}, "rank": False},
                                     {"label": "A", "where": {"defense": "a"}},
                                     {"label": "B", "where": {"defense": "b"}},
                                     {"label": "C", "where": {"defense": "c"}}],
                          "labels": {"dataset": {"cifar10": "CIFAR-10"}, "attack": {"badnets": "BadNets",
                                                                                      "blend": "Blend"}}})


def _claim(cid, check, where=None):
    return cl.Claim(id=cid, source="test", quote=f"the claim {cid}", check=check, for_each=("attack",),
                    where=where or {})


# A is the lowest ASR of A and B on both rows (holds), B is not (fails), C has no Blend cell (not testable)
CLAIMS = [_claim("a-best", {"kind": "rank", "metric": "asr", "subject": {"defense": "a"}, "among": {"defense": ["a", "b"]}}),
          _claim("b-best", {"kind": "rank", "metric": "asr", "subject": {"defense": "b"}, "among": {"defense": ["a", "b"]}}),
          _claim("c-low", {"kind": "threshold", "metric": "asr", "subject": {"defense": "c"}, "op": "<", "value": 0.5},
                 where={"attack": "blend"})]


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts, self.probe, self._in_probe = [], "", False

    def handle_starttag(self, tag, attrs):
        self._in_probe = dict(attrs).get("id") == "probe"

    def handle_endtag(self, tag):
        self._in_probe = False

    def handle_data(self, data):
        if self._in_probe:
            self.probe += data
        else:
            self.parts.append(data)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser")
    html = rp.render_html(rp.build_table(frame(), SPEC), claims=cl.evaluate(CLAIMS, frame()))
    report = out / "report.html"
    report.write_text(html)
    probed = out / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    return out, report, probed


@pytest.fixture(scope="module")
def dom(page):
    """The probed page after Chromium laid it out: its text and the probe's JSON (cells, claims)."""
    out, _report, probed = page
    run = chromium("--dump-dom", "--virtual-time-budget=5000", probed.as_uri(), profile=out / "profile-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    parser = _Text()
    parser.feed(run.stdout)
    return parser


def test_chromium_renders_cells_marks_and_footnote(dom):
    parser = dom
    text = " ".join(" ".join(parser.parts).split())
    assert "Browser & <render> test" in text                    # the escaped title renders as written
    assert "mean ± std over seeds (n = 2 per cell" in text and rp.MISSING_NOTE in text
    probe = json.loads(parser.probe)
    cells = probe["cells"]
    assert len(cells) == 2 * 4 * 2 and all(c["visible"] for c in cells)
    # row BadNets: Before, A, B, C x (ASR, BA); ASR lower is better, BA higher
    badnets = [c["text"] for c in cells[:8]]
    assert badnets == ["100.00 ± 1.41", "91.00 ± 1.41", "11.00 ± 1.41", "71.00 ± 1.41",
                       "21.00 ± 1.41", "89.00 ± 1.41", "31.00 ± 1.41", "81.00 ± 1.41"]
    bold = [int(c["weight"]) >= 600 for c in cells[:8]]
    under = [c["underline"] for c in cells[:8]]
    assert bold == [False, False, True, False, False, True, False, False]     # A's ASR, B's BA
    assert under == [False, False, False, False, True, False, False, True]    # B's ASR, C's BA
    # row Blend: C missing -> '—†'; with two ranked candidates only the best is marked
    blend = cells[8:]
    assert [c["text"] for c in blend[6:]] == ["—†", "—†"] and all("missing" in c["cls"] for c in blend[6:])
    assert [int(c["weight"]) >= 600 for c in blend] == [False, False, True, False, False, True, False, False]
    assert not any(c["underline"] for c in blend)


def test_chromium_shows_the_claims_verdicts_above_the_table(dom):
    claims = json.loads(dom.probe)["claims"]
    assert [(c["id"], c["verdict"]) for c in claims] == [("a-best", "holds"), ("b-best", "fails"),
                                                           ("c-low", "not testable")]
    assert all(c["above"] for c in claims)
    colours = {c["verdict"]: c["color"] for c in claims}
    assert colours["holds"] == "rgb(26, 127, 55)" and colours["fails"] == "rgb(180, 35, 24)"


def test_chromium_screenshot_of_the_report(page):
    out, report, _probed = page
    shot = out / "report.png"
    run = chromium(f"--screenshot={shot}", "--window-size=1400,500", report.as_uri(), profile=out / "profile-shot")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 500) and len(data) > 10_000
    from PIL import Image
    with Image.open(shot) as img:
        gray = img.convert("L")
        dark = sum(gray.histogram()[:128])
    assert dark > 2000                                           # text was drawn, not a blank page
