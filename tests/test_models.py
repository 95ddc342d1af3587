import pytest
import torch
import torch.nn as nn

import rbzoo
from rbzoo.layers import SubnetConv2d, kept_count, top_mask
from rbzoo.models import create_model, list_models
from rbzoo.models._registry import fold
from rbzoo.pruning import allocate_keep, score_bound, subnet_layers

# method.md §1.5: (arch, classes, prunable layers, N, kept total, stem k, classifier k)
TABLE = [
    ("cifar_resnet18", 10, 21, 11_164_352, 111_662, 1.0, 0.7507),
    ("cifar_resnet34", 10, 37, 21_265_088, 212_685, 1.0, 0.7746),
    ("cifar_resnet50", 10, 54, 23_467_712, 234_729, 1.0, 0.1716),
    ("cifar_resnet18", 100, 21, 11_210_432, 112_123, 1.0, 0.0941),
    ("cifar_resnet34", 100, 37, 21_311_168, 213_146, 1.0, 0.0973),
    ("cifar_resnet50", 100, 54, 23_652_032, 236_572, 1.0, 0.0217),
    ("imagenet_resnet34", 100, 37, 21_318_848, 213_224, 0.4418, 0.0962),
    ("imagenet_resnet50", 100, 54, 23_659_712, 236_650, 0.3449, 0.0216),
]


@pytest.mark.parametrize("arch,classes,layers,N,kept,stem_k,fc_k", TABLE)
def test_kept_counts_match_method_table(arch, classes, layers, N, kept, stem_k, fc_k):
    model = create_model(arch, num_classes=classes, keep=0.01, p=0.1, end_with_bn=True, materialize=False)
    convs = subnet_layers(model)
    assert len(convs) == layers
    assert sum(m.numel for _, m in convs) == N
    assert sum(m.kept for _, m in convs) == kept
    assert convs[0][0] == "conv1.weight" and round(convs[0][1].keep, 4) == stem_k
    assert convs[-1][0] == "fc.weight" and round(convs[-1][1].keep, 4) == fc_k


def test_resnet34_layer_by_layer():
    model = create_model("cifar_resnet34", keep=0.01, p=0.1, materialize=False)
    kept = {k: m.kept for k, m in subnet_layers(model)}
    assert kept["conv1.weight"] == 1728
    assert kept["layer1.0.conv1.weight"] == 4832
    assert kept["layer2.0.conv1.weight"] == 5179
    assert kept["layer2.0.shortcut.0.weight"] == 4157
    assert kept["layer3.0.conv1.weight"] == 5949
    assert kept["layer3.0.shortcut.0.weight"] == 4775
    assert kept["layer4.0.conv1.weight"] == 6834
    assert kept["layer4.0.shortcut.0.weight"] == 5486
    assert kept["fc.weight"] == 3966
    assert {kept[f"layer4.{b}.conv{c}.weight"] for b in range(3) for c in (1, 2) if (b, c) != (0, 1)} <= {7325, 7326}


def test_allocation_worked_example():
    ks = allocate_keep([100, 10_000, 1_000_000], 0.01, 0.1)
    assert ks[0] == 1.0
    assert abs(ks[1] - 0.3869) < 1e-4 and abs(ks[2] - 0.006132) < 1e-6
    ns = [100, 10_000, 1_000_000]
    assert [int(k * n) for n, k in zip(ns, ks)] == [100, 3869, 6131]  # the budget's truncation
    assert [n - int((1 - k) * n) for n, k in zip(ns, ks)] == [100, 3870, 6132]  # the mask's ceiling
    ks = allocate_keep([100, 10_000, 1_000_000], 0.01, 0.5)
    assert [round(k, 4) for k in ks] == [0.9100, 0.0910, 0.0091]
    assert allocate_keep([5, 50, 500], 0.2, 1.0) == pytest.approx([0.2, 0.2, 0.2])


def test_allocation_keeps_input_order_and_validates():
    assert allocate_keep([1_000_000, 100], 0.01, 0.1)[1] == 1.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            allocate_keep([10], bad, 0.5)
    with pytest.raises(ValueError):
        allocate_keep([10], 0.5, 1.5)


def test_kept_count_is_paper_ceiling():
    assert kept_count(100, 0.01) == 1
    assert kept_count(36864, 0.13106) == 36864 - int((1 - 0.13106) * 36864)
    assert kept_count(10, 1.0) == 10


def test_score_bound_modes():
    assert score_bound(0.01, "none", 576, False) == 0.01
    assert score_bound(1.0, "all", 576, False) == pytest.approx(1 / 24)
    assert score_bound(1.0, "except_last", 576, True) == 1.0
    assert score_bound(1.0, "only_last", 576, True) == pytest.approx(1 / 24)
    assert score_bound(1.0, "only_last", 576, False) == 1.0
    with pytest.raises(ValueError):
        score_bound(1.0, "bogus", 1, False)


def test_scores_uniform_and_reproducible():
    a = create_model("tiny_resnet", seed=5, score_init_scale=0.01)
    b = create_model("tiny_resnet", seed=5, score_init_scale=0.01)
    for (_, ma), (_, mb) in zip(subnet_layers(a), subnet_layers(b)):
        assert torch.equal(ma.scores, mb.scores) and torch.equal(ma.weight, mb.weight)
        assert ma.scores.abs().max() <= 0.01
    c = create_model("tiny_resnet", seed=6)
    assert not torch.equal(subnet_layers(a)[1][1].weight, subnet_layers(c)[1][1].weight)


def test_module_names_follow_official_code():
    names = create_model("cifar_resnet18", end_with_bn=True, materialize=False).prunable_keys
    assert "layer2.0.shortcut.0.weight" in names and names[-1] == "fc.weight"
    inames = create_model("imagenet_resnet18", materialize=False).prunable_keys
    assert "layer2.0.downsample.0.weight" in inames
    keys = create_model("cifar_resnet18", end_with_bn=True, materialize=False).state_dict().keys()
    assert "last.running_mean" in keys and "layer2.0.shortcut.1.running_var" in keys
    assert not any(k.startswith("normalize") for k in keys)


def test_dense_first_last_layers_are_not_prunable():
    m = create_model("cifar_resnet18", first_layer_dense=True, last_layer_dense=True, materialize=False)
    assert "conv1.weight" not in m.prunable_keys and "fc.weight" not in m.prunable_keys
    assert isinstance(m.conv1, nn.Conv2d) and not isinstance(m.conv1, SubnetConv2d)
    assert create_model("imagenet_resnet18", last_layer_dense=True, materialize=False).fc.bias is not None


@pytest.mark.parametrize("arch", list_models())
def test_forward_shapes(arch):
    size = 64 if arch.startswith("imagenet") else 32
    m = create_model(arch, keep=0.05, p=0.1, end_with_bn=True, num_classes=7).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 3, size, size)).shape == (2, 7)


def test_top_mask_keeps_largest_abs():
    s = torch.tensor([0.1, -0.9, 0.3, -0.2, 0.8])
    assert top_mask(s, 2).tolist() == [False, True, False, False, True]
    assert top_mask(s, 5).all() and not top_mask(s, 0).any()


def test_straight_through_gradient():
    conv = SubnetConv2d(2, 3, 3, padding=1, keep=0.5)
    conv.set_signs(1, "c.weight")
    conv.init_scores(1.0, torch.Generator().manual_seed(0))
    x = torch.rand(4, 2, 5, 5)
    conv(x).square().sum().backward()
    # reference: gradient w.r.t. the effective weight, then × W × sign(s) for every weight
    w_eff = (conv.weight * conv.mask()).requires_grad_(True)
    torch.nn.functional.conv2d(x, w_eff, padding=1).square().sum().backward()
    expected = w_eff.grad * conv.weight * torch.sign(conv.scores.detach())
    assert torch.allclose(conv.scores.grad, expected, atol=1e-6)
    assert (conv.scores.grad[~conv.mask()] != 0).any()  # pruned weights get gradient too


def test_mask_cached_until_scores_change(monkeypatch):
    conv = SubnetConv2d(4, 4, 3, keep=0.3)
    conv.init_scores(1.0, torch.Generator().manual_seed(0))
    calls = []
    import rbzoo.layers as L

    real = L.top_mask
    monkeypatch.setattr(L, "top_mask", lambda s, k: calls.append(1) or real(s, k))
    x = torch.rand(1, 4, 6, 6)
    for _ in range(5):
        conv(x)
    assert len(calls) == 1
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    conv(x).sum().backward()
    opt.step()
    conv(x)
    assert len(calls) == 2


def test_fold_gives_identical_logits():
    m = create_model("tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, seed=3, score_init_scale=1.0).eval()
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        y = m(x)
        f = fold(m)
        assert not any(isinstance(mod, SubnetConv2d) for mod in f.modules())
        assert torch.equal(f(x), y)


def test_create_model_errors():
    with pytest.raises(KeyError):
        rbzoo.create_model("resnet1000")
    with pytest.raises(ValueError):
        rbzoo.create_model("tiny_resnet", keep=0.0)
