"""Scoring: padding-correct batches, the shard schema, resumption, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bftcore.corpus import Record, read_corpus
from bftcore.errors import BadInput
from bftcore.score import ScoreConfig, score_corpus
from bftcore.shards import shard_paths


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
    return pa.concat_tables([pq.read_table(p) for p in shard_paths(out)])


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
    meta = json.loads(pq.read_schema(shard_paths(tmp_path / "s")[0]).metadata[b"bftcore"])
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
    assert np.all(t.column("kl").to_numpy() >= 0)
    assert np.all(t.column("lp_base").to_numpy() <= 0)
    # the realised token's log-prob is the top-k's where it is in the top-k
    tok = t.column("token").to_numpy()
    top = t.column("topk_token").combine_chunks().flatten().to_numpy().reshape(-1, 7)
    hit = top == tok[:, None]
    rows = hit.any(1)
    np.testing.assert_allclose(t.column("lp_base").to_numpy()[rows], lb[hit], atol=1e-6)


def test_rerun_skips_finished_shards(toy, records: list[Record], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, aligned = models(toy)
    cfg = ScoreConfig(shard_size=10)
    score_corpus(records, base, aligned, tmp_path / "s", cfg)
    paths = shard_paths(tmp_path / "s")
    before = {p: p.read_bytes() for p in paths}
    again = score_corpus(records, base, aligned, tmp_path / "s", cfg)
    assert again.shards_scored == 0
    paths[1].unlink()
    (tmp_path / "s" / ".shard-00002.parquet.tmp-999").write_bytes(b"half a shard")
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
