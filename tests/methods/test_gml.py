"""GML / DBM-GML: queue, loss terms against naive references, teacher checks, training."""

import json
import math

import pytest
import reference as ref
import torch
import torch.nn.functional as F
from fakes import tiny_overrides

from dbm_ltr.data import long_tail_counts
from dbm_ltr.engine import Trainer, load_config
from dbm_ltr.engine.build import build_method, parameter_groups
from dbm_ltr.errors import ConfigError
from dbm_ltr.losses.gml import (
    EMPTY_CLASS_LOGIT,
    class_log_mean_exp,
    distillation_kl,
    gml_contrastive_losses,
    queue_segments,
)
from dbm_ltr.models import create_model


def quiet(_message):
    pass


@pytest.fixture(scope="module")
def teacher(fake_cifar10, tmp_path_factory):
    """A finished 1-epoch GML teacher (ResNet-56, cosine, BS at s = 30) on the fake data."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("teacher") / "run"
    Trainer(load_config("cifar10_lt/gml_teacher", tiny_overrides(fake_cifar10, epochs=1)), run, log=quiet).fit()
    torch.set_num_threads(before)
    return run


def naive_segments(counts, size, base_k):
    total, ends, cumulative = sum(counts), [], 0
    for c, n in enumerate(counts):
        cumulative += n
        ends.append(math.ceil((c + 1) * base_k + (size - len(counts) * base_k) * cumulative / total))
    return [e - s for s, e in zip([0] + ends[:-1], ends)]


@pytest.mark.parametrize("classes,n_max", [(10, 5000), (100, 500)])
def test_queue_segments_against_a_hand_computation(classes, n_max):
    counts = long_tail_counts(n_max, classes, 100)
    starts, lengths = queue_segments(counts, 4096, 2)
    assert lengths.tolist() == naive_segments(counts, 4096, 2)
    assert int(lengths.sum()) == 4096 and int(lengths.min()) >= 2
    assert torch.equal(starts[1:], lengths.cumsum(0)[:-1]) and starts[0] == 0
    if classes == 10:
        assert lengths.tolist() == [1645, 987, 592, 356, 214, 129, 78, 48, 29, 18]
    else:
        assert lengths[:3].tolist() == [182, 173, 166] and lengths[-1] == 3
    with pytest.raises(ValueError, match="cannot give 10 classes 2 entries each"):
        queue_segments(counts[:10], 19, 2)


def naive_log_mean_exp(logits, labels, C, keep=None):
    B, K = logits.shape
    out = torch.empty(B, C, dtype=torch.float64)
    for b in range(B):
        for c in range(C):
            values = [
                math.exp(float(logits[b, j])) for j in range(K) if labels[j] == c and (keep is None or keep[b, j])
            ]
            out[b, c] = math.log(sum(values) / len(values)) if values else EMPTY_CLASS_LOGIT
    return out


def test_class_log_mean_exp_against_a_naive_float64_loop():
    torch.manual_seed(0)
    logits = torch.randn(5, 12, dtype=torch.float64) * 8  # differences beyond exp's comfort
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 3, 3, 1])
    keep = torch.rand(5, 12) > 0.3
    keep[0, labels == 2] = False  # class 2 empty for row 0
    torch.testing.assert_close(class_log_mean_exp(logits, labels, 5), naive_log_mean_exp(logits, labels, 5))
    got = class_log_mean_exp(logits, labels, 5, keep)
    torch.testing.assert_close(got, naive_log_mean_exp(logits, labels, 5, keep))
    assert got[0, 2] == EMPTY_CLASS_LOGIT and got[0, 4] == EMPTY_CLASS_LOGIT  # class 4 has no keys
    big = class_log_mean_exp(torch.full((1, 3), 500.0), torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(big, torch.tensor([[500.0, 500.0]]))  # no overflow in float32


def contrastive_inputs(C=4, K=16, B=6, d=8, per_class=False):
    torch.manual_seed(1)
    query = F.normalize(torch.randn(B, d), dim=1).requires_grad_()
    keys = F.normalize(torch.randn(K, d), dim=1).requires_grad_()
    key_labels = torch.arange(K) % C
    key_index = torch.arange(K) - 4  # indices -4..11: samples 0..11 are in the queue
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    sample_index = torch.tensor([0, 1, 2, 3, 100, 101])  # 100, 101 are not in the queue
    log_t = torch.full((C if per_class else 1,), math.log(0.1)).requires_grad_()
    log_prior = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    return query, keys, key_labels, key_index, targets, sample_index, log_t, log_prior


@pytest.mark.parametrize("per_class", [False, True])
def test_contrastive_terms_against_a_naive_computation(per_class):
    q, k, kl, ki, y, si, log_t, prior = contrastive_inputs(per_class=per_class)
    con, con_t = gml_contrastive_losses(q, k, kl, ki, y, si, log_t, prior)
    t = log_t.exp().detach().double()
    sims = (q @ k.t()).detach().double()
    t_key = t.expand(16) if not per_class else t[kl]
    s = naive_log_mean_exp(sims / t_key, kl, 4)
    s_t = naive_log_mean_exp(sims / t_key, kl, 4, keep=si[:, None] != ki[None, :])
    want_con = F.cross_entropy(s + prior.double(), y)
    want_t = F.cross_entropy(s_t + prior.double(), y)
    assert con.item() == pytest.approx(want_con.item(), rel=1e-5)
    assert con_t.item() == pytest.approx(want_t.item(), rel=1e-5)
    assert con_t.item() != pytest.approx(con.item(), rel=1e-6)  # the own entries matter


def test_conT_trains_only_the_temperature_and_con_not_the_temperature():
    q, k, kl, ki, y, si, log_t, prior = contrastive_inputs()
    con, con_t = gml_contrastive_losses(q, k, kl, ki, y, si, log_t, prior)
    q_grad, k_grad, t_grad = torch.autograd.grad(con_t, (q, k, log_t), allow_unused=True)
    assert q_grad is None and k_grad is None and t_grad is not None and t_grad.abs().item() > 0
    q_grad, k_grad, t_grad = torch.autograd.grad(con, (q, k, log_t), allow_unused=True)
    assert t_grad is None and q_grad.abs().sum() > 0 and k_grad.abs().sum() > 0


def test_distillation_kl_by_hand():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    T = 4.0
    want = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        ps = [math.exp(v / T) for v in s_row]
        pt = [math.exp(v / T) for v in t_row]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        want += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    want = want / 2 * T * T
    assert distillation_kl(student, teacher, T).item() == pytest.approx(want, rel=1e-6)
    assert distillation_kl(teacher, teacher, T).item() == pytest.approx(0.0, abs=1e-7)


def build(teacher_run, loss_name="gml", data="cifar10_lt", imbalance_factor=10.0, **params):
    """The engine's build of a GML student (the teacher loaded and checked by the engine)."""
    counts = [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]  # the fake set at IF 10
    preset = f"{data}/{'gml' if loss_name == 'gml' else 'dbm_gml'}"
    config = load_config(
        preset,
        [f"method.teacher={teacher_run}", f"data.imbalance_factor={imbalance_factor}"]
        + [f"method.{k}={v}" for k, v in {"queue_size": 64, **params}.items()],
    )
    return build_method(config, counts, len(counts))


def test_enqueue_fills_class_segments_and_wraps_around(teacher):
    method = build(teacher)
    start, length = method.segment_start.clone(), method.segment_length.clone()
    assert int(length.sum()) == 64 and method.queue_index.tolist() == list(range(-64, 0))
    assert torch.equal(method.queue_labels, torch.repeat_interleave(torch.arange(10), length))
    c = 9  # the rarest class: a short segment
    n = int(length[c])
    feats = torch.arange(n + 2, dtype=torch.float).unsqueeze(1).repeat(1, 64)
    labels = torch.full((n + 2,), c)
    method.enqueue(feats[:2], labels[:2], torch.tensor([500, 501]))
    assert method.queue_ptr[c] == 2 and method.queue_index[start[c] : start[c] + 2].tolist() == [500, 501]
    method.enqueue(feats, labels, torch.arange(600, 600 + n + 2))  # more than the segment holds
    kept = method.queue_index[start[c] : start[c] + n].tolist()
    # the first n of the batch are written from slot 2 on, wrapping to the segment's start
    assert sorted(kept) == list(range(600, 600 + n)) and kept[2] == 600 and kept[0] == 600 + n - 2
    assert method.queue_ptr[c] == (2 + n) % n == 2
    assert torch.equal(method.queue_labels, torch.repeat_interleave(torch.arange(10), length))  # untouched elsewhere
    assert (method.queue_index[: start[c]] < 0).all()


def test_one_step_weight_decay_and_teacher_frozen(teacher):
    torch.manual_seed(0)
    method = build(teacher, "dbm_gml")
    assert method.embed_k[0].weight.equal(method.embed_q[0].weight)  # a copy at the start
    assert method.log_temperature.shape == (1,) and method.log_temperature.exp().item() == pytest.approx(0.1)
    groups = parameter_groups(method, 5e-4)
    assert groups[1] == {"params": [method.log_temperature], "weight_decay": 0.0}
    assert all(p is not method.log_temperature for p in groups[0]["params"])
    assert not any(p.requires_grad for p in method.teacher.parameters())
    assert sum(p.numel() for p in groups[0]["params"]) == sum(
        p.numel() for n, p in method.named_parameters() if p.requires_grad and n != "log_temperature"
    )
    method.train()
    assert not method.teacher.training and method.model.training
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    x = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 3, 4, 5, 9, 9])
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    t_before, k_before = method.log_temperature.detach().clone(), method.embed_k[0].weight.detach().clone()
    out = method(x, y, epoch=0, indices=torch.arange(8))
    assert out.scores.shape == (8, 10) and torch.isfinite(out.loss)
    out.loss.backward()
    opt.step()
    assert not torch.equal(t_before, method.log_temperature) and not torch.equal(k_before, method.embed_k[0].weight)
    for key, value in method.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key  # weights and BatchNorm statistics
    assert method.queue_index.ge(0).sum() == 8  # the batch entered the queue before the loss
    with pytest.raises(ValueError, match="indices"):
        method(x, y, epoch=0)


@pytest.mark.parametrize("loss_name", ["gml", "dbm_gml"])
def test_loss_is_the_sum_of_its_terms(teacher, loss_name):
    """gamma L_sup + beta (L_con + L_con_t) + alpha KD: L_sup the balanced softmax at s = 30
    (GML) or DBM at s = 32 with base bs (DBM-GML), against the naive reference; the KD term on
    the plain cosines at s = 30 for both."""
    torch.manual_seed(0)
    method = build(teacher, loss_name, alpha=0.5, beta=2.0, gamma=1.5)
    method.eval()  # deterministic BatchNorm for the recomputation
    x = [torch.randn(6, 3, 32, 32) for _ in range(3)]
    y, idx = torch.tensor([0, 1, 2, 3, 4, 9]), torch.arange(6)
    queue_before = (
        method.queue.clone(),
        method.queue_labels.clone(),
        method.queue_index.clone(),
        method.queue_ptr.clone(),
    )
    total = method(x, y, epoch=0, indices=idx).loss
    feats = method.model.trunk(torch.cat(x[:2]))
    cos = method.model.head(feats[:6])
    with torch.no_grad():
        tf = method.teacher.trunk(torch.cat([x[0], x[2]]))
    counts = [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]
    cos_list, log_prior = cos.double().tolist(), [math.log(n / sum(counts)) for n in counts]
    if loss_name == "gml":
        logits = [[30 * c + lp for c, lp in zip(row, log_prior)] for row in cos_list]
    else:
        plain = ref.dbm_logits(cos_list, y.tolist(), counts, K=0.1, s=32.0)
        logits = [[z + lp for z, lp in zip(row, log_prior)] for row in plain]
    sup = ref.cross_entropy(logits, y.tolist())
    kd = distillation_kl(30 * cos, 30 * method.teacher.head(tf[:6]), 4.0)
    keys = F.normalize(method.embed_k(method.queue), dim=1)  # the queue after this step's enqueue
    con, con_t = gml_contrastive_losses(
        F.normalize(method.embed_q(feats[6:]), dim=1),
        keys,
        method.queue_labels,
        method.queue_index,
        y,
        idx,
        method.log_temperature,
        method.log_prior,
    )
    assert total.item() == pytest.approx(1.5 * sup + (2.0 * (con + con_t) + 0.5 * kd).item(), rel=1e-5)
    assert not torch.equal(queue_before[2], method.queue_index)


def test_teacher_mismatches_are_one_line_errors(teacher, fake_cifar10, tmp_path):
    with pytest.raises(ValueError, match="GML needs a teacher: train one with"):
        build("")
    with pytest.raises(ValueError, match="no teacher checkpoint at"):
        build(tmp_path / "nowhere")
    for wrong, match in [
        (dict(data="cifar100_lt"), "data set 'cifar10_lt', this student needs 'cifar100_lt'"),
        (dict(imbalance_factor=100.0), "imbalance factor 10.0, this student needs 100.0"),
        (dict(teacher_trunk="resnet32"), "trunk 'resnet56'"),
    ]:
        with pytest.raises(ValueError, match=match):
            build(teacher, **wrong)
    unfinished = tmp_path / "unfinished"
    cfg = load_config("cifar10_lt/gml_teacher", tiny_overrides(fake_cifar10, epochs=2))
    t = Trainer(cfg, unfinished, log=quiet)
    t.train_one_epoch(0, max_steps=1)
    t._save(1)
    with pytest.raises(ValueError, match="is not finished \\(epoch 1 of 2\\); finish it with dbm-ltr train"):
        build(unfinished)


def test_student_trains_and_resumes_exactly(teacher, fake_cifar10, tmp_path):
    """Queue, pointers, indices, temperature and embeddings all come back on resume."""
    overrides = tiny_overrides(fake_cifar10, epochs=2) + [
        "train.deterministic=true",
        f"method.teacher={teacher}",
        "method.queue_size=64",
        "optim.batch_size=16",
    ]
    cfg = load_config("cifar10_lt/dbm_gml", overrides)
    straight = Trainer(cfg, tmp_path / "a", log=quiet)
    straight.fit()
    interrupted = Trainer(cfg, tmp_path / "b", log=quiet)
    original = interrupted.train_one_epoch
    interrupted.train_one_epoch = lambda e, max_steps=None: (
        (_ for _ in ()).throw(KeyboardInterrupt) if e >= 1 else original(e)
    )
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    resumed = Trainer(cfg, tmp_path / "b", resume=True, log=quiet)
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert {"queue", "queue_labels", "queue_index", "queue_ptr", "log_temperature"} <= set(a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["method"] == "gml" and metrics["paper"]["top1"] == 92.59


def _gml_ddp_worker(rank, world, init_file, teacher, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    method = build(teacher)
    feats = torch.full((2, 64), float(rank + 1))
    method.enqueue(feats, torch.tensor([0, 9]), torch.tensor([10 * rank, 10 * rank + 1]))
    torch.save({"index": method.queue_index, "queue": method.queue}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_the_queue_receives_the_keys_of_all_processes(teacher, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gml_ddp_worker, args=(2, str(tmp_path / "init"), str(teacher), str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(results[0]["index"], results[1]["index"])
    assert torch.equal(results[0]["queue"], results[1]["queue"])
    written = sorted(results[0]["index"][results[0]["index"] >= 0].tolist())
    assert written == [0, 1, 10, 11]  # both processes' samples, in every process's queue


def test_student_model_builds_from_checkpoint_weights(teacher):
    """The teacher inside the student is the saved teacher, weight for weight."""
    method = build(teacher)
    state = torch.load(teacher / "checkpoint.pt", weights_only=False)["method"]
    reference = create_model("resnet56", 10, "cosine")
    reference.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    for key, value in reference.state_dict().items():
        assert torch.equal(method.teacher.state_dict()[key], value)


def test_a_teacher_given_as_checkpoint_state_needs_no_run_directory():
    """``build_method(..., teacher=state)``: the teacher is that state's model (what the parity
    script and a caller holding a checkpoint in memory use); no ``method.teacher`` is read."""
    counts = [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]
    model = create_model("resnet56", 10, "cosine")
    state = {
        "config": {"model": {"name": "resnet56", "classifier": "cosine"}},
        "method": {f"model.{k}": v for k, v in model.state_dict().items()},
    }
    method = build_method(load_config("cifar10_lt/gml", ["method.queue_size=64"]), counts, 10, teacher=state)
    for key, value in model.state_dict().items():
        assert torch.equal(method.teacher.state_dict()[key], value)
    with pytest.raises(ConfigError, match="GML needs a teacher"):
        build_method(load_config("cifar10_lt/gml", ["method.queue_size=64"]), counts, 10)


def test_the_embeddings_start_as_the_gml_codes_unless_told_otherwise(teacher):
    """The GML code leaves its embeddings at nn.Linear's init, U(+-1/sqrt(fan_in)); the presets
    say so (head_init: pytorch), and head_init=kaiming gives Kaiming-normal weights."""
    bound = 1 / math.sqrt(64)  # the ResNet-32 / ResNet-56 feature width
    for embed in (build(teacher).embed_q, build(teacher).embed_k):
        assert all(layer.weight.abs().max() <= bound for layer in embed if isinstance(layer, torch.nn.Linear))
    kaiming = build(teacher, head_init="kaiming").embed_q[0].weight
    assert kaiming.abs().max() > bound and kaiming.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)
