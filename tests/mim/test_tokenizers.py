"""Tokenizers: DALL-E dVAE loading (pickle trust, state dict), k-means ECG tokenizer, token cache.

Oracles: a small DALL-E encoder that the test builds with the public ``dall_e`` class layout
(openai/DALL-E ``dall_e/encoder.py`` and ``utils.py``: module names, attribute names, forward
arithmetic) and pickles as a whole module, as OpenAI's ``encoder.pkl`` is; its own forward pass is
the reference for our tokens (exact argmax equality).  k-means: scikit-learn's ``KMeans.predict`` on
the same features and centroids is the reference for the token assignment.
"""

from __future__ import annotations

import math
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from heartbeit_lib.mim import tokenizers as T

@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: threads only contend on a shared CI machine
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ a stand-in for OpenAI's dall_e package


def _fake_dalle_modules():
    """``dall_e``, ``dall_e.encoder``, ``dall_e.utils`` modules with the public class layout."""
    pkg = types.ModuleType("dall_e")
    enc_mod = types.ModuleType("dall_e.encoder")
    utils_mod = types.ModuleType("dall_e.utils")

    class Conv2d(nn.Module):
        def __init__(self, n_in, n_out, kw):
            super().__init__()
            self.n_in, self.n_out, self.kw = n_in, n_out, kw
            self.use_float16, self.device, self.requires_grad = True, torch.device("cpu"), False
            w = torch.empty((n_out, n_in, kw, kw)).normal_(std=1 / math.sqrt(n_in * kw ** 2))
            self.w, self.b = nn.Parameter(w), nn.Parameter(torch.randn(n_out) * 0.1)

        def forward(self, x):
            return F.conv2d(x, self.w, self.b, padding=(self.kw - 1) // 2)

    class EncoderBlock(nn.Module):
        def __init__(self, n_in, n_out, n_layers):
            super().__init__()
            self.n_in, self.n_out, self.n_layers = n_in, n_out, n_layers
            self.n_hid = n_out // 4
            self.post_gain = 1 / (n_layers ** 2)
            self.id_path = Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
            self.res_path = nn.Sequential(OrderedDict([
                ("relu_1", nn.ReLU()), ("conv_1", Conv2d(n_in, self.n_hid, 3)),
                ("relu_2", nn.ReLU()), ("conv_2", Conv2d(self.n_hid, self.n_hid, 3)),
                ("relu_3", nn.ReLU()), ("conv_3", Conv2d(self.n_hid, self.n_hid, 3)),
                ("relu_4", nn.ReLU()), ("conv_4", Conv2d(self.n_hid, n_out, 1))]))

        def forward(self, x):
            return self.id_path(x) + self.post_gain * self.res_path(x)

    class Encoder(nn.Module):
        def __init__(self, n_hid=16, n_blk_per_group=1, vocab_size=64):
            super().__init__()
            self.group_count, self.n_hid, self.n_blk_per_group = 4, n_hid, n_blk_per_group
            self.input_channels, self.vocab_size = 3, vocab_size
            nl = 4 * n_blk_per_group
            h = n_hid

            def group(n_in, n_out, pool):  # block_1 maps n_in -> n_out, later blocks n_out -> n_out
                blocks = [(f"block_{i + 1}", EncoderBlock(n_in if i == 0 else n_out, n_out, nl))
                          for i in range(n_blk_per_group)]
                return nn.Sequential(OrderedDict(blocks + ([("pool", nn.MaxPool2d(2))] if pool else [])))

            self.blocks = nn.Sequential(OrderedDict([
                ("input", Conv2d(3, h, 7)),
                ("group_1", group(h, h, True)),
                ("group_2", group(h, 2 * h, True)),
                ("group_3", group(2 * h, 4 * h, True)),
                ("group_4", group(4 * h, 8 * h, False)),
                ("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()), ("conv", Conv2d(8 * h, vocab_size, 1))]))),
            ]))

        def forward(self, x):
            return self.blocks(x)

    for cls, mod in ((Conv2d, utils_mod), (EncoderBlock, enc_mod), (Encoder, enc_mod)):
        cls.__module__, cls.__qualname__ = mod.__name__, cls.__name__
        setattr(mod, cls.__name__, cls)
    pkg.encoder, pkg.utils = enc_mod, utils_mod
    return {"dall_e": pkg, "dall_e.encoder": enc_mod, "dall_e.utils": utils_mod}


@pytest.fixture(scope="module")
def dalle_files(tmp_path_factory):
    """A small pickled DALL-E encoder module (as encoder.pkl) and its state dict; dall_e removed afterwards."""
    torch.manual_seed(0)
    mods = _fake_dalle_modules()
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        enc = mods["dall_e.encoder"].Encoder(n_hid=16, n_blk_per_group=2, vocab_size=64).eval()
        d = tmp_path_factory.mktemp("dalle")
        torch.save(enc, d / "encoder.pkl")  # whole module, like OpenAI's file
        torch.save(enc.state_dict(), d / "encoder_state.pt")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return enc, d / "encoder.pkl", d / "encoder_state.pt"


def _ecg_like_images(n, size=64, seed=0):
    """Grey uint8 (n, size, size) images: white background, a few dark traces (ECG-like)."""
    rng = np.random.default_rng(seed)
    img = np.full((n, size, size), 255, np.uint8)
    t = np.arange(size)
    for i in range(n):
        for row in range(size // 16):
            base = 8 + 16 * row
            y = base + (3 * np.sin(t * rng.uniform(0.2, 0.8) + rng.uniform(0, 6))).astype(int)
            spikes = rng.choice(size, 2, replace=False)
            y[spikes] -= rng.integers(3, 7)
            img[i, np.clip(y, 0, size - 1), t] = rng.integers(0, 80)
    return img


def test_dalle_untrusted_pickle_refused(dalle_files):
    _, pkl, _ = dalle_files
    assert "dall_e" not in sys.modules
    with pytest.raises(T.UntrustedPickleError, match="trust_pickle=True"):
        T.load_tokenizer("dalle", pkl)


class _Payload:
    """Unpickling this object would create a file: the kind of code an untrusted pickle can run."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_untrusted_code_in_pickle_never_runs(tmp_path):
    target = tmp_path / "pwned.txt"
    torch.save({"blocks.input.w": torch.zeros(1), "x": _Payload(target)}, tmp_path / "evil.pt")
    with pytest.raises(T.UntrustedPickleError, match="trust_pickle"):
        T.load_tokenizer("dalle", tmp_path / "evil.pt")
    with pytest.raises(T.UntrustedPickleError):
        T.convert_dalle_pickle(tmp_path / "evil.pt", tmp_path / "out.pt")
    assert not target.exists()


@pytest.mark.slow
def test_dalle_pickle_and_state_dict_give_reference_tokens(dalle_files, tmp_path):
    enc, pkl, sd = dalle_files
    assert "dall_e" not in sys.modules  # the trusted path must not need OpenAI's package
    tok_pickle = T.load_tokenizer("dalle", pkl, trust_pickle=True)
    tok_state = T.load_tokenizer("dalle", sd)  # weights_only path, no trust needed
    converted = T.convert_dalle_pickle(pkl, tmp_path / "converted.pt", trust_pickle=True)
    tok_conv = T.load_tokenizer("dalle", converted)
    # the converted file really is weights-only loadable
    assert isinstance(torch.load(converted, weights_only=True), dict)

    imgs = _ecg_like_images(5, 64)
    a, b, c = tok_pickle.tokenize(imgs), tok_state.tokenize(imgs), tok_conv.tokenize(imgs)
    assert a.shape == (5, 4, 4) and a.dtype == np.int64  # 64 px -> 32 px view -> 4x4
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert tok_pickle.fingerprint() == tok_state.fingerprint() == tok_conv.fingerprint()

    # reference: the test-built module's own forward on the same 32x32 mapped view
    x = torch.from_numpy(imgs).float()[:, None].expand(-1, 3, -1, -1) / 255
    view = F.interpolate(x, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    with torch.no_grad():
        ref = enc(0.8 * view + 0.1).argmax(1).numpy()
    np.testing.assert_array_equal(a, ref)

    # torch input -> torch output; channels-last RGB gives the same tokens as grey
    t = tok_state.tokenize(torch.from_numpy(np.repeat(imgs[..., None], 3, -1)))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64
    np.testing.assert_array_equal(t.numpy(), a)


@pytest.mark.slow
def test_dalle_full_size_grid():
    # OpenAI's sizes would take long on CPU; the architecture maps a 224 image to 14x14 at any width
    enc = T.DalleEncoder(n_hid=8, n_blk_per_group=1, vocab_size=32)
    tok = T.DalleTokenizer(enc)
    assert tok.grid_for(224) == (14, 14)
    out = tok.tokenize(np.zeros((1, 224, 224), np.uint8))
    assert out.shape == (1, 14, 14)
    # OpenAI's configuration (n_hid 256, 2 blocks per group, vocab 8192): same keys and shapes as the
    # public layout built by the test (53,786,240 parameters)
    ref = _fake_dalle_modules()["dall_e.encoder"].Encoder(n_hid=256, n_blk_per_group=2, vocab_size=8192)
    ours = T.DalleEncoder()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 53_786_240


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(T.TokenizerFileNotFoundError, match="nope.pkl.*encoder.pkl"):
        T.load_tokenizer("dalle", tmp_path / "nope.pkl")
    with pytest.raises(FileNotFoundError, match="fit_kmeans_tokenizer"):
        T.load_tokenizer("ecg_kmeans", tmp_path / "nope.pt")
    with pytest.raises(T.TokenizerError, match="unknown"):
        T.load_tokenizer("vqgan", tmp_path / "x")
    with pytest.raises(T.TokenizerError, match="no weights path given; to provide them: download"):
        T.load_tokenizer("dalle", None)
    with pytest.raises(T.TokenizerError, match="no weights path given; to provide them: fit one"):
        T.load_tokenizer("ecg_kmeans", "")
    torch.save({"foo": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(T.TokenizerError, match="not a DALL-E encoder state dict"):
        T.load_tokenizer("dalle", tmp_path / "other.pt")


@pytest.mark.slow
def test_kmeans_fit_tokenize_save_load(tmp_path):
    from sklearn.cluster import KMeans

    imgs = _ecg_like_images(24, 64, seed=1)
    tok = T.fit_kmeans_tokenizer(imgs[:20], vocab_size=32, seed=0, max_patches=10_000)
    tokens = tok.tokenize(imgs[20:])
    assert tokens.shape == (4, 4, 4) and tokens.dtype == np.int64
    assert tokens.min() >= 0 and tokens.max() < 32

    # oracle: scikit-learn's nearest-centroid assignment on the same features (exact)
    km = KMeans(n_clusters=32, n_init=1)
    km.cluster_centers_ = tok.centroids.numpy().astype(np.float64)
    km._n_threads = 1
    feats = tok.features(imgs[20:]).reshape(-1, 64).numpy().astype(np.float64)
    np.testing.assert_array_equal(tokens.ravel(), km.predict(feats))

    # save/load: .pt is weights_only loadable, .npz without pickle; same tokens, same fingerprint
    for name in ("tok.pt", "tok.npz"):
        path = tok.save(tmp_path / name)
        if name.endswith(".pt"):
            torch.load(path, weights_only=True)
        again = T.load_tokenizer("ecg_kmeans", path)
        np.testing.assert_array_equal(again.tokenize(imgs[20:]), tokens)
        assert again.fingerprint() == tok.fingerprint()

    rep = T.codebook_report(tok, imgs[20:])
    assert 1 <= rep["codes_used"] <= 32 and 1.0 <= rep["perplexity"] <= rep["codes_used"]
    # oracle: the same report from scikit-learn's assignment and numpy (float64)
    labels = km.predict(feats)
    assert rep["codes_used"] == len(np.unique(labels))
    assert rep["recon_mse"] == pytest.approx(((feats - km.cluster_centers_[labels]) ** 2).mean(), rel=1e-5)
    assert rep["mean_patch_mse"] == pytest.approx(((feats - feats.mean(0)) ** 2).mean(), rel=1e-5)
    # k-means must explain patch variance much better than the mean patch
    assert rep["recon_mse"] < 0.5 * rep["mean_patch_mse"]
    # deterministic given the seed
    tok2 = T.fit_kmeans_tokenizer(imgs[:20], vocab_size=32, seed=0, max_patches=10_000)
    assert tok2.fingerprint() == tok.fingerprint()


def test_codebook_usage_oracle():
    u = T.codebook_usage(np.array([[0, 0, 1, 2]]), 8)
    assert u["codes_used"] == 3 and u["majority_code"] == 0 and u["majority_share"] == 0.5
    # perplexity of (1/2, 1/4, 1/4) = exp(1.5 ln 2) = 2^1.5
    assert u["perplexity"] == pytest.approx(2 ** 1.5, rel=1e-12)


def test_token_cache(tmp_path):
    """Tokens are computed once per (tokenizer, render settings), reused, and recomputed for a new tokenizer."""
    calls = []

    def fake_render(x, size=224, layout="stack8", **style):  # (n, 8, T) -> (n, size, size) uint8
        calls.append(len(x))
        v = np.clip(128 + x[:, :, :size].mean(1, keepdims=True) / 10, 0, 255).astype(np.uint8)
        return np.broadcast_to(v, (len(x), size, size)).copy()

    class Store:  # duck-typed cohorts.CohortStore
        root = tmp_path / "store"

        def __len__(self):
            return 10

        def signals(self, idx):
            rng = np.random.default_rng(123)
            x = rng.normal(0, 300, (10, 8, 2500)).astype(np.float32)
            return x[np.asarray(idx)]

    store = Store()
    imgs = fake_render(store.signals(np.arange(10)), 32)
    tok_a = T.fit_kmeans_tokenizer(imgs, vocab_size=8, seed=0)
    tok_b = T.fit_kmeans_tokenizer(imgs, vocab_size=8, seed=1)
    calls.clear()
    t1 = T.precompute_tokens(store, tok_a, size=32, batch_size=4, render_fn=fake_render)
    assert t1.shape == (10, 2, 2) and t1.dtype == np.int16 and sum(calls) == 10
    np.testing.assert_array_equal(t1, tok_a.tokenize(imgs))
    path = T.token_cache_path(store.root, tok_a, 32)
    assert path.exists() and path.with_suffix(".json").exists()
    t2 = T.precompute_tokens(store, tok_a, size=32, render_fn=fake_render)
    assert sum(calls) == 10  # cache hit: nothing rendered
    np.testing.assert_array_equal(t1, t2)
    T.precompute_tokens(store, tok_b, size=32, render_fn=fake_render)  # other tokenizer: other key, recomputed
    assert sum(calls) == 20 and T.token_cache_path(store.root, tok_b, 32) != path
    # other render settings: recomputed
    T.precompute_tokens(store, tok_a, size=32, layout="other", render_fn=fake_render)
    assert sum(calls) == 30
