"""Generator backends for exported artifacts: the attack suite's interface (`bftcore.generate`) on
a GGUF file through llama.cpp, on an ONNX graph through onnxruntime, and on a llama.cpp server over
HTTP. The attacks run unchanged on each.

Token choice is the same everywhere: every backend hands its next-token log-probs to `pick`, which
takes the argmax, or samples from one seeded torch generator per row after temperature, top-k and
top-p, exactly as the PyTorch backend does. So a quantized artifact and its PyTorch source differ
only where their logits do (the server samples inside llama.cpp: its samples are its own).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bftcore.chat import prompt_ids
from bftcore.errors import BadInput
from bftcore.extras import require
from bftcore.generate import Decoding, filter_logits, length_batches

BACKENDS = ("auto", "torch", "llamacpp", "onnx", "server")


def pick(lp: np.ndarray, d: Decoding, gens: Sequence[torch.Generator] | None) -> list[int]:
    """One token per row of next-token log-probs: greedy, or seeded sampling (as TorchGenerator)."""
    if gens is None:
        return [int(i) for i in lp.argmax(-1)]
    t = torch.from_numpy(np.ascontiguousarray(lp, dtype=np.float32))
    probs = torch.softmax(filter_logits(t / d.temperature, d.top_k, d.top_p), -1)
    return [int(torch.multinomial(probs[r], 1, generator=g)) for r, g in enumerate(gens)]


def _generators(d: Decoding, seeds: Sequence[int]) -> list[torch.Generator] | None:
    return None if d.greedy else [torch.Generator().manual_seed(int(s)) for s in seeds]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# ---- llama.cpp --------------------------------------------------------------------------------
class GGUFTokenizer:
    """The tokenizer inside a GGUF file, through llama.cpp, with the slice of the transformers
    tokenizer surface the attack suite uses. Attacking a GGUF this way tests the deployed
    tokenizer too, not a copy of the original."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        meta = llm.metadata
        self.chat_template = meta.get("tokenizer.chat_template")
        self.bos_token_id = _int_or_none(meta.get("tokenizer.ggml.bos_token_id"))
        self.eos_token_id = _int_or_none(meta.get("tokenizer.ggml.eos_token_id"))
        self.pad_token_id = _int_or_none(meta.get("tokenizer.ggml.padding_token_id"))
        self.bos_token = self._piece(self.bos_token_id)
        self.eos_token = self._piece(self.eos_token_id)
        self.pad_token = self._piece(self.pad_token_id)

    def _piece(self, i: int | None) -> str | None:
        return None if i is None else self.llm.detokenize([i], special=True).decode("utf-8", "replace")

    def __len__(self) -> int:
        return int(self.llm.n_vocab())

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        # special=True: special tokens written in the text are parsed, as transformers does
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True))

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        raw = self.llm.detokenize([int(i) for i in ids], special=not skip_special_tokens)
        return raw.decode("utf-8", "replace")

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = False, **kw: Any) -> Any:
        from transformers.utils.chat_template_utils import render_jinja_template

        if not self.chat_template:
            raise BadInput("this GGUF file has no tokenizer.chat_template")
        # (rendered texts, generation indices); transformers annotates it as str
        rendered: Any = render_jinja_template([messages], chat_template=self.chat_template,
                                              add_generation_prompt=add_generation_prompt,
                                              bos_token=self.bos_token, eos_token=self.eos_token,
                                              pad_token=self.pad_token, **kw)
        text = rendered[0][0]
        return self.encode(text) if tokenize else text


def _int_or_none(v: Any) -> int | None:
    return None if v is None else int(v)


class quiet_stderr:
    """llama.cpp logs to fd 2 from C; silence it while a model loads (errors come back as codes)."""

    def __enter__(self) -> None:
        import sys

        sys.stderr.flush()
        self._saved = os.dup(2)
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 2)

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        os.close(self._null)


MAX_CONTEXT = 8192  # the default context: a 128k-context model's full KV cache would not fit


def gguf_context_length(path: str | Path) -> int:
    """The context length a GGUF file was trained with (0 when it does not say)."""
    from bftcore.export.gguf import gguf_header  # its header only: the gguf package's reader decodes the vocabulary

    values = gguf_header(path).values
    return int(values.get(f"{values.get('general.architecture')}.context_length", 0))


def open_llama(path: str | Path, *, n_ctx: int = 0, kv_f32: bool = False, logits_all: bool = False) -> Any:
    """A llama.cpp model of a GGUF file (quietly), or BadInput when it is not one. n_ctx 0 means
    the file's context length, capped at MAX_CONTEXT."""
    llama_cpp = require("llama_cpp", "a GGUF file in llama.cpp")

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise BadInput(f"{path}: not a GGUF file")
    kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if kv_f32 else {}
    try:
        if not n_ctx:
            n_ctx = min(gguf_context_length(path) or MAX_CONTEXT, MAX_CONTEXT)
        with quiet_stderr():
            return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, logits_all=logits_all,
                                   verbose=False, n_threads=torch.get_num_threads(), **kv)
    except (ValueError, RuntimeError, KeyError) as e:
        raise BadInput(f"{path}: llama.cpp could not load it ({e})") from e


class LlamaCppGenerator:
    """A GGUF file in llama.cpp, one sequence at a time. Rows that share a prefix with the row
    before reuse its KV cache (the sampled attack repeats each input several times).

    KV cache F16 by default, as llama.cpp deploys it; `kv_f32` for parity checks.
    """

    def __init__(self, path: str | Path, *, n_ctx: int = 0, kv_f32: bool = False) -> None:
        self.path = Path(path)
        self.llm = open_llama(path, n_ctx=n_ctx, kv_f32=kv_f32)
        self.tokenizer = GGUFTokenizer(self.llm)
        self.arch = str(self.llm.metadata.get("general.architecture", ""))
        self.n_vocab = int(self.llm.n_vocab())
        self.eos_ids = {self.tokenizer.eos_token_id}

    def prompt_ids(self, prompt: str | list[dict[str, str]], *, chat: bool = True,
                   thinking: bool = False) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, chat=chat, thinking=thinking)

    def _eval_to(self, ids: Sequence[int]) -> np.ndarray:
        """Log-probs of the next token after `ids`, reusing the cached common prefix."""
        llama_cpp = require("llama_cpp", "a GGUF file in llama.cpp")

        if not ids:
            raise BadInput("an empty input has no next token")
        if len(ids) >= self.llm.n_ctx():
            raise BadInput(f"input of {len(ids)} tokens does not fit llama.cpp's context of {self.llm.n_ctx()}")
        held = self.llm.input_ids[: self.llm.n_tokens]
        common = 0
        for a, b in zip(held, ids):
            if int(a) != int(b):
                break
            common += 1
        self.llm.n_tokens = min(common, len(ids) - 1)  # at least one token to evaluate: its logits
        self.llm.eval(list(ids[self.llm.n_tokens:]))
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return log_softmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())

    def next_logprobs(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        return np.stack([self._eval_to(x) for x in inputs]) if inputs else np.zeros((0, self.n_vocab), np.float32)

    def generate(self, inputs: Sequence[Sequence[int]], decoding: Decoding, seeds: Sequence[int] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
        seeds = list(seeds) if seeds is not None else [decoding.seed + i for i in range(len(inputs))]
        out: list[list[int]] = []
        for x, s in zip(inputs, seeds):
            gens = _generators(decoding, [s])
            ids, row = list(x), []
            lp = self._eval_to(ids)
            for _ in range(decoding.max_new_tokens):
                t = pick(lp[None], decoding, gens)[0]
                if t in self.eos_ids:
                    break
                row.append(t)
                ids.append(t)
                if len(ids) >= self.llm.n_ctx():
                    break
                lp = self._eval_to(ids)
            out.append(row)
            if on_batch is not None:
                on_batch(1)
        return out


# ---- ONNX Runtime -----------------------------------------------------------------------------
class OnnxGenerator:
    """An exported ONNX directory (`bftcore export --to onnx`) in onnxruntime: batched, left-padded
    decoding over the graph's KV cache, the tokenizer files beside it."""

    def __init__(self, path: str | Path, *, batch_size: int = 64, provider: str = "CPUExecutionProvider") -> None:
        ort = require("onnxruntime", "an ONNX graph in onnxruntime")

        from bftcore.models import load_tokenizer

        self.path = Path(path)
        graph = self.path / "model.onnx"
        if not graph.is_file():
            raise BadInput(f"{self.path}: no model.onnx (export one with `bftcore export MODEL --to onnx`)")
        try:
            self.meta = json.loads((self.path / "export.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError) as e:
            raise BadInput(f"{self.path}: no readable export.json beside model.onnx") from e
        _check_external_data(graph)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # as many as torch: one knob for every backend
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(graph), opts, providers=[provider])
        if provider not in self.session.get_providers():  # onnxruntime falls back silently
            raise BadInput(f"onnxruntime has no {provider} here (it has {self.session.get_providers()})")
        self.tokenizer = load_tokenizer(self.path)
        self.arch = str(self.meta.get("arch", ""))
        self.batch_size = batch_size
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.eos_ids = {tok.eos_token_id}

    def prompt_ids(self, prompt: str | list[dict[str, str]], *, chat: bool = True,
                   thinking: bool = False) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, chat=chat, thinking=thinking)

    def _empty_past(self, batch: int) -> np.ndarray:
        m = self.meta
        return np.zeros((m["layers"], 2, batch, m["kv_heads"], 0, m["head_dim"]), dtype=np.float32)

    def _prefill(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(last log-probs, present, mask, next positions) after the left-padded prompts."""
        width = max(len(x) for x in rows)
        if min(len(x) for x in rows) == 0:
            raise BadInput("an empty input has no next token")
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, x in enumerate(rows):
            ids[r, width - len(x):] = x
            mask[r, width - len(x):] = 1
        pos = np.maximum(mask.cumsum(-1) - 1, 0)
        logits, present = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                                  "position_ids": pos, "past": self._empty_past(len(rows))})
        return log_softmax(logits[:, -1]), present, mask, pos[:, -1:] + 1

    def next_logprobs(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros((len(inputs), int(self.meta["vocab_size"])), dtype=np.float32)
        for chunk in length_batches(inputs, self.batch_size):
            out[chunk] = self._prefill([inputs[i] for i in chunk])[0]
        return out

    def generate(self, inputs: Sequence[Sequence[int]], decoding: Decoding, seeds: Sequence[int] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
        seeds = list(seeds) if seeds is not None else [decoding.seed + i for i in range(len(inputs))]
        out: list[list[int]] = [[] for _ in inputs]
        for chunk in length_batches(inputs, self.batch_size):
            gens = _generators(decoding, [seeds[i] for i in chunk])
            lp, past, mask, pos = self._prefill([inputs[i] for i in chunk])
            done = [False] * len(chunk)
            for _ in range(decoding.max_new_tokens):
                tokens = pick(lp, decoding, gens)
                for r, t in enumerate(tokens):
                    if not done[r]:
                        if t in self.eos_ids:
                            done[r] = True
                        else:
                            out[chunk[r]].append(t)
                if all(done):
                    break
                mask = np.concatenate([mask, np.ones((len(chunk), 1), dtype=np.int64)], 1)
                logits, past = self.session.run(None, {
                    "input_ids": np.array(tokens, dtype=np.int64)[:, None], "attention_mask": mask,
                    "position_ids": pos, "past": past})
                lp = log_softmax(logits[:, -1])
                pos = pos + 1
            if on_batch is not None:
                on_batch(len(chunk))
        return out


def _check_external_data(graph: Path) -> None:
    """Refuse a graph whose weights live outside its own directory: an untrusted model.onnx must
    not make onnxruntime read arbitrary files (an absolute path, or one climbing out with ..)."""
    onnx = require("onnx", "reading an ONNX graph")
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception as e:
        raise BadInput(f"{graph}: not a readable ONNX graph ({type(e).__name__})") from e
    root = graph.parent.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if not location or Path(location).is_absolute() or root not in target.parents:
            raise BadInput(f"{graph}: tensor {tensor.name!r} keeps its data outside the graph's "
                           f"directory ({location!r}); refused")


# ---- a llama.cpp server over HTTP -------------------------------------------------------------
class ServerGenerator:
    """An OpenAI-compatible completions endpoint (llama.cpp's server, vLLM, SGLang, TGI), with the
    tokenizer of the artifact it serves kept here: the endpoint takes text, so each input's token
    ids are decoded (special tokens kept) and the server tokenizes them again. Sampling happens
    inside the server with its own seed per request; every other sampler (repeat penalty, min-p) is
    switched off. Next-token log-probs come from the endpoint's top-n (`logprobs`), mapped back to
    ids by their text; tokens outside the top-n get -inf.

    Up to `in_flight` requests are open at once, so a batching server fills its slots; results come
    back in input order, the same rows as one at a time. A request that fails in a way that may pass
    (no connection, a reset, HTTP 429 or 5xx) is tried again `retries` times with growing pauses;
    then, or at once for any other HTTP error, BadInput names the server and the cause.
    """

    RETRY_STATUS = (429, 500, 502, 503, 504)

    def __init__(self, url: str, tokenizer: Any, *, model: str | None = None, top_logprobs: int = 20,
                 timeout: float = 120.0, in_flight: int = 8, retries: int = 3, backoff: float = 0.5) -> None:
        if in_flight < 1 or retries < 0:
            raise BadInput("--in-flight must be >= 1 and retries >= 0")
        self.url = url.rstrip("/")
        self.tokenizer = tokenizer
        self.model = model
        self.top_logprobs = top_logprobs
        self.timeout = timeout
        self.in_flight = in_flight
        self.retries = retries
        self.backoff = backoff
        self.eos_ids = {tokenizer.eos_token_id}
        self.arch = ""
        self._by_text: dict[str, int] | None = None

    def prompt_ids(self, prompt: str | list[dict[str, str]], *, chat: bool = True,
                   thinking: bool = False) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, chat=chat, thinking=thinking)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import time

        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            req = urllib.request.Request(f"{self.url}{path}", data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return dict(json.loads(r.read()))
            except urllib.error.HTTPError as e:
                if last or e.code not in self.RETRY_STATUS:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise BadInput(f"{self.url}{path}: HTTP {e.code}{tries} ({e.read()[:200]!r})") from e
            except (urllib.error.URLError, OSError) as e:
                if last:
                    raise BadInput(f"{self.url}: cannot reach the server ({attempt + 1} attempts; {e})") from e
            time.sleep(self.backoff * 2 ** attempt)
        raise AssertionError("unreachable")

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any], on_batch: Callable[[int], None] | None) -> list[Any]:
        """fn over items, at most `in_flight` at once, results in input order; the first failure
        cancels what has not started and is raised."""
        from concurrent.futures import ThreadPoolExecutor

        out: list[Any] = []
        if self.in_flight == 1 or len(items) <= 1:
            for x in items:
                out.append(fn(x))
                if on_batch is not None:
                    on_batch(1)
            return out
        pool = ThreadPoolExecutor(max_workers=min(self.in_flight, len(items)), thread_name_prefix="bftcore-server")
        try:
            for future in [pool.submit(fn, x) for x in items]:
                out.append(future.result())
                if on_batch is not None:
                    on_batch(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return out

    def _complete(self, ids: Sequence[int], d: Decoding, seed: int, max_tokens: int,
                  logprobs: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": self.tokenizer.decode(list(ids), skip_special_tokens=False),
            "max_tokens": max_tokens, "temperature": float(d.temperature), "top_p": float(d.top_p),
            "top_k": int(d.top_k), "min_p": 0.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "seed": int(seed), "stream": False,
        }
        if logprobs is not None:
            body["logprobs"] = logprobs
        if self.model:
            body["model"] = self.model
        return self._post("/v1/completions", body)

    def generate(self, inputs: Sequence[Sequence[int]], decoding: Decoding, seeds: Sequence[int] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
        seeds = list(seeds) if seeds is not None else [decoding.seed + i for i in range(len(inputs))]

        def one(job: tuple[Sequence[int], int]) -> list[int]:
            text = self._complete(job[0], decoding, job[1], decoding.max_new_tokens)["choices"][0]["text"]
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

        return self._map(one, list(zip(inputs, seeds)), on_batch)

    def _ids_by_text(self) -> dict[str, int]:
        if self._by_text is None:
            self._by_text = {}
            for i in range(len(self.tokenizer)):
                self._by_text.setdefault(self.tokenizer.decode([i], skip_special_tokens=False), i)
        return self._by_text

    def next_logprobs(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.full((len(inputs), len(self.tokenizer)), -np.inf, dtype=np.float32)
        by_text = self._ids_by_text()
        choices = self._map(lambda x: self._complete(x, Decoding(1), 0, 1, logprobs=self.top_logprobs)["choices"][0],
                            list(inputs), None)
        for r, choice in enumerate(choices):
            top = _top_logprobs(choice.get("logprobs") or {})
            if not top:
                raise BadInput(f"{self.url} returned no log-probs (start the server with --logits_all true)")
            for token_id, text, value in top:
                i = token_id if token_id is not None and 0 <= token_id < out.shape[1] else by_text.get(text)
                if i is not None:
                    out[r, i] = max(out[r, i], float(value))
        return out


def _top_logprobs(logprobs: dict[str, Any]) -> list[tuple[int | None, str, float]]:
    """(token id when the server gives it, token text, log-prob) of the first generated token's
    top-n, in either shape servers answer with: the legacy completions one (llama-cpp-python, vLLM:
    `top_logprobs: [{text: logprob}]`) or the chat-style one (llama.cpp's `llama-server`:
    `content: [{top_logprobs: [{id, token, logprob}]}]`)."""
    legacy = logprobs.get("top_logprobs")
    if legacy:
        return [(None, text, value) for text, value in (legacy[0] or {}).items()]
    content = logprobs.get("content") or [{}]
    return [(t.get("id"), t.get("token", ""), t["logprob"]) for t in content[0].get("top_logprobs") or []]


# ---- choosing a backend -----------------------------------------------------------------------
def detect_backend(target: str | Path) -> str:
    """The backend a target calls for: an http(s) URL, a .gguf file, an ONNX export directory,
    or (else) a transformers model directory."""
    s = str(target)
    if s.startswith(("http://", "https://")):
        return "server"
    p = Path(s)
    if p.suffix == ".gguf" or (p.is_file() and p.open("rb").read(4) == b"GGUF"):
        return "llamacpp"
    if (p / "model.onnx").is_file():
        return "onnx"
    return "torch"


def check_dtype(kind: str, dtype: str) -> None:
    """--dtype picks the type PyTorch loads weights in; an exported artifact has its own."""
    if kind != "torch" and dtype != "auto":
        raise BadInput(f"--dtype applies to the torch backend; a {kind} target computes in the types of "
                       "its own weights (choose them at export)")


def open_generator(target: str | Path, backend: str = "auto", *, device: str = "cpu",
                   tokenizer: str | Path | None = None, dtype: str = "auto", in_flight: int = 8) -> Any:
    """A generator for a model directory, GGUF file, ONNX directory or server URL; `dtype` (a
    `bftcore.precision` name) is the torch backend's, `in_flight` the server's open requests."""
    if backend not in BACKENDS:
        raise BadInput(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    kind = detect_backend(target) if backend == "auto" else backend
    check_dtype(kind, dtype)
    if kind == "llamacpp":
        return LlamaCppGenerator(target)
    if kind == "onnx":
        return OnnxGenerator(target)
    if kind == "server":
        if not str(target).startswith(("http://", "https://")):
            raise BadInput(f"--backend server needs an http:// URL, got {target}")
        if tokenizer is None:
            raise BadInput("--backend server needs --tokenizer (the served GGUF file or a tokenizer directory)")
        return ServerGenerator(str(target), _tokenizer_of(tokenizer), in_flight=in_flight)
    from bftcore.generate import TorchGenerator
    from bftcore.models import load_model, load_tokenizer
    from bftcore.precision import torch_dtype

    if str(target).startswith(("http://", "https://")):
        raise BadInput(f"{target}: a URL needs --backend server")
    model = load_model(target, device=device, dtype=torch_dtype(dtype, device))
    return TorchGenerator(model, load_tokenizer(target))


def open_target(target: str | Path, backend: str = "auto", *, device: str = "cpu",
                tokenizer: str | Path | None = None, contrast_base: str | Path | None = None,
                contrast_gamma: float = 2.0, dtype: str = "auto", in_flight: int = 8) -> tuple[Any, str]:
    """(generator, architecture) of a model to attack: a transformers model directory (a pickle-only
    one converted first, see `models.resolve_model`), a .gguf file, an ONNX export directory, or a
    server URL (with `tokenizer`: the served GGUF file or a tokenizer directory). `contrast_base`,
    torch only: decode with contrastive suppression of that base model's favored tokens. `dtype`
    (a `bftcore.precision` name), torch only: the type both models are loaded in."""
    kind = detect_backend(target) if backend == "auto" else backend
    if kind != "torch" or str(target).startswith(("http://", "https://")):
        if contrast_base is not None:
            raise BadInput(f"--contrast-base needs the torch backend, not {kind}")
        gen = open_generator(target, kind, device=device, tokenizer=tokenizer, dtype=dtype, in_flight=in_flight)
        return gen, str(gen.arch)
    from bftcore.generate import Contrast
    from bftcore.models import check_same_tokenizer, load_model, load_tokenizer, resolve_model
    from bftcore.precision import torch_dtype

    gen = open_generator(resolve_model(target), kind, device=device, dtype=dtype)
    if contrast_base is not None:
        base = resolve_model(contrast_base)
        check_same_tokenizer(load_tokenizer(base), gen.tokenizer)
        gen.contrast = Contrast(load_model(base, device=device, dtype=torch_dtype(dtype, device)), contrast_gamma)
    return gen, str(getattr(gen.model.config, "model_type", ""))


def _tokenizer_of(path: str | Path) -> Any:
    """The tokenizer of a GGUF file (through llama.cpp) or of a tokenizer/model directory."""
    from bftcore.models import load_tokenizer

    if detect_backend(path) == "llamacpp":
        return GGUFTokenizer(open_llama(path, n_ctx=64))
    return load_tokenizer(path)


@contextmanager
def llama_server(gguf: str | Path, *, port: int = 0, ready_timeout: float = 120.0,
                 logits_all: bool = True, n_ctx: int = 0) -> Iterator[str]:
    """Serve a GGUF file with llama-cpp-python's OpenAI-compatible server on 127.0.0.1 (a free
    port unless told), yield its URL once it answers, and stop it on exit. n_ctx 0 means the
    file's context length, capped at MAX_CONTEXT (with logits_all the server holds n_ctx x vocab
    floats: 5 GB for 8192 x Qwen's 152k)."""
    import socket
    import subprocess
    import sys
    import time

    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(n_ctx or min(gguf_context_length(gguf) or MAX_CONTEXT, MAX_CONTEXT)),
           "--logits_all", str(logits_all).lower(), "--verbose", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                tail = (proc.stderr.read() if proc.stderr else b"")[-400:].decode(errors="replace")
                raise BadInput(f"the llama.cpp server exited with code {proc.returncode}: {tail.strip()}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise BadInput(f"the llama.cpp server did not answer within {ready_timeout:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
