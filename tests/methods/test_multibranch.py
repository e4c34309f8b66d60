import pytest
import torch

from dbm_ltr.losses import create_loss
from dbm_ltr.losses.contrastive import balanced_contrastive_loss
from dbm_ltr.methods import create_method

COUNTS = [50, 20, 8, 4]


def build(name, loss_name="bs", classifier="linear", **params):
    loss = create_loss(loss_name, COUNTS, **({"base": "bs"} if loss_name == "dbm" else {}))
    return create_method(name, trunk="resnet32", classifier=classifier, num_classes=4,
                         cls_num_list=COUNTS, loss=loss, loss_name=loss_name, **params)


def views(n, k=8):
    return [torch.randn(k, 3, 32, 32) for _ in range(n)]


@pytest.mark.parametrize("loss_name,classifier", [("bs", "linear"), ("dbm", "cosine")])
def test_bcl_shapes_loss_composition_and_one_step(loss_name, classifier):
    torch.manual_seed(0)
    method = build("bcl", loss_name, classifier)
    assert method.views == ("regular", "contrastive", "contrastive")
    assert method.prototypes().shape == (4, 128)
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
