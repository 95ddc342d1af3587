"""The CPU top-k: exactly the `kept` largest |scores|, ties split by flat index as `ties` says."""

import math

import pytest
import torch

import rbzoo
from rbzoo.layers import _band_select, kept_count, top_mask
from topk_reference import keep_lower as _reference
from topk_reference import sort_mask


def _scores(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(n, generator=g)
    if kind == "ties":  # few distinct values: the boundary always falls inside a tie
        return torch.randint(-4, 5, (n,), generator=g).float()
    if kind == "zeros":
        s = torch.zeros(n)
        s[: n // 3] = torch.randn(n // 3, generator=g)
        return s
    # structured: magnitude grows along the flat index, like per-channel score scales
    return torch.randn(n, generator=g) * torch.linspace(0.01, 3.0, n)


@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "structured"])
@pytest.mark.parametrize("n", [7, 4096, 4097, 36864, 120_000])
def test_top_mask_is_exact(kind, n):
    g = torch.Generator().manual_seed(n)
    s = _scores(kind, n, g).view(-1, 1) if n % 2 else _scores(kind, n, g).view(2, -1)
    for k in sorted({0, 1, n // 100, n // 7, n // 2, n - 1, n}):
        mask = top_mask(s, k)
        assert mask.shape == s.shape and mask.dtype == torch.bool
        assert int(mask.sum()) == k
        assert torch.equal(mask, _reference(s, k)), (kind, n, k)


def test_ties_at_the_cut_low_keeps_the_lower_index_high_the_higher():
    s = torch.tensor([0.5, -2.0, 2.0, 2.0, 3.0, 0.1])  # |s| = 2 three times; two of them fit the cut
    assert top_mask(s, 3).tolist() == [False, True, True, False, True, False]
    assert top_mask(s, 3, ties="high").tolist() == [False, False, True, True, True, False]
    assert top_mask(s.view(2, 3), 3, ties="high").shape == (2, 3)
    with pytest.raises(ValueError, match="ties"):
        top_mask(s, 3, ties="stable")


@pytest.mark.parametrize("n", [7, 4096, 36864, 120_000])  # the full-sort and the band paths
def test_ties_high_is_the_official_stable_ascending_sort(n):
    g = torch.Generator().manual_seed(n)
    s = _scores("ties", n, g)
    for keep in (0.01, 0.1, 0.5, 0.9):
        kept = kept_count(n, keep)
        high, low = top_mask(s, kept, ties="high"), top_mask(s, kept)
        assert torch.equal(high, sort_mask(s, keep)), (n, keep)
        assert torch.equal(low, _reference(s, kept)), (n, keep)
        ordered = s.abs().sort(descending=True).values
        straddle = 0 < kept < n and bool(ordered[kept - 1] == ordered[kept])
        assert torch.equal(high, low) != straddle, (n, keep)  # the rules differ exactly on a tie at the cut


def test_band_select_checks_its_bracket():
    a = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    for k in (10, 100_000, 199_990):
        exact = _reference(a, k)
        for z in (0.0, 4.0, math.inf):  # z = 0 may miss (None), but never returns a wrong mask
            mask = _band_select(a, k, z)
            assert mask is None or torch.equal(mask, exact)
        assert _band_select(a, k, math.inf) is not None


def test_training_masks_match_reference_every_step():
    m = rbzoo.create_model("tiny_resnet", width=32, keep=0.1, p=0.5, seed=0, score_init_scale=1.0)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    layers = [mod for mod in m.modules() if isinstance(mod, rbzoo.layers.SubnetConv2d)]
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        m(x)
        for layer in layers:
            assert torch.equal(layer.mask(), _reference(layer.scores, layer.kept))
            assert torch.equal(layer.effective_weight(), layer.weight * layer.mask())


def test_nan_scores_rank_first_like_topk():
    s = torch.randn(20_000, generator=torch.Generator().manual_seed(1))
    s[::9] = float("nan")
    mask = top_mask(s, 5_000)
    assert int(mask.sum()) == 5_000 and bool(mask[::9].all())


def test_training_after_an_inference_mode_forward():
    # The cached effective weight of an inference-mode forward cannot be saved by autograd.
    m = rbzoo.create_model("tiny_resnet", width=32, keep=0.1, p=0.5, seed=0)
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    with torch.inference_mode():
        m.eval()(x)
    torch.nn.functional.cross_entropy(m.train()(x), y).backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_strided_pointwise_conv_on_channels_last_cpu_input_trains():
    # oneDNN's AVX2 weight gradient for this case crashes the process (torch 2.14.1); the layer
    # computes it as a stride-1 convolution of the subsampled input: same outputs, same gradients.
    from rbzoo.layers import SubnetConv2d

    torch.manual_seed(0)
    conv = SubnetConv2d(8, 16, 1, 2, 0, keep=0.5)
    torch.nn.init.normal_(conv.scores)
    x = torch.rand(4, 8, 9, 9)
    outs = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        conv.scores.grad = None
        xi = x.clone().contiguous(memory_format=fmt).requires_grad_(True)
        y = conv(xi)
        (y * torch.arange(y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), conv.scores.grad.clone(), xi.grad.clone()))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)
