import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch.utils._python_dispatch import TorchDispatchMode

from trainables.losses import LossContext, LossError, build_loss, get_loss, list_losses

CLASSES = 4


def _context(**overrides) -> LossContext:
    values = dict(
        num_classes=CLASSES,
        embedding_dim=8,
        class_counts=[40, 20, 10, 5],
        gamma=1.5,
        margin=0.5,
        mining="batch_hard",
        center_lambda=0.1,
    )
    values.update(overrides)
    return LossContext(**values)


def _batch(seed: int = 0, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, CLASSES, generator=g) * 2
    embedding = torch.randn(n, 8, generator=g)
    target = torch.arange(n) % CLASSES
    return logits, embedding, target


def test_focal_with_gamma_zero_and_no_alpha_is_cross_entropy():
    logits, embedding, target = _batch()
    focal = build_loss("focal", _context(gamma=0.0))
    assert torch.allclose(focal(logits, embedding, target), F.cross_entropy(logits, target))


def test_focal_matches_a_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    target = torch.tensor([0, 2])
    gamma = 1.5
    expected = []
    for row, t in zip(logits.numpy(), target.numpy(), strict=True):
        p = np.exp(row) / np.exp(row).sum()
        expected.append(-((1 - p[t]) ** gamma) * np.log(p[t]))
    value = build_loss("focal", _context(gamma=gamma))(logits, torch.zeros(2, 8), target)
    assert value.item() == pytest.approx(float(np.mean(expected)), rel=1e-6)


def test_focal_down_weights_easy_examples_relative_to_cross_entropy():
    logits, embedding, target = _batch()
    ce = F.cross_entropy(logits, target)
    assert build_loss("focal", _context(gamma=2.0))(logits, embedding, target) < ce


def test_focal_balanced_alpha_weights_each_sample_by_its_class():
    logits, embedding, target = _batch()
    alpha = torch.tensor(
        compute_class_weight(
            "balanced", classes=np.arange(4), y=np.repeat(np.arange(4), [40, 20, 10, 5])
        ),
        dtype=torch.float32,
    )
    loss = build_loss("focal", _context(gamma=0.0, alpha="balanced"))(logits, embedding, target)
    per_sample = F.cross_entropy(logits, target, reduction="none") * alpha[target]
    assert loss.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)


def test_weighted_cross_entropy_uses_scikit_learn_balanced_weights():
    logits, embedding, target = _batch()
    counts = [40, 20, 10, 5]
    weights = compute_class_weight(
        "balanced", classes=np.arange(4), y=np.repeat(np.arange(4), counts)
    )
    reference = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
    loss = build_loss("weighted-ce", _context(class_counts=counts))(logits, embedding, target)
    assert loss.item() == pytest.approx(reference(logits, target).item(), rel=1e-6)


def test_bce_is_bce_with_logits_on_one_hot_targets():
    logits, embedding, target = _batch()
    reference = F.binary_cross_entropy_with_logits(logits, F.one_hot(target, CLASSES).float())
    assert torch.allclose(build_loss("bce", _context())(logits, embedding, target), reference)


def test_multilabel_focal_with_gamma_zero_is_bce():
    logits, embedding, _ = _batch()
    target = (torch.rand(logits.shape, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    focal = build_loss("focal", _context(gamma=0.0, multilabel=True))
    reference = F.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(focal(logits, embedding, target), reference, atol=1e-6)


@pytest.mark.parametrize("name", list_losses())
def test_every_registered_loss_gives_a_finite_gradient(name):
    logits, embedding, target = _batch()
    logits.requires_grad_(True)
    embedding.requires_grad_(True)
    criterion = build_loss(name, _context())
    loss = criterion(logits, embedding, target)
    loss.backward()
    assert torch.isfinite(loss)
    grad = embedding.grad if not get_loss(name).trains_head else logits.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_unknown_loss_names_the_accepted_ones():
    with pytest.raises(LossError, match="accepted: .*focal"):
        get_loss("hinge")


def test_single_label_loss_refuses_multilabel_data():
    with pytest.raises(LossError, match="multi-label"):
        build_loss("ce", _context(multilabel=True))


def test_focal_refuses_negative_gamma():
    with pytest.raises(LossError, match="gamma"):
        build_loss("focal", _context(gamma=-1.0))


def test_center_loss_matches_its_formula():
    logits, embedding, target = _batch()
    criterion = build_loss("center", _context(center_lambda=0.3))
    centers = criterion.centers.detach().numpy()
    e, t = embedding.numpy(), target.numpy()
    pull = np.mean([np.sum((e[i] - centers[t[i]]) ** 2) / 2 for i in range(len(t))])
    expected = F.cross_entropy(logits, target).item() + 0.3 * pull
    assert criterion(logits, embedding, target).item() == pytest.approx(expected, rel=1e-5)


def test_center_loss_moves_the_centers_towards_their_class():
    logits, embedding, target = _batch()
    criterion = build_loss("center", _context(center_lambda=1.0))
    before = (embedding - criterion.centers[target]).pow(2).sum().item()
    optimizer = torch.optim.SGD(criterion.parameters(), lr=0.5)
    criterion(logits, embedding, target).backward()
    optimizer.step()
    assert (embedding - criterion.centers[target]).pow(2).sum().item() < before


def test_batch_hard_mining_picks_the_farthest_positive_and_nearest_negative():
    from trainables.losses import mine_triplets

    embedding = torch.tensor([[0.0], [1.0], [3.0], [1.5], [10.0]])
    target = torch.tensor([0, 0, 0, 1, 1])
    a, p, n = mine_triplets(embedding, target, "batch_hard")
    assert a.tolist() == [0, 1, 2, 3, 4]
    assert p.tolist() == [2, 2, 0, 4, 3]
    assert n.tolist() == [3, 3, 3, 1, 2]


def _gathered_reference(embedding, target, margin, mining):
    """PyTorch's own loss on the mined triplets' embeddings, gathered (as the loss once did)."""
    from trainables.losses import mine_triplets

    a, p, n = mine_triplets(embedding, target, mining)
    losses = F.triplet_margin_loss(
        embedding[a], embedding[p], embedding[n], margin=margin, reduction="none"
    )
    return losses[losses > 0].mean() if mining == "batch_all" else losses.mean()


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
@pytest.mark.parametrize(("n", "dim", "classes", "scale"), [(16, 8, 4, 1.0), (96, 64, 10, 0.05)])
def test_triplet_loss_and_gradient_equal_pytorchs_on_the_gathered_triplets(
    mining, n, dim, classes, scale
):
    g = torch.Generator().manual_seed(n)
    embedding = (torch.randn(n, dim, generator=g) * scale).requires_grad_()
    target = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    margin = 0.7 * scale
    ctx = _context(margin=margin, mining=mining, embedding_dim=dim)
    only = build_loss("triplet-only", ctx)(logits, embedding, target)
    (grad,) = torch.autograd.grad(only, embedding)
    reference = _gathered_reference(embedding, target, margin, mining)
    (expected_grad,) = torch.autograd.grad(reference, embedding)
    assert reference.item() > 0
    assert only.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4 * grad.abs().max())
    combined = build_loss("triplet", ctx)(logits, embedding, target)
    expected = reference + F.cross_entropy(logits, target)
    assert combined.item() == pytest.approx(expected.item(), rel=1e-5)


def test_batch_all_mining_lists_every_valid_triplet():
    from trainables.losses import mine_triplets

    _, embedding, target = _batch(seed=2)
    a, p, n = mine_triplets(embedding, target, "batch_all")
    assert len(a) == sum(
        1
        for i in range(len(target))
        for j in range(len(target))
        for k in range(len(target))
        if i != j and target[i] == target[j] and target[i] != target[k]
    )


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet_distance_adds_pytorchs_eps_to_the_difference(mining):
    # Two copies of one point are sqrt(dim) * 1e-6 apart for F.pairwise_distance: with the
    # negative at exactly the margin, that alone makes the loss positive.
    dim, margin = 100, 0.1
    anchor = torch.zeros(dim)
    negative = anchor.clone()
    negative[0] = margin
    embedding = torch.stack([anchor, anchor, negative, negative])
    target = torch.tensor([0, 0, 1, 1])
    ctx = _context(margin=margin, mining=mining, embedding_dim=dim)
    loss = build_loss("triplet-only", ctx)(None, embedding, target)
    expected = _gathered_reference(embedding, target, margin, mining)
    assert expected.item() == pytest.approx(1e-5, rel=0.2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-3)


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet_loss_of_a_non_finite_embedding_is_not_finite(mining):
    logits, embedding, target = _batch(seed=3)
    embedding[5, 2] = float("nan")
    loss = build_loss("triplet", _context(mining=mining))(logits, embedding, target)
    assert not torch.isfinite(loss)


class _LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in torch.utils._pytree.tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.numel = max(self.numel, value.numel())
        return out


def _largest_tensor(mining: str, n: int) -> int:
    g = torch.Generator().manual_seed(0)
    embedding = torch.randn(n, 8, generator=g).requires_grad_()
    target = torch.arange(n) % 4
    criterion = build_loss("triplet-only", _context(mining=mining))
    with _LargestTensor() as largest:
        criterion(None, embedding, target).backward()
    return largest.numel


@pytest.mark.parametrize("mining", ["batch_hard", "batch_all"])
def test_triplet_loss_memory_grows_with_the_square_of_the_batch_not_its_cube(mining):
    # Gathering every triplet's embeddings took 9 GB for an evaluation batch of 256; from the
    # distance matrix, the largest tensor is N x N (N x N+1 for batch_all's running sums).
    small, large = _largest_tensor(mining, 64), _largest_tensor(mining, 128)
    assert large <= 4.2 * small
    assert large <= 2 * 128 * 128


def test_embedding_losses_need_an_embedding_layer():
    with pytest.raises(LossError, match="needs an embedding layer"):
        build_loss("triplet", _context(embedding_dim=0))
