"""Scoring: padding-correct batches, the shard schema, resumption, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from bftcore.corpus import Record, read_corpus
from bftcore.errors import BadInput
from bftcore.score import ScoreConfig, score_corpus
from bftcore.shards import COLUMNS, read_shard_table, shard_meta, shard_paths


@pytest.fixture(scope="module")
def records(toy) -> list[Record]:  # type: ignore[no-untyped-def]
    h, _ = read_corpus([toy.data_dir / "harmful_heldout.jsonl"])
    b, _ = read_corpus([toy.data_dir / "benign_heldout.jsonl"])
    # a spread of lengths: cut some responses short
    cut = [Record(r.id, r.prompt, r.response[: 20 + 7 * i] if r.response else None, r.label,
                  r.source) for i, r in enumerate(h[:12])]
    return cut + h[12:20] + b[:12]


def models(toy, arch: str = "llama") -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    return toy.model_dir(arch, "base"), toy.model_dir(arch, "aligned")


def read(out: Path) -> pa.Table:
    return pa.concat_tables([read_shard_table(p, COLUMNS) for p in shard_paths(out)])


def test_batched_equals_batch_size_one(toy, records: list[Record], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, aligned = models(toy)
    score_corpus(records, base, aligned, tmp_path / "big", ScoreConfig(batch_tokens=100_000))
    score_corpus(records, base, aligned, tmp_path / "one", ScoreConfig(batch_tokens=1))
    big, one = read(tmp_path / "big"), read(tmp_path / "one")
    assert big.num_rows == one.num_rows > 0
    for col in ("doc_id", "pos", "token", "label", "topk_token"):
        assert big.column(col).to_pylist() == one.column(col).to_pylist(), col
    # float32: within 1e-5, relative to the value's size for log-probs beyond -1
    for col in ("lp_base", "lp_aligned", "kl", "bf_mass", "retain"):
        np.testing.assert_allclose(big.column(col).to_numpy(), one.column(col).to_numpy(),
                                   rtol=1e-5, atol=1e-5)
    for col in ("topk_lp_base", "topk_lp_aligned"):
        np.testing.assert_allclose(big.column(col).combine_chunks().flatten().to_numpy(),
                                   one.column(col).combine_chunks().flatten().to_numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_shard_schema_and_statistics(toy, records: list[Record], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, aligned = models(toy)
    s = score_corpus(records, base, aligned, tmp_path / "s", ScoreConfig(k=7, shard_size=10))
    assert (s.shards, s.shards_scored, s.docs) == (4, 4, len(records))
    t = read(tmp_path / "s")
    types = {f.name: str(f.type) for f in t.schema}
    assert list(types) == ["doc_id", "pos", "token", "lp_base", "lp_aligned", "kl", "bf_mass",
                           "retain", "label", "topk_token", "topk_lp_base", "topk_lp_aligned"]
    assert (types["doc_id"], types["pos"], types["token"], types["kl"]) == \
        ("uint64", "uint32", "uint32", "float")
    assert "uint32" in types["topk_token"] and "float" in types["topk_lp_base"]
    meta = shard_meta(shard_paths(tmp_path / "s")[0])
    assert {"base", "aligned", "tokenizer_hash", "k", "tau", "vocab_size"} <= set(meta)
    assert meta["k"] == 7 and meta["base"] == str(base.resolve())
    # positions count 1..len(response) per document
    pos, doc = t.column("pos").to_numpy(), t.column("doc_id").to_numpy()
    first = np.r_[True, doc[1:] != doc[:-1]]
    assert np.all(pos[first] == 1) and np.all(np.diff(pos)[~first[1:]] == 1)
    # the statistics are what their definitions say, recomputed from the stored top-k
    lb = t.column("topk_lp_base").combine_chunks().flatten().to_numpy().reshape(-1, 7)
    la = t.column("topk_lp_aligned").combine_chunks().flatten().to_numpy().reshape(-1, 7)
    np.testing.assert_allclose(t.column("retain").to_numpy(),
                               np.minimum(np.exp(la), np.exp(lb)).sum(1), atol=1e-5)
    np.testing.assert_allclose(t.column("bf_mass").to_numpy(),
                               (np.exp(la) * (lb - la > 0)).sum(1), atol=1e-5)
    assert np.all(np.diff(lb, axis=1) <= 0)  # base top-k sorted
    # the realised token's log-prob is the top-k's where it is in the top-k
    tok = t.column("token").to_numpy()
    top = t.column("topk_token").combine_chunks().flatten().to_numpy().reshape(-1, 7)
    hit = top == tok[:, None]
    rows = hit.any(1)
    np.testing.assert_allclose(t.column("lp_base").to_numpy()[rows], lb[hit], atol=1e-6)


def test_statistics_equal_an_independent_float64_computation(toy, records: list[Record], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every column of a shard against the definitions, recomputed here in float64 from the two
    models' full-vocabulary distributions (one document at a time, no batching, no blocks)."""
    from bftcore.chat import prompt_ids, response_ids
    from bftcore.models import load_model, load_tokenizer

    base, aligned = models(toy)
    docs = records[:4] + records[-3:]
    k, tau = 6, 0.5
    score_corpus(docs, base, aligned, tmp_path / "s", ScoreConfig(k=k, tau=tau))
    t = read(tmp_path / "s")
    tok = load_tokenizer(aligned)
    mb, ma = load_model(base).double(), load_model(aligned).double()
    for doc_id, r in enumerate(docs):
        p, y = prompt_ids(tok, r.messages()), response_ids(tok, r.response or "", eos=False)
        ids = torch.tensor([p + y])
        with torch.no_grad():  # position i predicts token i + 1: the response's are len(p) - 1 ...
            lpb = torch.log_softmax(mb(input_ids=ids).logits[0, len(p) - 1:len(p) - 1 + len(y)], -1)
            lpa = torch.log_softmax(ma(input_ids=ids).logits[0, len(p) - 1:len(p) - 1 + len(y)], -1)
        target = torch.tensor(y)[:, None]
        top_lb, top = torch.topk(lpb, k, dim=-1)
        top_la = lpa.gather(-1, top)
        want = {"lp_base": lpb.gather(-1, target)[:, 0], "lp_aligned": lpa.gather(-1, target)[:, 0],
                "kl": (lpa.exp() * (lpa - lpb)).sum(-1),
                "retain": torch.minimum(top_la.exp(), top_lb.exp()).sum(-1),
                "bf_mass": (top_la.exp() * ((top_lb - top_la) > tau)).sum(-1)}
        rows = t.filter(pc.equal(t.column("doc_id"), doc_id))
        assert rows.column("pos").to_pylist() == list(range(1, len(y) + 1))
        assert rows.column("token").to_pylist() == y
        for name, value in want.items():
            np.testing.assert_allclose(rows.column(name).to_numpy(), value.numpy(), atol=2e-4, rtol=1e-4,
                                       err_msg=name)
        got_top = rows.column("topk_token").combine_chunks().flatten().to_numpy().reshape(-1, k)
        got_lb = rows.column("topk_lp_base").combine_chunks().flatten().to_numpy().reshape(-1, k)
        np.testing.assert_allclose(got_lb, top_lb.numpy(), atol=2e-4)
        # the same tokens, except where two base log-probs tie within float32's precision
        same = got_top == top.numpy()
        assert same.mean() > 0.99, (doc_id, same.mean())


def test_rerun_skips_finished_shards(toy, records: list[Record], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, aligned = models(toy)
    cfg = ScoreConfig(shard_size=10)
    score_corpus(records, base, aligned, tmp_path / "s", cfg)
    paths = shard_paths(tmp_path / "s")
    before = {p: p.read_bytes() for p in paths}
    again = score_corpus(records, base, aligned, tmp_path / "s", cfg)
    assert again.shards_scored == 0
    paths[1].unlink()
    (tmp_path / "s" / ".shard-00002.arrow.tmp-999").write_bytes(b"half a shard")
    third = score_corpus(records, base, aligned, tmp_path / "s", cfg)
    assert third.shards_scored == 1
    assert {p: p.read_bytes() for p in shard_paths(tmp_path / "s")} == before
    with pytest.raises(BadInput, match="other settings"):
        score_corpus(records, base, aligned, tmp_path / "s", ScoreConfig(shard_size=10, k=5))
    with pytest.raises(BadInput, match="other settings"):
        score_corpus(records[:-1], base, aligned, tmp_path / "s", cfg)


def test_models_with_different_tokenizers_are_refused(toy, records: list[Record], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadInput, match="do not share a tokenizer"):
        score_corpus(records, toy.model_dir("llama", "base"), toy.model_dir("qwen2", "aligned"),
                     tmp_path / "s")


def test_missing_responses_come_from_the_base_model(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recs = [Record("a", "How do I poison the orchard?", None, "harmful", "t:1"),
            Record("b", "How do I paint a clay pot?", None, "benign", "t:2")]
    base, aligned = models(toy)
    s = score_corpus(recs, base, aligned, tmp_path / "s", ScoreConfig(max_new_tokens=30))
    assert s.generated == 2 and s.docs == 2 and s.tokens == 60
    s = score_corpus(recs, base, aligned, tmp_path / "t", ScoreConfig(generate_missing=False))
    assert s.generated == 0 and s.docs == 0 and s.skipped_empty == 2


def test_long_documents_are_truncated_and_counted(toy, records: list[Record], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, aligned = models(toy)
    s = score_corpus(records[12:16], base, aligned, tmp_path / "s", ScoreConfig(max_length=40))
    t = read(tmp_path / "s")
    assert s.truncated == 4 and s.docs == 4
    assert s.tokens == t.num_rows < 4 * 40 and t.column("pos").to_numpy().max() < 40
    s = score_corpus(records[12:16], base, aligned, tmp_path / "t", ScoreConfig(max_length=5))
    assert s.skipped_too_long == 4 and s.docs == 0


def test_index_corpus_takes_records_or_their_shards(toy, records: list[Record], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The library's one way from records to an index (what the demo calls): scores into
    OUT.shards/, aggregates; the shards given back index the same."""
    from bftcore.pipeline import index_corpus

    base, aligned = models(toy)
    done = index_corpus(records, tmp_path / "r.bfti", base=base, aligned=aligned,
                        score=ScoreConfig(shard_size=10), device="cpu")
    assert done is not None and done.read is None and done.score is not None
    assert done.score.docs == len(records) and done.index.header["rows"] == done.score.tokens > 0
    assert len(shard_paths(tmp_path / "r.bfti.shards")) == 4
    again = index_corpus([tmp_path / "r.bfti.shards"], tmp_path / "s.bfti")
    assert again is not None and again.score is None
    assert again.index.header["rows"] == done.index.header["rows"]
    with pytest.raises(BadInput, match="leaves no room"):
        index_corpus(records, tmp_path / "t.bfti", base=base, aligned=aligned,
                     score=ScoreConfig(max_length=5), too_long="refuse")


def test_compiled_statistics_equal_the_eager_ones(toy, records: list[Record], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from bftcore.score import COMPILE_VOCAB, shard_stats, statistics_fn

    # auto compiles only where the vocabulary makes it pay
    assert statistics_fn("auto", COMPILE_VOCAB - 1) is shard_stats
    assert statistics_fn("auto", COMPILE_VOCAB) is not shard_stats
    assert statistics_fn("off", COMPILE_VOCAB) is shard_stats
    with pytest.raises(BadInput, match="compile must be one of"):
        statistics_fn("sometimes", 10)
    base, aligned = models(toy)
    with pytest.raises(BadInput, match="compile must be one of"):
        score_corpus(records, base, aligned, tmp_path / "bad", ScoreConfig(compile="sometimes"))
    score_corpus(records, base, aligned, tmp_path / "eager", ScoreConfig(compile="off"))
    score_corpus(records, base, aligned, tmp_path / "compiled", ScoreConfig(compile="on"))
    eager, compiled = read(tmp_path / "eager"), read(tmp_path / "compiled")
    assert eager.num_rows == compiled.num_rows > 0
    for name in ("topk_token", "token", "pos"):
        assert eager[name].equals(compiled[name]), name
    for name in ("lp_base", "lp_aligned", "kl", "bf_mass", "retain", "topk_lp_base", "topk_lp_aligned"):
        a, b = (np.asarray(pc.list_flatten(t[name]) if name.startswith("topk") else t[name]) for t in (eager, compiled))
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=name)
