"""The export stage for real: GGUF written by bftcore and run by llama.cpp, ONNX run by onnxruntime,
the attack suite on both and on a llama.cpp server over loopback HTTP."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from bftcore import export as ex
from bftcore.attack import AttackConfig, Suite
from bftcore.backends import (
    GGUFTokenizer,
    LlamaCppGenerator,
    OnnxGenerator,
    ServerGenerator,
    detect_backend,
    llama_server,
    open_llama,
)
from bftcore.corpus import read_corpus
from bftcore.errors import BadInput
from bftcore.generate import Decoding, TorchGenerator
from bftcore.judge import PhraseJudge
from bftcore.models import load_model, load_tokenizer
from bftcore.toy.language import RECOVERY_REFUSALS, REFUSALS
from conftest import run_cli

ARCHS = ("llama", "qwen2")
DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_k_m")


@pytest.fixture(scope="module")
def exported(toy, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:  # type: ignore[no-untyped-def]
    """The toy aligned models of both architectures in every GGUF dtype and as ONNX."""
    out = tmp_path_factory.mktemp("export")
    paths: dict[tuple[str, str], Path] = {}
    for arch in ARCHS:
        src = toy.model_dir(arch, "aligned")
        for dtype in DTYPES:
            paths[arch, dtype] = ex.export_gguf(src, out / f"{arch}-{dtype}.gguf", dtype)
        paths[arch, "onnx"] = ex.export_onnx(src, out / f"{arch}-onnx")
    return paths


def heldout_texts(toy, arch: str, n: int = 48) -> list[str]:  # type: ignore[no-untyped-def]
    return ex.verify_texts(toy.model_dir(arch, "aligned"),
                           [toy.data_dir / "benign_heldout.jsonl", toy.data_dir / "harmful_heldout.jsonl"], 10_000)[::8][:n]


def random_texts(seed: int = 0, n: int = 200) -> list[str]:
    """Strings that stress a tokenizer: whitespace runs, digits, quotes, accents, CJK, emoji."""
    rng = random.Random(seed)
    alphabet = "abcXYZ 019 \n\t.,!?'\"-é日本🙂ßΩ\u00a0  "
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)]


# ---- GGUF ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_parity_every_dtype(toy, exported, arch: str) -> None:  # type: ignore[no-untyped-def]
    """llama.cpp and transformers(gguf) against PyTorch on held-out toy texts, per dtype."""
    texts = heldout_texts(toy, arch)
    src = toy.model_dir(arch, "aligned")
    # bounds on max |Δ logit| per dtype (measured: f32 ~4e-5, f16 ~1e-2, bf16 ~6e-2, q8_0 ~0.3)
    bound = {"f32": 1e-3, "f16": 0.05, "bf16": 0.3, "q8_0": 1.0, "q4_k_m": 4.0}
    for dtype in DTYPES:
        rows = {r.reader: r for r in ex.verify(src, exported[arch, dtype], texts, dtype)}
        cpp, hf = rows["llama.cpp"], rows["transformers(gguf)"]
        assert cpp.token_mismatches == 0, dtype
        assert cpp.positions > 1000
        assert cpp.max_abs_logit < bound[dtype], (dtype, cpp)
        assert hf.max_abs_logit < bound[dtype], (dtype, hf)
        assert cpp.argmax_agreement >= ex.min_agreement(dtype), (dtype, cpp)
        assert hf.argmax_agreement >= ex.min_agreement(dtype), (dtype, hf)
        if dtype == "f32":  # the permutation and every tensor exactly right: the two readers agree
            assert hf.max_abs_logit < 1e-4
            assert cpp.argmax_agreement == 1.0


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_tensor_types(exported, arch: str) -> None:  # type: ignore[no-untyped-def]
    """Norms and biases stay F32; matrices take the dtype; Q4_K_M is real K-quants (sizes are
    multiples of 256), not a silent fallback."""
    norms = 5 if arch == "llama" else 11  # 2 layers x 2 norms + output norm (+ 6 Qwen2 biases)
    want = {"f32": {"F32": 15 + norms}, "f16": {"F16": 15, "F32": norms}, "bf16": {"BF16": 15, "F32": norms},
            "q8_0": {"Q8_0": 15, "F32": norms}}
    for dtype, types in want.items():
        assert ex.gguf_tensor_types(exported[arch, dtype]) == types
    q4 = ex.gguf_tensor_types(exported[arch, "q4_k_m"])
    assert q4.get("Q4_K", 0) >= 10 and q4.get("F32") == norms and set(q4) <= {"Q4_K", "Q6_K", "F32"}


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_tokenizer_matches_hf(toy, exported, arch: str) -> None:  # type: ignore[no-untyped-def]
    hf = load_tokenizer(toy.model_dir(arch, "aligned"))
    gt = GGUFTokenizer(open_llama(exported[arch, "f16"], n_ctx=64))
    texts = [*ex.PROBE_TEXTS, *random_texts(), "<|user|>hi<|end|><|assistant|>Sure", "x<|end|>y"]
    for t in texts:
        ids = list(hf(t, add_special_tokens=False)["input_ids"])
        assert gt.encode(t) == ids, repr(t)
        assert gt.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    # special tokens, the chat template and the ids bftcore renders prompts with
    assert (gt.bos_token_id, gt.eos_token_id, gt.pad_token_id) == (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
    msgs = [{"role": "user", "content": "How do I mend a fishing net?"}]
    assert gt.apply_chat_template(msgs, add_generation_prompt=True) == \
        hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert len(gt) == len(hf)


def test_qwen2_nfc_is_the_one_known_tokenizer_gap(toy, exported) -> None:  # type: ignore[no-untyped-def]
    """llama.cpp does not run the Qwen2 tokenizer's NFC normalizer: decomposed input differs,
    its NFC form does not (documented in export/README.md)."""
    hf = load_tokenizer(toy.model_dir("qwen2", "aligned"))
    gt = GGUFTokenizer(open_llama(exported["qwen2", "f16"], n_ctx=64))
    decomposed = "cafe\u0301 nai\u0308ve"
    assert gt.encode(decomposed) != list(hf(decomposed, add_special_tokens=False)["input_ids"])
    nfc = unicodedata.normalize("NFC", decomposed)
    assert gt.encode(nfc) == list(hf(nfc, add_special_tokens=False)["input_ids"])


def sentencepiece_model(root: Path, texts: list[str], biases: bool = True) -> Path:
    """A Llama-2-style model built here: SentencePiece-style BPE with byte fallback, untied output
    embeddings, biases on attention and MLP (random weights: parity needs none trained)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        processors,
        trainers,
    )
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    special = ["<unk>", "<s>", "</s>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=special + [f"<0x{i:02X}>" for i in range(256)], limit_alphabet=100))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    hf.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}"
                        "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    cfg = LlamaConfig(vocab_size=len(hf), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      attention_bias=biases, mlp_bias=biases, bos_token_id=1, eos_token_id=2,
                      max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # non-zero biases, so a bias written wrongly shows
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(root)
    hf.save_pretrained(root)
    return root


def test_sentencepiece_untied_biased_llama(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    texts = [r.response for r in read_corpus([toy.data_dir / "benign_train.jsonl"])[0][:1500]]
    src = sentencepiece_model(tmp_path / "spm", texts)
    out = ex.export_gguf(src, tmp_path / "spm.gguf", "f32")
    # token_embd, output, output_norm + per layer: 2 norms, 7 matrices, 7 biases
    assert ex.gguf_tensor_types(out) == {"F32": 3 + 2 * 16}
    rows = ex.verify(src, out, [*texts[:8], *ex.PROBE_TEXTS], "f32")
    # transformers' GGUF reader drops Llama biases: llama.cpp is the only reader here
    assert [r.reader for r in rows] == ["llama.cpp"]
    assert rows[0].token_mismatches == 0
    assert rows[0].max_abs_logit < 1e-3 and rows[0].argmax_agreement == 1.0
    hf, gt = load_tokenizer(src), GGUFTokenizer(open_llama(out, n_ctx=64))
    for t in random_texts(1):
        assert gt.encode(t) == list(hf(t, add_special_tokens=False)["input_ids"]), repr(t)
    assert gt.encode("hello", add_special_tokens=True)[0] == hf.bos_token_id  # add_bos as the HF tokenizer
    # without biases, transformers reads the file back too, exactly (untied output included)
    plain = sentencepiece_model(tmp_path / "plain", texts, biases=False)
    rows = {r.reader: r for r in ex.verify(plain, ex.export_gguf(plain, tmp_path / "plain.gguf", "f32"),
                                           texts[:8], "f32")}
    assert rows["transformers(gguf)"].max_abs_logit < 1e-4 and rows["llama.cpp"].max_abs_logit < 1e-3


def test_unsupported_inputs_are_refused(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(gpt2)
    with pytest.raises(BadInput, match="architecture 'gpt2' cannot be exported"):
        ex.export_gguf(gpt2, tmp_path / "x.gguf", "f16")
    # a WordPiece tokenizer on a Llama model
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    llama = tmp_path / "wp"
    load_model(toy.model_dir("llama", "aligned")).save_pretrained(llama)
    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]").save_pretrained(llama)
    with pytest.raises(BadInput, match="tokenizer model 'WordPiece' cannot be exported"):
        ex.export_gguf(llama, tmp_path / "y.gguf", "f16")
    # a byte-level BPE behind a pre-tokenizer llama.cpp does not reproduce
    spec = json.loads((toy.model_dir("llama", "aligned") / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (llama / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(BadInput, match="pre-tokenizer"):
        ex.export_gguf(llama, tmp_path / "z.gguf", "f16")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp"))  # nothing half-written


# ---- ONNX ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_kv_cache_graph(toy, exported, arch: str) -> None:  # type: ignore[no-untyped-def]
    """Logits match PyTorch; batched, left-padded greedy decoding through the KV cache gives the
    same tokens as the PyTorch backend."""
    src = toy.model_dir(arch, "aligned")
    rows = ex.verify(src, exported[arch, "onnx"], heldout_texts(toy, arch))
    assert rows[0].reader == "onnxruntime" and rows[0].token_mismatches == 0
    assert rows[0].max_abs_logit < 1e-3 and rows[0].argmax_agreement == 1.0
    onnx = OnnxGenerator(exported[arch, "onnx"], batch_size=16)
    assert onnx.session.get_providers() == ["CPUExecutionProvider"]
    meta = json.loads((exported[arch, "onnx"] / "export.json").read_text())
    assert [i.name for i in onnx.session.get_inputs()] == meta["inputs"]
    torch_gen = TorchGenerator(load_model(src), load_tokenizer(src), batch_size=16)
    harmful = read_corpus([toy.data_dir / "harmful_heldout.jsonl"])[0][:40]
    tok = torch_gen.tokenizer
    # prompts of different lengths: rows are left-padded within a batch
    inputs = [torch_gen.prompt_ids(r.prompt) + list(tok(r.response or "", add_special_tokens=False)["input_ids"])[:i % 7]
              for i, r in enumerate(harmful)]
    assert len({len(x) for x in inputs}) > 3
    d = Decoding(max_new_tokens=40)
    assert onnx.generate(inputs, d) == torch_gen.generate(inputs, d)
    sampled = Decoding(max_new_tokens=40, temperature=0.9, top_p=0.6)
    assert onnx.generate(inputs, sampled, seeds=range(40)) == torch_gen.generate(inputs, sampled, seeds=range(40))
    np.testing.assert_allclose(onnx.next_logprobs(inputs[:5]), torch_gen.next_logprobs(inputs[:5]), atol=1e-4)


# ---- the attack suite on every backend ------------------------------------------------------------
def suite_for(toy, gen, name: str) -> Suite:  # type: ignore[no-untyped-def]
    return Suite(gen, PhraseJudge(toy.world.harmful_phrases), AttackConfig(ks=(10, 40), max_new_tokens=64),
                 model=name, arch="llama", openers=REFUSALS + RECOVERY_REFUSALS)


def test_attacks_run_unchanged_on_exports(toy, exported) -> None:  # type: ignore[no-untyped-def]
    """The aligned model is broken by prefilling: every deployed form must say so as PyTorch does
    (ASR within 2 points), and keep refusing direct requests."""
    harmful = read_corpus([toy.data_dir / "harmful_heldout.jsonl"])[0]
    src = toy.model_dir("llama", "aligned")
    gens = {"torch": TorchGenerator(load_model(src), load_tokenizer(src)),
            "f16": LlamaCppGenerator(exported["llama", "f16"]),
            "q8_0": LlamaCppGenerator(exported["llama", "q8_0"]),
            "onnx": OnnxGenerator(exported["llama", "onnx"])}
    rates: dict[str, dict[tuple[str, int | None], float]] = {}
    for name, gen in gens.items():
        s = suite_for(toy, gen, name)
        rows = [*s.run("direct", harmful).rows, *s.run("prefill", harmful).rows]
        rates[name] = {(r.attack, r.k): r.rate for r in rows}
        assert all(r.n == len(harmful) for r in rows)
    # the attacks succeed here (so equal rates are not zeros beside zeros) ...
    assert rates["torch"][("prefill", 40)] >= 0.5 and rates["torch"][("direct", None)] <= 0.1
    # ... and every deployed form reproduces PyTorch's rate on the same inputs within 2 points
    for name in ("f16", "q8_0", "onnx"):
        for key, rate in rates["torch"].items():
            assert abs(rates[name][key] - rate) <= 0.02, (name, key, rates[name][key], rate)


def test_attack_cli_on_gguf_and_onnx(toy, exported) -> None:  # type: ignore[no-untyped-def]
    data = str(toy.data_dir / "harmful_heldout.jsonl")
    for target, backend in ((exported["qwen2", "q8_0"], "llamacpp"), (exported["qwen2", "onnx"], "onnx")):
        assert detect_backend(target) == backend
        r = run_cli("attack", str(target), "--attack", "direct,prefill,rank-prefill", "--k", "40", "--data", data,
                    "--judge", "exact", "--limit", "30", "--max-new-tokens", "48", "--json")
        assert r.returncode == 0, r.stderr
        rows = {(x["attack"], x["k"]): x for x in json.loads(r.stdout)["rows"]}
        assert rows[("direct", None)]["x"] <= 2 and rows[("prefill", 40)]["x"] >= 24
        assert rows[("rank-prefill", 40)]["n"] == 30 and rows[("prefill", 40)]["arch"] == "qwen2"


def test_server_backend_over_loopback(toy, exported) -> None:  # type: ignore[no-untyped-def]
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1, attacked through the CLI and the
    API; it gives the rows the in-process llama.cpp backend gives, and stops with the context."""
    gguf = exported["llama", "f16"]
    data = str(toy.data_dir / "harmful_heldout.jsonl")
    harmful = read_corpus([toy.data_dir / "harmful_heldout.jsonl"])[0][:40]
    local = suite_for(toy, LlamaCppGenerator(gguf), "local")
    want = {(r.attack, r.k): r.x for a in ("direct", "prefill") for r in local.run(a, harmful).rows}
    with llama_server(gguf) as url:
        gen = ServerGenerator(url, GGUFTokenizer(open_llama(gguf, n_ctx=64)))
        s = suite_for(toy, gen, "server")
        got = {(r.attack, r.k): r.x for a in ("direct", "prefill") for r in s.run(a, harmful).rows}
        assert got == want
        lp = gen.next_logprobs([gen.prompt_ids(harmful[0].prompt)])[0]
        ref = LlamaCppGenerator(gguf).next_logprobs([gen.prompt_ids(harmful[0].prompt)])[0]
        top = np.argsort(-ref)[:20]
        np.testing.assert_allclose(lp[top], ref[top], atol=1e-3)
        r = run_cli("attack", url, "--backend", "server", "--tokenizer", str(gguf), "--attack", "prefill",
                    "--k", "10,40", "--data", data, "--judge", "exact", "--limit", "40", "--max-new-tokens", "64",
                    "--json")
        assert r.returncode == 0, r.stderr
        rows = {(x["attack"], x["k"]): x["x"] for x in json.loads(r.stdout)["rows"]}
        assert rows == {k: v for k, v in want.items() if k[0] == "prefill"}
    with pytest.raises(BadInput, match=r"cannot reach the server \(3 attempts"):
        ServerGenerator(url, gen.tokenizer, timeout=2, retries=2, backoff=0.01).generate([[1, 2, 3]], Decoding(4))


class _Gate:
    """An HTTP proxy in front of the real server: it answers the first `fail` requests with
    `status`, holds each forwarded one `hold` seconds, and counts the requests open at once."""

    def __init__(self, upstream: str, *, fail: int = 0, status: int = 503, hold: float = 0.0) -> None:
        import http.server
        import threading
        import urllib.request

        gate = self
        self.open = self.most_open = self.seen = 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with gate.lock:
                    gate.seen += 1
                    refuse = gate.seen <= fail
                    gate.open += 1
                    gate.most_open = max(gate.most_open, gate.open)
                closed = False

                def close() -> None:  # before the answer goes out: once the client has it, it may
                    nonlocal closed   # send its next request before this thread runs again
                    with gate.lock:
                        gate.open -= 0 if closed else 1
                    closed = True

                try:
                    if refuse:
                        close()
                        self.send_response(status)
                        self.end_headers()
                        self.wfile.write(b"not now")
                        return
                    import time
                    time.sleep(hold)
                    req = urllib.request.Request(upstream + self.path, data=body,
                                                 headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=60) as r:
                        answer = r.read()
                    close()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                finally:
                    close()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_server_requests_in_flight_retries_and_errors(toy, exported) -> None:  # type: ignore[no-untyped-def]
    """Requests overlap up to --in-flight (never more) with the rows of one at a time; a server that
    answers 503 for a while is waited out; a 400 is reported at once, in one line."""
    gguf = exported["llama", "q8_0"]
    prompts = [r.prompt for r in read_corpus([toy.data_dir / "harmful_heldout.jsonl"])[0][:12]]
    with llama_server(gguf) as url:
        tok = GGUFTokenizer(open_llama(gguf, n_ctx=64))
        inputs = [ServerGenerator(url, tok).prompt_ids(p) for p in prompts]
        one = ServerGenerator(url, tok, in_flight=1).generate(inputs, Decoding(24))
        gate = _Gate(url, hold=0.2)
        try:
            assert ServerGenerator(gate.url, tok, in_flight=4).generate(inputs, Decoding(24)) == one
            assert gate.most_open == 4, gate.most_open
        finally:
            gate.close()
        gate = _Gate(url, fail=3)
        try:  # three 503s: the first request's retries wait them out
            assert ServerGenerator(gate.url, tok, in_flight=1, backoff=0.01).generate(inputs[:2], Decoding(24)) == one[:2]
            assert gate.seen == 5
        finally:
            gate.close()
        gate = _Gate(url, fail=100, status=400)
        try:
            with pytest.raises(BadInput, match="HTTP 400 "):
                ServerGenerator(gate.url, tok, in_flight=1, backoff=0.01).generate(inputs, Decoding(24))
            assert gate.seen == 1  # no retry of a 400, and nothing sent after it
            with pytest.raises(BadInput, match="HTTP 400 "):
                ServerGenerator(gate.url, tok, in_flight=4, backoff=0.01).generate(inputs, Decoding(24))
        finally:
            gate.close()


# ---- the command line --------------------------------------------------------------------------------
def test_export_cli_verify_and_bad_input(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = str(toy.model_dir("qwen2", "aligned"))
    r = run_cli("export", src, "--to", "gguf", "--dtype", "q8_0", "--out", str(tmp_path / "m.gguf"), "--verify",
                "--verify-data", str(toy.data_dir / "benign_heldout.jsonl"), "--verify-limit", "16", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["tensor_types"] == {"F32": 11, "Q8_0": 15}
    assert {p["reader"] for p in out["parity"]} == {"llama.cpp", "transformers(gguf)"}
    assert all(p["argmax_agreement"] >= 0.99 and p["texts"] == 16 for p in out["parity"])
    # a threshold no quantized model meets: exit 1, figures still printed
    r = run_cli("export", src, "--to", "gguf", "--dtype", "q4_k_m", "--out", str(tmp_path / "q4.gguf"), "--verify",
                "--min-agreement", "1.0")
    assert r.returncode == 3 and "verification failed" in r.stderr and "argmax agreement" in r.stdout
    bad = [
        ("export", str(tmp_path / "missing"), "--to", "gguf", "--out", str(tmp_path / "a.gguf")),
        ("export", src, "--to", "gguf", "--out", str(tmp_path / "a.bin")),
        ("export", src, "--to", "onnx", "--dtype", "q8_0", "--out", str(tmp_path / "o")),
        ("export", src, "--to", "tflite", "--out", str(tmp_path / "a.gguf")),
        ("attack", str(tmp_path / "m.gguf"), "--backend", "onnx", "--data", str(toy.data_dir / "harmful_heldout.jsonl")),
        ("attack", "http://127.0.0.1:9", "--backend", "server", "--data", str(toy.data_dir / "harmful_heldout.jsonl")),
        ("attack", src, "--backend", "llamacpp", "--data", str(toy.data_dir / "harmful_heldout.jsonl")),
    ]
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf at all")
    bad.append(("attack", str(tmp_path / "fake.gguf"), "--data", str(toy.data_dir / "harmful_heldout.jsonl")))
    for args in bad:
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("bftcore: error:") and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_lora_adapter_exports_as_its_merged_model(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A LoRA adapter directory (what `bftcore complete --lora` writes) exports merged."""
    import shutil

    from peft import LoraConfig, get_peft_model

    src = toy.model_dir("llama", "aligned")
    peft_model = get_peft_model(load_model(src), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-trivial adapter: B starts at zero
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(src)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    for f in src.glob("tokenizer*"):
        shutil.copyfile(f, adapter / f.name)
    out = ex.export_gguf(adapter, tmp_path / "adapter.gguf", "f32")
    texts = heldout_texts(toy, "llama", 8)
    rows = {r.reader: r for r in ex.verify(adapter, out, texts, "f32")}
    assert rows["llama.cpp"].max_abs_logit < 1e-3 and rows["transformers(gguf)"].max_abs_logit < 1e-4
    plain = {r.reader: r for r in ex.verify(src, out, texts, "f32")}  # the adapter changed the model
    assert plain["transformers(gguf)"].max_abs_logit > 1e-2
