import copy

import pytest
import reference as ref
import torch

from dbm_ltr.losses import create_loss
from dbm_ltr.losses.contrastive import balanced_contrastive_loss
from dbm_ltr.methods import create_method

COUNTS = [50, 20, 8, 4]


def build(name, loss_name="bs", classifier="linear", counts=COUNTS, **params):
    loss = create_loss(loss_name, counts, **({"base": "bs"} if loss_name == "dbm" else {}))
    return create_method(
        name,
        trunk="resnet32",
        classifier=classifier,
        num_classes=len(counts),
        cls_num_list=counts,
        loss=loss,
        loss_name=loss_name,
        **params,
    )


def views(n, k=8):
    return [torch.randn(k, 3, 32, 32) for _ in range(n)]


@pytest.mark.parametrize("loss_name,classifier", [("bs", "linear"), ("dbm", "cosine")])
def test_bcl_shapes_loss_composition_and_one_step(loss_name, classifier):
    torch.manual_seed(0)
    method = build("bcl", loss_name, classifier)
    assert method.views == ("regular", "contrastive", "contrastive")
    assert method.prototypes().shape == (4, 128)
    # the prototype head maps each class's raw (un-normalised) classifier vector
    head = method.model.head
    raw = head.weight.t() if classifier == "cosine" else head.weight  # (C, D) either way
    method.eval()
    torch.testing.assert_close(
        method.prototypes(), torch.nn.functional.normalize(method.prototype(raw.detach()), dim=1)
    )
    if classifier == "cosine":  # raw, not unit vectors: scaling one class's vector changes its prototype
        before = method.prototypes()[1].clone()
        with torch.no_grad():
            head.weight[:, 1] *= 3.0
        assert not torch.allclose(method.prototypes()[1], before)
    method.train()
    x, y = views(3), torch.tensor([0, 0, 1, 1, 2, 2, 3, 0])
    out = method(x, y, epoch=0)
    assert out.scores.shape == (8, 4)
    # alpha * CE-part + beta * BSC, recomputed by hand from the same modules
    method.eval()  # deterministic BN for the recomputation
    out = method(x, y, epoch=0)
    f = method.model.trunk(torch.cat(x))
    cls = method.loss(method.model.head(f[:8]), y, epoch=0)
    anchors = torch.nn.functional.normalize(method.projection(f[8:]), dim=1)
    bsc = balanced_contrastive_loss(anchors, y.repeat(2), method.prototypes(), 0.1)
    assert out.loss.item() == pytest.approx((2.0 * cls + 0.6 * bsc).item(), rel=1e-5)
    method.train()
    opt = torch.optim.SGD(method.parameters(), lr=0.01)
    before = method.model.head.weight.detach().clone()
    method(x, y, epoch=0).loss.backward()
    assert method.prototype[0].weight.grad is not None and method.model.head.weight.grad is not None
    opt.step()
    assert not torch.equal(before, method.model.head.weight)
    with torch.no_grad():
        assert method.predict(x[0]).shape == (8, 4)


@pytest.mark.parametrize("loss_name,classifier", [("bs", "linear"), ("dbm", "cosine")])
def test_ncl_one_step_queue_and_momentum_encoder(loss_name, classifier):
    torch.manual_seed(0)
    method = build("ncl", loss_name, classifier, queue_size=16, moco_momentum=0.9)
    assert method.views == ("regular", "contrastive") and len(method.experts) == 3
    assert method.hard_k == 1  # int(0.3 * 4)
    assert not any(p.requires_grad for p in method.key_trunks.parameters())
    x, y = views(2), torch.tensor([0, 0, 1, 1, 2, 2, 3, 0])
    queue_before = method.queues.clone()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)
    out = method(x, y, epoch=0)
    assert out.scores.shape == (8, 4) and torch.isfinite(out.loss)
    assert method.queue_ptr.tolist() == [8, 8, 8]
    assert not torch.equal(queue_before[:, :8], method.queues[:, :8])
    assert torch.equal(queue_before[:, 8:], method.queues[:, 8:])
    out.loss.backward()
    opt.step()
    # the key trunk moves toward the (updated) query trunk at the next step
    q = next(method.experts[0].trunk.parameters())
    k_before = next(method.key_trunks[0].parameters()).clone()
    method(x, y, epoch=0)
    k_after = next(method.key_trunks[0].parameters())
    torch.testing.assert_close(k_after, 0.9 * k_before + 0.1 * q.detach())
    assert method.queue_ptr.tolist() == [0, 0, 0]  # wrapped around the 16-entry queue
    with torch.no_grad():
        mean = torch.stack([e(x[0]) for e in method.experts]).mean(0)
        torch.testing.assert_close(method.predict(x[0]), mean)


COUNTS10 = [100, 70, 50, 30, 20, 12, 8, 5, 3, 2]


def _kl_sum(logits, weight):
    """NBOD written out: weight / (E - 1) * sum_{i != j} mean_b KL(p_j || p_i), log(p_i + 1e-9)."""
    log_probs = [torch.log_softmax(a, dim=1) for a in logits]
    total = 0.0
    for i, lp_i in enumerate(log_probs):
        for j, lp_j in enumerate(log_probs):
            if i != j:
                total += (lp_j.exp() * (lp_j - (lp_i.exp() + 1e-9).log())).sum(dim=1).mean().item()
    return weight / (len(logits) - 1) * total


@pytest.mark.parametrize("loss_name,classifier", [("bs", "linear"), ("dbm", "cosine")])
def test_ncl_loss_is_its_terms_written_out(loss_name, classifier):
    """Ten classes (k = 3 hard categories): the mask from expert 0's raw output, a_i = z_i +
    log n_c, a_i^H = a_i * M, CE and HCM summed over the experts, MoCo against the queue, and
    the two distillation terms, recomputed from the experts' outputs."""
    torch.manual_seed(0)
    # moco_momentum 1: the key encoders stay as they are, so the keys can be computed beforehand
    method = build("ncl", loss_name, classifier, counts=COUNTS10, queue_size=16, moco_momentum=1.0)
    assert method.hard_k == 3
    method.eval()  # BatchNorm from running statistics: the same outputs twice
    with torch.no_grad():
        method.queues.copy_(torch.nn.functional.normalize(torch.randn_like(method.queues), dim=2))
    x_p, x_k = views(2)
    y = torch.tensor([0, 1, 2, 3, 9, 8, 7, 0])
    with torch.no_grad():
        feats = [e.trunk(x_p) for e in method.experts]
        raws = [e.head(f).double() for e, f in zip(method.experts, feats)]
        queries = [torch.nn.functional.normalize(h(f).double(), dim=1) for h, f in zip(method.query_heads, feats)]
        keys = [
            torch.nn.functional.normalize(h(t(x_k)).double(), dim=1)
            for h, t in zip(method.key_heads, method.key_trunks)
        ]
        queues = method.queues.double().clone()
    log_n = torch.tensor(COUNTS10, dtype=torch.float64).log()
    mask = torch.zeros(8, 10, dtype=torch.float64)
    for b in range(8):  # the target and the two highest other classes of expert 0
        others = sorted((c for c in range(10) if c != y[b]), key=lambda c: -raws[0][b, c].item())
        for c in [y[b].item(), *others[:2]]:
            mask[b, c] = 1.0
    if loss_name == "dbm":
        z = [torch.tensor(ref.dbm_logits(r.tolist(), y.tolist(), COUNTS10), dtype=torch.float64) for r in raws]
    else:
        z = raws
    full = [zi + log_n for zi in z]
    hard = [a * mask for a in full]
    ce = sum(ref.cross_entropy(a.tolist(), y.tolist()) for a in full)
    hcm = sum(ref.cross_entropy(a.tolist(), y.tolist()) for a in hard)
    moco = 0.0
    for q, k, queue in zip(queries, keys, queues):
        logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.t()], dim=1) / 0.2
        moco += ref.cross_entropy(logits.tolist(), [0] * 8)
    want = ce + hcm + moco + _kl_sum(full, 0.6) + _kl_sum(hard, 0.6)
    got = method([x_p, x_k], y, epoch=0).loss.item()
    assert got == pytest.approx(want, rel=1e-5)


def test_ncl_balanced_logits_use_dbm_margins():
    method = build("ncl", "dbm", "cosine")
    cos = torch.rand(5, 4) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 3])
    want = method.loss.margin_logits(cos, y) + torch.tensor(COUNTS, dtype=torch.float).log()
    torch.testing.assert_close(method.balanced_logits(cos, y), want)


def test_ncl_reference_code_options_and_errors():
    method = build("ncl", key_init="random", key_head="frozen")
    head_before = next(method.key_heads[0].parameters()).clone()
    method(views(2), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), epoch=0)
    assert torch.equal(head_before, next(method.key_heads[0].parameters()))  # frozen
    with pytest.raises(ValueError, match="balanced logits"):
        build("ncl", "ce")
    with pytest.raises(ValueError, match="key_init must be one of"):
        build("ncl", key_init="zeros")
    with pytest.raises(ValueError, match="two views"):
        build("ncl")(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), epoch=0)
    with pytest.raises(ValueError, match="set model.classifier=cosine"):
        build("bcl", "dbm", "linear")


def _linear_weights(module):
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Linear)]


def test_head_init_kaiming_or_pytorchs_own():
    """head_init=pytorch leaves the extra heads (BCL projection and prototype, NCL MoCo heads and
    linear classifiers) at nn.Linear's U(+-1/sqrt(fan_in)), as the reference code builds them
    beside the trunk; kaiming (the default) gives Kaiming-normal weights."""
    bound = 1 / 8  # fan-in 64, the ResNet-32 feature
    bcl, ncl = build("bcl", head_init="pytorch"), build("ncl", head_init="pytorch")
    heads = [bcl.projection, bcl.prototype, *ncl.query_heads, *ncl.key_heads, *(e.head for e in ncl.experts)]
    weights = [w for head in heads for w in _linear_weights(head)]
    assert len(weights) == 2 + 2 + 6 + 6 + 3 and all(w.abs().max() <= bound for w in weights)
    bcl, ncl = build("bcl"), build("ncl")
    for head in (bcl.projection, ncl.query_heads[0], ncl.experts[0].head):
        first = _linear_weights(head)[0]
        assert first.abs().max() > bound and first.std().item() == pytest.approx(0.1768, rel=0.15)
    cosine = build("ncl", "dbm", "cosine", head_init="pytorch").experts[0].head
    assert cosine.weight.norm(dim=0).allclose(torch.ones(4))  # a cosine classifier keeps its own init
    for name in ("bcl", "ncl"):
        with pytest.raises(ValueError, match="head_init must be one of kaiming, pytorch, got 'xavier'"):
            build(name, head_init="xavier")


@pytest.mark.parametrize("order", ["before_keys", "after_keys"])
def test_ncl_momentum_update_before_or_after_the_keys(order):
    """MoCo moves the key encoders, then encodes the batch's keys; the NCL code encodes the keys
    with the encoders as they were and moves them afterwards. Either way the encoders move once
    per step by ``K <- m K + (1 - m) Q``; the queue shows which encoder made the keys."""
    torch.manual_seed(0)
    m = 0.9
    method = build("ncl", key_init="random", key_head="frozen", moco_momentum=m, momentum_update=order)
    before = [copy.deepcopy(k) for k in method.key_trunks]
    moved = [copy.deepcopy(k) for k in method.key_trunks]
    with torch.no_grad():
        for key, expert in zip(moved, method.experts):
            for p_k, p_q in zip(key.parameters(), expert.trunk.parameters()):
                p_k.copy_(m * p_k + (1 - m) * p_q)
    x_p, x_k = views(2)
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    method([x_p, x_k], targets, epoch=0)
    encoders = moved if order == "before_keys" else before
    for i, (trunk, head) in enumerate(zip(encoders, method.key_heads)):
        with torch.no_grad():
            want = torch.nn.functional.normalize(head(trunk.train()(x_k)), dim=1)
        torch.testing.assert_close(method.queues[i, :8], want)
        for p_k, p_want in zip(method.key_trunks[i].parameters(), moved[i].parameters()):
            torch.testing.assert_close(p_k, p_want)
    with pytest.raises(ValueError, match="momentum_update must be one of"):
        build("ncl", momentum_update="never")


def _hand_projection(head, x):
    """The projection MLP written out: Linear -> BatchNorm (train mode: this batch's mean and
    biased variance) -> ReLU -> Linear, from the head's own parameters."""
    lin1, bn, _, lin2 = head
    h = x @ lin1.weight.t() + lin1.bias
    mean, var = h.mean(dim=0), h.var(dim=0, unbiased=False)
    h = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    return torch.relu(h) @ lin2.weight.t() + lin2.bias


@pytest.mark.parametrize("projection_views", ["all", "contrastive"])
def test_bcl_projection_batch_matches_a_hand_built_step(projection_views):
    """ "all" (the BCL code): the projection head runs on the 3B features of all views and
    view 1's projections are dropped, so its BatchNorm statistics, and through them the
    contrastive gradient, include view 1. "contrastive": the head sees views 2 and 3 only.
    One step's loss and gradients equal a hand-built version of each."""
    torch.manual_seed(0)
    method = build("bcl", "dbm", "cosine", projection_views=projection_views)
    x, y = views(3), torch.tensor([0, 0, 1, 1, 2, 2, 3, 0])
    out = method(x, y, epoch=0)
    method.zero_grad()
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}

    method.zero_grad()
    f = method.model.trunk(torch.cat(x))  # the trunk in train mode, as in the step
    b = y.shape[0]
    projected = _hand_projection(method.projection, f if projection_views == "all" else f[b:])
    anchors = torch.nn.functional.normalize(projected[-2 * b :], dim=1)
    cls = method.loss(method.model.head(f[:b]), y, epoch=0)
    bsc = balanced_contrastive_loss(anchors, y.repeat(2), method.prototypes(), 0.1)
    want_loss = 2.0 * cls + 0.6 * bsc
    want_loss.backward()
    want = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    assert out.loss.item() == pytest.approx(want_loss.item(), rel=1e-5)
    assert got.keys() == want.keys()
    for name in got:
        if name in ("projection.0.bias", "prototype.0.bias"):  # in front of a BatchNorm: the
            # gradient is zero, both sides hold float32 rounding noise
            assert got[name].abs().max() < 1e-6 and want[name].abs().max() < 1e-6
            continue
        error = (got[name] - want[name]).abs().max().item()  # float32 noise is ~1e-6 relative
        assert error <= 1e-4 * want[name].abs().max().item(), name


def test_bcl_projection_views_change_the_statistics_and_are_checked():
    torch.manual_seed(0)
    x, y = views(3), torch.tensor([0, 0, 1, 1, 2, 2, 3, 0])
    losses = {}
    for mode, first in (("all", 0), ("contrastive", 8)):
        torch.manual_seed(0)
        method = build("bcl", projection_views=mode)
        losses[mode] = method(x, y, epoch=0).loss
        with torch.no_grad():  # BatchNorm running mean after one step: 0.1 * this batch's mean
            f = method.model.trunk(torch.cat(x))[first:]
            hidden = method.projection[0](f)
        torch.testing.assert_close(method.projection[1].running_mean, 0.1 * hidden.mean(dim=0))
    assert not torch.isclose(losses["all"], losses["contrastive"])  # the BatchNorm batch differs
    with pytest.raises(ValueError, match="projection_views must be one of all, contrastive"):
        build("bcl", projection_views="views23")


@pytest.mark.parametrize("loss_name,classifier", [("bs", "linear"), ("dbm", "cosine")])
def test_bcl_computes_in_float64_when_cast_to_it(loss_name, classifier):
    """Cast to float64, every term is float64 (the contrastive loss used to drop to float32:
    about 1e-7 off, as the parity check against the authors' code showed)."""
    torch.manual_seed(0)
    method = build("bcl", loss_name, classifier).double().eval()
    x, y = [v.double() for v in views(3)], torch.tensor([0, 0, 1, 1, 2, 2, 3, 0])
    out = method(x, y, epoch=0)
    f = method.model.trunk(torch.cat(x))
    cls = method.loss(method.model.head(f[:8]), y, epoch=0)
    anchors = torch.nn.functional.normalize(method.projection(f)[8:], dim=1)
    bsc = balanced_contrastive_loss(anchors, y.repeat(2), method.prototypes(), 0.1)
    assert out.loss.dtype == torch.float64
    assert out.loss.item() == pytest.approx((2.0 * cls + 0.6 * bsc).item(), rel=1e-13)


def test_ncl_trains_in_float64():
    """The whole module cast to float64 (queues included) trains, in float64."""
    torch.manual_seed(0)
    method = build("ncl", queue_size=16).double()
    out = method([v.double() for v in views(2)], torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), epoch=0)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert method.queues.dtype == torch.float64 and method.queue_ptr.tolist() == [8, 8, 8]


def _ncl_keys_worker(rank, world, init_file, out_dir, shuffle_bn):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    method = build("ncl", queue_size=16, num_experts=2, shuffle_bn=shuffle_bn)
    torch.manual_seed(100 + rank)  # each process its own stream: rank 0's permutation is shared
    x_k = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(rank))
    own, every = method.keys(x_k)
    torch.save({"own": own, "every": every}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("shuffle_bn", [True, False])
def test_ncl_shuffle_bn_across_two_processes(tmp_path, shuffle_bn):
    """Two gloo processes, 4 images each. With shuffle-BN every process's keys equal a
    hand-built shuffle: the global batch permuted by rank 0's permutation, each half encoded
    alone (its own BatchNorm statistics), un-permuted. Without it each process encodes its own
    batch. Either way both processes hold all 8 keys for the queue, in rank order."""
    import torch.multiprocessing as mp

    mp.spawn(_ncl_keys_worker, args=(2, str(tmp_path / "init"), str(tmp_path), shuffle_bn), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    method = build("ncl", queue_size=16, num_experts=2)  # the same weights as in the workers
    x = torch.cat([torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(r)) for r in range(2)])
    torch.manual_seed(100)
    perm = torch.randperm(8) if shuffle_bn else torch.arange(8)
    with torch.no_grad():
        for i in range(2):
            encoded = torch.cat([method._key(i, x[perm][h * 4 : (h + 1) * 4]) for h in range(2)])
            want = torch.empty_like(encoded)
            want[perm] = encoded
            for r, result in enumerate(results):
                torch.testing.assert_close(result["every"][i], want)
                torch.testing.assert_close(result["own"][i], want[r * 4 : (r + 1) * 4])
            if shuffle_bn:  # the shuffle changes the keys: BatchNorm saw other images
                local = torch.cat([method._key(i, x[h * 4 : (h + 1) * 4]) for h in range(2)])
                assert (local - want).abs().max() > 1e-3
