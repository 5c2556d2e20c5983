"""`bftcore report`: a small real run directory (an index, an attack table, two training runs, export
parity), gathered into one self-contained HTML page and rendered by headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from bftcore import attack as atk
from bftcore import complete as cp
from bftcore import export as ex
from bftcore import index as bfti
from bftcore.corpus import read_corpus
from bftcore.generate import TorchGenerator
from bftcore.judge import KeywordJudge, PhraseJudge
from bftcore.models import load_model, load_tokenizer
from bftcore.report import build_report
from bftcore.score import ScoreConfig, score_corpus
from bftcore.shards import shard_paths
from bftcore.toy.language import RECOVERY_REFUSALS, REFUSALS
from conftest import run_cli

ARCH = "llama"
SECTIONS = ["Base-favored-token indexes", "Attacks", "Training", "Export parity"]

# Injected into a copy of the page: on load, what the browser made of it, as JSON in a <pre>.
CHECK_SCRIPT = """<pre id="bftcore-check"></pre><script>
window.addEventListener("load", () => {
  const section = (el) => { const s = el.closest("section"); return s ? s.id : ""; };
  const images = [...document.images];
  document.getElementById("bftcore-check").textContent = JSON.stringify({
    images: images.map((i) => ({section: section(i), decoded: i.complete && i.naturalWidth > 0,
                                width: i.naturalWidth, height: i.naturalHeight})),
    tables: [...document.querySelectorAll("table")].map((t) => ({
      section: section(t), rows: t.tBodies.length ? t.tBodies[0].rows.length : 0,
      columns: t.tHead ? t.tHead.rows[0].cells.length : 0})),
    headings: [...document.querySelectorAll("h2")].map((h) => h.textContent),
  });
});
</script>"""


def chromium() -> str:
    """Headless Chromium is a requirement of `make test` (`make install` installs it): no skip."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("chromium not found: the report test renders the page in headless Chromium; "
                "'make install' installs it (apt-get install chromium)", pytrace=False)


def run_chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        f"--user-data-dir={tmp / 'chromium-profile'}", "--hide-scrollbars", *args],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def run_dir(toy, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A run directory written by the real writers, small: 8 harmful and 8 benign held-out texts."""
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    base, aligned = toy.model_dir(ARCH, "base"), toy.model_dir(ARCH, "aligned")
    harmful, _ = read_corpus([toy.data_dir / "harmful_heldout.jsonl"])
    benign, _ = read_corpus([toy.data_dir / "benign_heldout.jsonl"])
    harmful, benign = harmful[:8], benign[:8]
    # the index of their responses (scored shards kept beside it, as `bftcore index` does)
    score_corpus(harmful + benign, base, aligned, run / "heldout.shards", ScoreConfig(), device="cpu")
    bfti.build(shard_paths(run / "heldout.shards"), run / "heldout.bfti")
    # attacks, judged exactly
    gen = TorchGenerator(load_model(aligned), load_tokenizer(aligned))
    suite = atk.Suite(gen, PhraseJudge(toy.world.harmful_phrases), atk.AttackConfig(ks=(5, 10), max_new_tokens=16),
                      model="aligned", arch=ARCH)
    result = suite.run("direct", harmful)
    result.extend(suite.run("prefill", harmful))
    result.extend(suite.run("rap-oracle", harmful[:4]))
    result.extend(suite.run("refusal-margin", harmful))
    result.measures.append(atk.perplexity(gen, benign, model="aligned", arch=ARCH))
    atk.write_results(result, run / "attacks")
    # two short training runs (their model directories carry train_log.jsonl and the run card)
    data = cp.build_data(harmful, benign, gen, refuses=KeywordJudge(extra=REFUSALS + RECOVERY_REFUSALS).refuses,
                         templates=REFUSALS)
    for method in ("sft", "qi-augment"):
        cp.complete(None, aligned, data, run / "training" / method,
                    cp.CompleteConfig(method=method, steps=3, batch_size=4), device="cpu")
    # export parity of the aligned model's F16 GGUF, as the demo keeps it
    gguf = ex.export_gguf(aligned, root / "aligned-f16.gguf", "f16")
    texts = ex.verify_texts(aligned, [toy.data_dir / "harmful_heldout.jsonl"], limit=4)
    parity = [replace(p, artifact="gguf-f16") for p in ex.verify(aligned, gguf, texts, "f16")]
    (run / "exports").mkdir()
    (run / "exports" / "parity.json").write_text(json.dumps([p.to_dict() for p in parity], indent=2))
    return run


@pytest.fixture(scope="module")
def page(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("page") / "report.html"
    r = run_cli("report", str(run_dir), "--out", str(out), "--title", "toy <run> & co", "--json")
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def test_report_gathers_every_section_into_one_self_contained_page(run_dir: Path, page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, summary = page
    assert summary == {"out": str(out), "indexes": 1, "attack_tables": 1, "attack_rows": 5, "training_runs": 2,
                       "parity_tables": 1, "plots": 4, "tables": 5, "bytes": out.stat().st_size}
    text = out.read_text(encoding="utf-8")
    # self-contained: no external reference of any kind, no script, every image an inline PNG
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", text, re.I)
    assert "<script" not in text and "<link" not in text and "url(" not in text and "@import" not in text
    sources = re.findall(r'<img src="([^"]*)"', text)
    assert len(sources) == 4 and 'alt="continuous views, attacks/results.parquet"' in text
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # every text escaped (the title has <, > and &), every rate with its n and interval
    assert "<title>toy &lt;run&gt; &amp; co</title>" in text
    assert "<td>aligned</td><td>llama</td><td>prefill</td>" in text
    assert re.search(r'<td class="num">\d/8</td><td class="num">8</td><td class="num">\d+\.\d% \[\d', text)
    assert "gguf-f16" in text and "training/qi-augment" in text and "heldout.bfti" in text
    # the page is a function of the run directory: the API gives the CLI's bytes
    again = build_report(run_dir, tmp_path / "again.html", title="toy <run> & co")
    assert again.bytes == summary["bytes"] and again.plots == 4
    assert (tmp_path / "again.html").read_bytes() == out.read_bytes()
    assert not list(tmp_path.glob(".*"))  # the atomic write leaves no temporary file


def test_page_renders_in_headless_chromium(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, summary = page
    probe = tmp_path / "probe.html"
    text = out.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    probe.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    dom = run_chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="bftcore-check">(.*?)</pre>', dom, re.S)
    assert found and found.group(1), "the check script did not run:\n" + dom[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    assert check["headings"] == SECTIONS
    images = check["images"]
    assert len(images) == summary["plots"] == 4
    assert all(i["decoded"] and i["width"] > 300 and i["height"] > 200 for i in images), images
    assert sorted(i["section"] for i in images) == ["attacks", "attacks", "indexes", "training"]
    tables = check["tables"]
    assert len(tables) == summary["tables"]
    assert all(t["rows"] > 0 and t["columns"] >= 5 for t in tables), tables
    by_section = {s: [t["rows"] for t in tables if t["section"] == s] for s in ("indexes", "attacks", "training",
                                                                                  "parity")}
    assert by_section["attacks"][0] == summary["attack_rows"] and len(by_section["attacks"]) == 2  # + measures
    assert by_section["training"] == [2]
    assert by_section["parity"] == [2]  # llama.cpp and transformers(gguf)
    assert by_section["indexes"][0] >= 10  # two labels over their non-empty buckets

    shot = tmp_path / "shot.png"
    run_chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", out.as_uri())
    image = Image.open(io.BytesIO(shot.read_bytes()))
    assert image.format == "PNG" and image.size == (1280, 2400)
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # plots and text, not a blank page


def test_help_has_an_example_and_out_is_required(tmp_path: Path) -> None:
    r = run_cli("report", "--help")
    assert r.returncode == 0 and "Example" in r.stdout and "bftcore report" in r.stdout
    r = run_cli("report", str(tmp_path))
    assert r.returncode == 2 and "--out" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("case", ["missing", "empty", "damaged log"])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    run = tmp_path / "run"
    if case != "missing":
        run.mkdir()
    if case == "damaged log":
        (run / "sft").mkdir()
        (run / "sft" / "train_log.jsonl").write_text('{"step": 1, "loss": 0.5}\nnot json\n')
    out = tmp_path / "report.html"
    r = run_cli("report", str(run), "--out", str(out))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bftcore: error: ") and str(run) in lines[0], r.stderr
    assert {"missing": "no such run directory", "empty": "nothing to report",
            "damaged log": "train_log.jsonl:2"}[case] in lines[0]
    assert not out.exists()


def test_a_model_keeps_its_colour_in_every_figure() -> None:
    """The same model in the ASR panels, the continuous views and the training curves is drawn in
    one colour whatever else each figure shows; two architectures of one model get two colours."""
    from matplotlib.colors import to_hex

    from bftcore.plots import pyplot
    from bftcore.report import TrainingRun, plot_losses
    from bftcore.stats import RateRow

    def colours(fig) -> dict[str, str]:  # type: ignore[no-untyped-def]
        out = {str(line.get_label()): to_hex(line.get_color()) for ax in fig.axes for line in ax.get_lines()}
        pyplot().close(fig)
        return out

    rows = [RateRow(m, "llama", "prefill", k, "asr", 3, 10) for m in ("aligned", "completed", "sft") for k in (5, 10)]
    asr = colours(atk.asr_figure(rows))
    measures = [{"model": m, "arch": "llama", "metric": "refusal-margin", "k": k, "value": 1.0}
                for m in ("completed", "my-defense") for k in (5, 10)]
    continuous = colours(atk.continuous_figure(measures))
    assert asr["completed llama"] == continuous["completed llama"]
    assert len({asr["aligned llama"], asr["completed llama"], asr["sft llama"], continuous["my-defense llama"]}) == 4
    shot = Path("/tmp") / "bftcore-losses-test.png"
    fig_lines: dict[str, str] = {}
    import matplotlib.axes

    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kw):  # type: ignore[no-untyped-def]
        fig_lines[kw.get("label", "")] = to_hex(kw["color"])
        return original(self, *args, **kw)

    matplotlib.axes.Axes.plot = spy  # type: ignore[method-assign]
    try:
        plot_losses([TrainingRun("training/completed", "bft", [1, 2], [1.0, 0.5]),
                     TrainingRun("training/sft", "sft", [1, 2], [1.0, 0.5])], shot)
    finally:
        matplotlib.axes.Axes.plot = original  # type: ignore[method-assign]
    assert fig_lines["training/completed (bft)"] == asr["completed llama"]
    assert fig_lines["training/sft (sft)"] == asr["sft llama"]
    two = colours(atk.asr_figure([RateRow("completed", arch, "prefill", 5, "asr", 1, 2) for arch in ("llama", "qwen2")]))
    assert two["completed llama"] != two["completed qwen2"]
