"""Corpus -> scored shards -> index, the one way through: `bftcore score` and `bftcore index` call it,
and so can any library caller (the demo) with corpus files or `Record`s.

    score_records(records, base, aligned, out_dir)   score into Parquet shards (resumable)
    score_files(paths, base, aligned, out_dir)       read a corpus, then score_records
    index_corpus(inputs, out)                        corpus files, records or scored shards -> .bfti

Under torchrun (`dist.init()` called first) every rank scores its share of the shards, aggregates
its share into a partial index, and rank 0 merges the partials; the other ranks get None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bftcore import dist
from bftcore.corpus import ReadOptions, ReadReport, Record, read_corpus
from bftcore.errors import BadInput
from bftcore.index import Index, build, merge
from bftcore.progress import Progress
from bftcore.score import ScoreConfig, ScoreSummary
from bftcore.shards import is_shard, shard_paths

DEFAULT_READ, DEFAULT_SCORE = ReadOptions(), ScoreConfig()  # frozen: shared as defaults
TOO_LONG = ("skip", "refuse")  # prompts that do not fit the context: skipped and counted, or refused


@dataclass(frozen=True)
class Indexed:
    """What `index_corpus` made and found."""

    index: Index
    read: ReadReport | None  # what reading the corpus found; None: given records or scored shards
    score: ScoreSummary | None  # this rank's scoring; None: given scored shards


def score_records(records: Sequence[Record], base: str | Path, aligned: str | Path, out_dir: str | Path, *,
                  score: ScoreConfig = DEFAULT_SCORE, too_long: str = "skip", device: str = "auto",
                  progress: Progress | None = None) -> ScoreSummary:
    """Score `records` with both models into shards under `out_dir` (a rerun skips finished ones).
    Under torchrun each rank scores its own shards, and returns once every rank's are written;
    the summary counts this rank's."""
    from bftcore.models import resolve_device, resolve_model
    from bftcore.score import score_corpus

    if too_long not in TOO_LONG:
        raise BadInput(f"too_long must be one of {', '.join(TOO_LONG)}, not {too_long!r}")
    base, aligned = resolve_model(base), resolve_model(aligned)
    if too_long == "refuse":
        _refuse_too_long(records, aligned, score)
    rank, world = dist.rank_world()
    summary = score_corpus(records, base, aligned, out_dir, score, device=dist.local_device(str(resolve_device(device))),
                           progress=progress, rank=rank, world_size=world)
    dist.barrier()  # every rank's shards are written
    return summary


def score_files(corpus: Sequence[str | Path], base: str | Path, aligned: str | Path, out_dir: str | Path, *,
                read: ReadOptions = DEFAULT_READ, score: ScoreConfig = DEFAULT_SCORE, too_long: str = "skip",
                device: str = "auto", progress: Progress | None = None) -> tuple[ReadReport, ScoreSummary]:
    """Read corpus files and directories, then `score_records`."""
    records, report = read_corpus(corpus, read)
    return report, score_records(records, base, aligned, out_dir, score=score, too_long=too_long,
                                 device=device, progress=progress)


def index_corpus(inputs: Sequence[str | Path] | Sequence[Record], out: str | Path, *,
                 base: str | Path | None = None, aligned: str | Path | None = None,
                 shards_dir: str | Path | None = None, read: ReadOptions = DEFAULT_READ,
                 score: ScoreConfig = DEFAULT_SCORE, too_long: str = "skip", device: str = "auto",
                 progress: Progress | None = None, unverified: bool = False) -> Indexed | None:
    """The base-favored-token index of `inputs` written to `out` (.bfti): `Record`s, or corpus files
    and directories, are scored into `shards_dir` (default: OUT.shards/) with `base` and `aligned`
    first; scored shards (files, or directories of them, whatever their names) are aggregated as
    they are (`unverified`: also IPC shards without their checksum files). None on the ranks other
    than 0 under torchrun."""
    out = Path(out)
    records, paths = _records_or_paths(inputs)
    shards = _given_shards(paths) if paths else None
    report: ReadReport | None = None
    summary: ScoreSummary | None = None
    if shards is None:
        if not base or not aligned:
            raise BadInput("--base and --aligned are needed to score a corpus (or give a directory of scored shards)")
        where = Path(shards_dir) if shards_dir is not None else out.with_name(out.name + ".shards")
        if records:
            summary = score_records(records, base, aligned, where, score=score, too_long=too_long,
                                    device=device, progress=progress)
        else:
            report, summary = score_files(paths, base, aligned, where, read=read, score=score,
                                          too_long=too_long, device=device, progress=progress)
        shards = shard_paths(where)
    index = aggregate(shards, out, progress=progress, unverified=unverified)
    return None if index is None else Indexed(index, report, summary)


def aggregate(shards: Sequence[Path], out: Path, *, progress: Progress | None = None,
              unverified: bool = False) -> Index | None:
    """Build the index of `shards`. Under torchrun each rank builds a partial index of its share
    and rank 0 merges them into `out` (the others get None)."""
    rank, world = dist.rank_world()
    if world == 1:
        return build(shards, out, progress=progress, unverified=unverified)
    if not shards:  # every rank knows: refused everywhere, no rank left waiting
        raise BadInput("no scored shards to index")
    ranks = min(world, len(shards))  # a rank without shards writes no partial
    part = out.with_name(f".{out.name}.rank{rank}")
    if rank < ranks:
        build(shards[rank::world], part, progress=progress, unverified=unverified)
    dist.barrier()  # every partial is written
    if rank != 0:
        return None
    parts = [out.with_name(f".{out.name}.rank{r}") for r in range(ranks)]
    index = merge(parts, out)
    for p in parts:
        p.unlink()
    return index


def _given_shards(paths: Sequence[Path]) -> list[Path] | None:
    """The scored shards that `paths` name (shard files, or directories of them), sorted; None when
    they name a corpus. BadInput when some name shards and others a corpus."""
    found = {p: shard_paths(p) if p.is_dir() else [p] if is_shard(p) else [] for p in paths}
    shards = [p for p in paths if found[p]]
    corpus = [p for p in paths if not found[p]]
    if shards and corpus:
        raise BadInput(f"{shards[0]} holds scored shards but {corpus[0]} is a corpus: index each kind "
                       "on its own, then 'bftcore merge' the indexes")
    return sorted(s for p in shards for s in found[p]) if shards else None


def _refuse_too_long(records: Sequence[Record], aligned: Path, score: ScoreConfig) -> None:
    """BadInput before any scoring when a prompt does not fit the context (`too_long="refuse"`)."""
    from transformers import AutoConfig

    from bftcore.chat import prompt_ids
    from bftcore.models import load_tokenizer

    tok = load_tokenizer(aligned)
    context = score.max_length or getattr(AutoConfig.from_pretrained(aligned, local_files_only=True),
                                          "max_position_embeddings", None) or 4096
    over = [(r, n) for r in records
            if (n := len(prompt_ids(tok, r.messages(), thinking=score.thinking))) >= context]
    if over:
        first, n = over[0]
        raise BadInput(f"{first.source}: a prompt of {n} tokens leaves no room in the context of {context} "
                       f"({len(over)} such records); --too-long skip skips and counts them")


def _records_or_paths(inputs: Sequence[str | Path] | Sequence[Record]) -> tuple[list[Record], list[Path]]:
    records = [x for x in inputs if isinstance(x, Record)]
    paths = [Path(x) for x in inputs if not isinstance(x, Record)]
    if records and paths:
        raise BadInput("give records or paths to index, not both")
    return records, paths
