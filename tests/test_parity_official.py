"""scripts/parity_official.py against a stand-in of the authors' cifar/ folder, written here in
their module layout (models/, losses/, utils/, aug/), and of their GML/ folder (cifar_ce.py,
cifar_main.py, moco/, models/, losses.py): equal code passes, a perturbed margin or learning
rate is flagged, bad folders get one line."""

import importlib.util
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "parity_official.py"

# Their BCL training function (train/train_fn/), in the CIFAR and the large-scale folders alike.
TRAIN_BCL = """
        def train_bcl(args, trainloader, model, optimizer, criterion, epoch, weighted_trainloader):
            for inputs, targets, _ in trainloader:
                batch = targets.shape[0]
                features, logits, centers = model(torch.cat(list(inputs)).cuda())
                _, second, third = torch.split(features, [batch] * 3)
                pairs = torch.stack([second, third], dim=1)
                loss = criterion(centers[: args.num_class], logits[:batch], pairs, targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            return loss.item()
"""

# The DBM code's CIFAR recipe as their modules expose it, built from this library's pieces
# (the mechanics under test are the script's, not a second implementation). MARGIN and LR scale
# the margin and the learning rate: 1.0 is the recipe, anything else a deliberate mismatch.
STAND_IN = {
    "models/__init__.py": "",
    "models/resnet.py": """
        import torch.nn.functional as F
        from torch import nn
        from dbm_ltr.models.resnet_cifar import resnet32 as trunk32
        from dbm_ltr.nn import CosineClassifier

        class ResNet32(nn.Module):
            def __init__(self, num_class, use_norm):
                super().__init__()
                trunk = trunk32()
                self.conv1, self.bn1 = trunk.conv1, trunk.bn1
                blocks = list(trunk.layers)
                self.layer1, self.layer2, self.layer3 = (nn.Sequential(*blocks[i:i + 5]) for i in (0, 5, 10))
                self.linear = CosineClassifier(64, num_class) if use_norm else nn.Linear(64, num_class)

            def features(self, x):
                out = F.relu(self.bn1(self.conv1(x)))
                out = self.layer3(self.layer2(self.layer1(out)))
                return F.adaptive_avg_pool2d(out, 1).flatten(1)

            def forward(self, x, output_type="feat"):
                return self.linear(self.features(x))

        def resnet32(num_class, use_norm):
            return ResNet32(num_class, use_norm)
    """,
    "models/resnet_bcl.py": """
        import torch.nn.functional as F
        from torch import nn
        from dbm_ltr.models import projection_mlp
        from models.resnet import ResNet32

        class BclModel(nn.Module):
            def __init__(self, num_class, use_norm):
                super().__init__()
                self.use_norm = use_norm
                self.encoder = ResNet32(num_class, use_norm)
                self.fc = self.encoder.linear
                del self.encoder.linear
                self.head = projection_mlp(64, 512, 128, batchnorm=True)
                self.head_fc = projection_mlp(64, 512, 128, batchnorm=True)

            def forward(self, x):
                feat = self.encoder.features(x)
                classes = self.fc.weight.t() if self.use_norm else self.fc.weight
                return F.normalize(self.head(feat), dim=1), self.fc(feat), F.normalize(self.head_fc(classes), dim=1)
    """,
    "models/net.py": """
        from models.resnet import resnet32
        from models.resnet_bcl import BclModel

        def get_model(args, num_class_list):
            print("    Total params: (printed by their code)")
            if args.loss_fn == "bcl":
                return BclModel(args.num_class, args.use_norm).cuda()
            return resnet32(args.num_class, args.use_norm).cuda()
    """,
    "losses/__init__.py": "",
    "losses/loss.py": """
        import torch
        from dbm_ltr.losses import BalancedLoss, DBMLoss
        from dbm_ltr.losses.contrastive import balanced_contrastive_loss
        MARGIN = {margin}

        def get_loss(args, counts):
            base = {{"ce": "ce", "ce_drw": "drw", "bs": "bs", "bcl": "bs"}}[args.loss_fn]
            if args.use_dbm:
                loss = DBMLoss(counts, base=base, max_margin=args.max_margin * MARGIN).cuda()
            else:
                loss = BalancedLoss(counts, base=base)
            return BCLLoss(loss) if args.loss_fn == "bcl" else loss

        class BCLLoss(torch.nn.Module):
            def __init__(self, classification):
                super().__init__()
                self.classification = classification

            def forward(self, centers, logits, features, targets):
                anchors = torch.cat(torch.unbind(features, dim=1))
                bsc = balanced_contrastive_loss(anchors, targets.repeat(2), centers, 0.1)
                return 2.0 * self.classification(logits, targets) + 0.6 * bsc

        def get_optimizer(args, model, criterion):
            return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    """,
    "utils/__init__.py": "",
    "utils/common.py": """
        import math
        from progress.bar import Bar
        LR = {lr}

        def adjust_learning_rate(optimizer, epoch, scheduler, args):
            t = epoch + 1
            if t <= args.warmup:
                lr = args.lr * t / args.warmup
            elif args.cos:
                lr = args.lr * 0.5 * (1 + math.cos(math.pi * (t - args.warmup + 1) / (args.epochs - args.warmup)))
            else:  # their step schedule (the script has to pass --cos)
                lr = args.lr
            for group in optimizer.param_groups:
                group["lr"] = lr * LR
            return lr * LR
    """,
    "utils/config.py": """
        import argparse

        def parse_args():
            p = argparse.ArgumentParser()
            for flag in ("--dataset", "--loss_fn", "--aug_type"):
                p.add_argument(flag, default="")
            p.add_argument("--imb_ratio", type=float, default=100)
            for flag in ("--use_norm", "--use_dbm", "--cos", "--cutout"):
                p.add_argument(flag, action="store_true")
            p.add_argument("--max_margin", type=float, default=0.1)
            p.add_argument("--lr", type=float, default=0.1)
            p.add_argument("--wd", type=float, default=2e-4)
            p.add_argument("--lr_decay", type=float, default=0.01)
            p.add_argument("--momentum", type=float, default=0.9)
            p.add_argument("--epochs", type=int, default=200)
            p.add_argument("--warmup", type=int, default=5)
            return p.parse_args()

        def dataset_argument(args):
            args.num_class = 100 if args.dataset == "cifar100" else 10
            return args
    """,
    "train/__init__.py": "",
    "train/train.py": "\n        import torch\n"
    + TRAIN_BCL
    + """
        def train_base(args, trainloader, model, optimizer, criterion, epoch, weighted_trainloader):
            for inputs, targets, _ in trainloader:
                loss = criterion(model(inputs.cuda(), None), targets, epoch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            return loss.item()

        def get_train_fn(args):
            return train_bcl if args.loss_fn == "bcl" else train_base
    """,
}


# The GML code's CIFAR teacher and student scripts as they expose them, again built from this
# library's pieces (the student's queue is filled by our own enqueue, under their buffer names).
GML_STAND_IN = {
    "models/__init__.py": "",
    "models/resnet_cifar.py": """
        import torch.nn.functional as F
        from torch import nn
        from dbm_ltr.models.resnet_cifar import resnet32 as trunk32, resnet56 as trunk56
        from dbm_ltr.nn import CosineClassifier

        class ResNetS(nn.Module):
            def __init__(self, trunk, num_classes, use_norm, return_features):
                super().__init__()
                self.conv1, self.bn1 = trunk.conv1, trunk.bn1
                blocks = list(trunk.layers)
                n = len(blocks) // 3
                self.layer1, self.layer2, self.layer3 = (nn.Sequential(*blocks[i:i + n]) for i in (0, n, 2 * n))
                self.fc = CosineClassifier(64, num_classes) if use_norm else nn.Linear(64, num_classes)
                self.return_features = return_features

            def forward(self, x):
                out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
                feat = F.adaptive_avg_pool2d(out, 1).flatten(1)
                return (self.fc(feat), feat) if self.return_features else self.fc(feat)

        def resnet32(num_classes=100, use_norm=False, return_features=False):
            return ResNetS(trunk32(), num_classes, use_norm, return_features)

        def resnet56(num_classes=100, use_norm=False, return_features=False):
            return ResNetS(trunk56(), num_classes, use_norm, return_features)
    """,
    "moco/__init__.py": "",
    "moco/builder.py": """
        import torch
        import torch.nn.functional as F
        from torch import nn
        from dbm_ltr.losses.gml import queue_segments
        from dbm_ltr.methods.gml import GMLMethod
        from dbm_ltr.models import projection_mlp

        class MoCo(nn.Module):
            queue = property(lambda self: self.queue_k)  # our enqueue's names for their buffers
            queue_labels = property(lambda self: self.queue_l)
            queue_index = property(lambda self: self.queue_i)
            segment_start = property(lambda self: self.cls_start_idx)
            segment_length = property(lambda self: self.K_per_cls)

            def __init__(self, base_encoder, dim, K, m, mlp, feat_dim, feat_t, normalize, num_classes):
                super().__init__()
                self.encoder_q = base_encoder(num_classes=num_classes, use_norm=normalize, return_features=True)
                self.encoder_k = base_encoder(num_classes=num_classes, use_norm=normalize, return_features=True)
                self.embed_q = projection_mlp(feat_dim, feat_dim, dim, batchnorm=True)
                self.embed_k = projection_mlp(feat_t, feat_t, dim, batchnorm=True)
                self.register_buffer("queue_k", F.normalize(torch.randn(K, feat_t), dim=1))
                self.register_buffer("queue_l", torch.zeros(K, dtype=torch.long))
                self.register_buffer("queue_i", torch.arange(-K, 0))
                self.register_buffer("queue_ptr", torch.zeros(num_classes, dtype=torch.long))

            def set_distiller(self, encoder_k):
                self.encoder_k = encoder_k
                for p in encoder_k.parameters():
                    p.requires_grad = False

            def train(self, mode=True):
                super().train(mode)
                self.encoder_k.eval()
                return self

            def set_cls_weight(self, cls_weight, base_k):
                self.cls_start_idx, self.K_per_cls = queue_segments(cls_weight.tolist(), len(self.queue_k), base_k)
                self.queue_l.copy_(torch.repeat_interleave(torch.arange(len(cls_weight)), self.K_per_cls))

            def forward(self, im_cls, im_q, im_k, labels, index):
                bs = im_q.shape[0]
                logit_q, feat_q = self.encoder_q(torch.cat([im_cls, im_q]))
                with torch.no_grad():
                    logit_k, feat_k = self.encoder_k(torch.cat([im_cls, im_k]))
                GMLMethod.enqueue(self, feat_k[bs:], labels, index)
                query = F.normalize(self.embed_q(feat_q[bs:]), dim=1)
                key = F.normalize(self.embed_k(self.queue_k.clone()), dim=1)
                return query, key, self.queue_l.clone(), self.queue_i.clone(), logit_q[:bs], logit_k[:bs]
    """,
    "losses.py": """
        import torch
        import torch.nn.functional as F
        from torch import nn
        from dbm_ltr.losses.gml import distillation_kl, gml_contrastive_losses

        class GMLLoss(nn.Module):
            def __init__(self, beta, gamma, temperature=1.0, num_classes=1000, alpha=0.0):
                super().__init__()
                self.log_T_c__no_wd__ = nn.Parameter(torch.full([1], temperature).log())
                self.beta, self.gamma, self.alpha = beta, gamma, alpha

            def cal_weight_for_classes(self, cls_num_list):
                counts = torch.tensor(cls_num_list, dtype=torch.get_default_dtype())
                self.cls_weight = counts / counts.sum()

            def forward(self, query, q_labels, q_idx, key, k_labels, k_idx, sup_logits, t_logits=None):
                prior = self.cls_weight.log()
                loss = self.gamma * F.cross_entropy(30 * sup_logits + prior, q_labels)
                if self.beta > 0:
                    con, con_t = gml_contrastive_losses(
                        query, key, k_labels, k_idx, q_labels, q_idx, self.log_T_c__no_wd__, prior
                    )
                    loss = loss + self.beta * (con + con_t)
                if self.alpha > 0:
                    loss = loss + self.alpha * distillation_kl(30 * sup_logits, 30 * t_logits, 4.0)
                return loss
    """,
    "cifar_main.py": """
        import argparse
        LR = {lr}

        parser = argparse.ArgumentParser()
        for flag, default in (("--dataset", "cifar100"), ("--arch", "resnet32"), ("--arch_t", "resnet32")):
            parser.add_argument(flag, default=default)
        for flag, default in (("--num_classes", 100), ("--feat_t", None), ("--warmup_epochs", 5), ("--feat_dim", 64)):
            parser.add_argument(flag, type=int, default=default)
        for flag, default in (("--moco-dim", 32), ("--moco-k", 4096), ("--base_k", 2), ("--batch-size", 256)):
            parser.add_argument(flag, type=int, default=default)
        for flag in ("--imb-factor", "--alpha", "--beta", "--gamma"):
            parser.add_argument(flag, type=float, default=1.0)
        parser.add_argument("--lr", "--learning-rate", type=float, default=0.1, dest="lr")
        parser.add_argument("--wd", type=float, default=5e-4, dest="weight_decay")
        for flag, default in (("--momentum", 0.9), ("--moco-m", 0.999), ("--moco-t", 0.1)):
            parser.add_argument(flag, type=float, default=default)
        parser.add_argument("--schedule", type=int, nargs="*", default=[160, 180])
        parser.add_argument("--mlp", default=True)
        parser.add_argument("--normalize", default=True)

        def adjust_learning_rate(optimizer, epoch, args):
            if epoch <= args.warmup_epochs:
                lr = args.lr / args.warmup_epochs * (epoch + 1)
            elif epoch > args.schedule[1]:
                lr = args.lr * 0.01
            elif epoch > args.schedule[0]:
                lr = args.lr * 0.1
            else:
                lr = args.lr
            for group in optimizer.param_groups:
                group["lr"] = lr * LR

        def train(train_loader, model, criterion, optimizer, tb_logger, epoch, args):
            model.train()
            for images, target, in_idx in train_loader:
                query, key, k_labels, k_idx, logits, t_logits = model(*images, target, in_idx)
                loss = criterion(query, target, in_idx, key, k_labels, k_idx, logits, t_logits)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    """,
    "cifar_ce.py": """
        from cifar_main import adjust_learning_rate, parser

        def train(train_loader, model, criterion, optimizer, tb_logger, epoch, args):
            model.train()
            for images, target, _ in train_loader:
                logits = model(images[0])
                loss = criterion(logits * 30 + args.cls_weight.log(), target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    """,
}


# Their large_scale/ folder as it exposes DBM-BCL, from this library's pieces: an opts.py parser,
# main.py's NormedLinear and cosine, models/model.py's BCLModel on our ResNet-50 trunk.
LARGE_STAND_IN = {
    "opts.py": """
        import argparse
        parser = argparse.ArgumentParser()
        for flag, default in (("--dataset", "imgnet"), ("--arch", "resnet50"), ("--loss_fn", "ce")):
            parser.add_argument(flag, default=default)
        for flag, default in (("--num_classes", 1000), ("--epochs", 90), ("--batch_size", 128)):
            parser.add_argument(flag, type=int, default=default)
        for flag, default in (("--lr", 0.1), ("--momentum", 0.9), ("--max_margin", 0.1), ("--cos_scale", 30.0)):
            parser.add_argument(flag, type=float, default=default)
        parser.add_argument("--wd", type=float, default=2e-4, dest="weight_decay")
        for flag in ("--use_norm", "--use_dbm", "--cos", "--nesterov"):
            parser.add_argument(flag, action="store_true")
    """,
    "main.py": """
        import math
        from dbm_ltr.nn import CosineClassifier as NormedLinear
        LR = {lr}

        def adjust_learning_rate(optimizer, epoch, args):
            if args.cos:
                lr = args.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 5 + 1) / (args.epochs - 5 + 1)))
            else:  # their step schedule (the script has to pass --cos)
                lr = args.lr
            for group in optimizer.param_groups:
                group["lr"] = lr * LR
    """,
    "models/__init__.py": "",
    "models/model.py": """
        import torch.nn.functional as F
        from torch import nn
        from dbm_ltr.models import create_trunk, projection_mlp

        class BCLModel(nn.Module):
            def __init__(self, num_classes=1000, name="resnet50"):
                super().__init__()
                self.encoder = create_trunk(name)
                self.head = projection_mlp(2048, 2048, 1024, batchnorm=True)
                self.fc = nn.Linear(2048, num_classes)
                self.head_fc = projection_mlp(2048, 2048, 1024, batchnorm=True)

            def forward(self, x):
                feat = self.encoder(x)
                centers = F.normalize(self.head_fc(self.fc.weight.T), dim=1)
                return F.normalize(self.head(feat), dim=1), self.fc(feat), centers
    """,
    "losses/__init__.py": "",
    "losses/loss.py": """
        import torch
        from dbm_ltr.losses import DBMLoss
        from dbm_ltr.losses.contrastive import balanced_contrastive_loss

        class BCLLoss(torch.nn.Module):
            def __init__(self, args, counts):
                super().__init__()
                margin = args.max_margin if args.use_dbm else 0.0  # the script has to pass --use_dbm
                self.dbm = DBMLoss(list(counts), base="bs", max_margin=margin, scale=args.cos_scale)

            def forward(self, centers, logits, features, targets):
                anchors = torch.cat(torch.unbind(features, dim=1))
                bsc = balanced_contrastive_loss(anchors, targets.repeat(2), centers, 0.1)
                return 2.0 * self.dbm(logits, targets) + 0.6 * bsc

        def get_loss(args, counts):
            return BCLLoss(args, counts)
    """,
    "train/__init__.py": "",
    "train/train.py": "\n        import torch\n"
    + TRAIN_BCL
    + """
        def get_train_fn(args):
            return train_bcl
    """,
}


def load():
    spec = importlib.util.spec_from_file_location("parity_official", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _forget_their_modules():
    yield
    for name in list(sys.modules):
        if name.split(".")[0] in (
            "models",
            "losses",
            "utils",
            "aug",
            "train",
            "progress",
            "moco",
            "cifar_main",
            "cifar_ce",
            "main",
            "opts",
        ):
            del sys.modules[name]


def write_stand_in(folder: Path, margin: float = 1.0, lr: float = 1.0, drop: str = "", files=STAND_IN) -> Path:
    for rel, text in files.items():
        if rel == drop:
            continue
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).format(margin=margin, lr=lr) if "{" in text else textwrap.dedent(text))
    return folder


def run(capsys, folder, *extra):
    code = load().main(["--official", str(folder), "--steps", "3", "--batch-size", "4", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def verdicts(out: str) -> dict[str, str]:
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and "verdict" not in line]
    return {r[1].strip(): r[-2].strip() for r in rows}


def test_equal_code_is_equal_and_a_row_without_an_equivalent_is_skipped(tmp_path, capsys):
    default = torch.get_default_dtype()
    code, out, err = run(capsys, write_stand_in(tmp_path), "--rows", "ce,dbm_ce,dbm_bcl,ncl,gml_teacher")
    assert code == 0, err
    assert verdicts(out) == {"ce": "equal", "dbm_ce": "equal", "dbm_bcl": "equal"}
    assert "ncl: skipped (the paper's NCL recipe, which their code does not run" in out
    assert "gml_teacher: skipped (no " in out and "give their GML/ folder with --official-gml)" in out
    assert "Total params" not in out  # their prints stay out of the report
    assert torch.get_default_dtype() == default


def test_gml_rows_against_a_stand_in_of_their_gml_folder(tmp_path, capsys):
    """Teacher and student are equal (the key embedding's unread BatchNorm statistics named as
    left out), DBM-GML is skipped (their GML code has no DBM), and the cifar/ rows after them
    still run their own modules (the GML folder's models/ and losses/ are imported apart)."""
    cifar, gml = write_stand_in(tmp_path / "cifar"), write_stand_in(tmp_path / "GML", files=GML_STAND_IN)
    rows = "gml_teacher,gml,dbm_gml,dbm_ce"
    # the GML/ beside cifar/; at this size the yardstick can be 1e-15 and our loss (s cos(theta + 0))
    # 1e-14 from theirs (30 cos): rounding, well within a tolerance of 100
    code, out, err = run(capsys, cifar, "--rows", rows, "--steps", "1", "--tolerance", "100")
    assert code == 0, err
    assert verdicts(out) == {"gml_teacher": "equal", "gml": "equal", "dbm_ce": "equal"}, out
    assert "left out: the key embedding's BatchNorm running statistics" in out
    assert "dbm_gml: skipped (their GML code has no DBM)" in out
    assert "models.resnet_cifar" not in sys.modules and "cifar_main" not in sys.modules
    # the GML code's long warm-up: our plain step schedule differs from it in epoch 6 only
    steps = ["--rows", "gml_teacher", "--official-gml", str(gml), "--steps", "8", "--batch-size", "2"]
    code, out, _ = run(capsys, cifar, *steps, "--set", "optim.schedule=step")
    assert verdicts(out) == {"gml_teacher": "DIFFERS"}
    assert float(next(line for line in out.splitlines() if line.startswith("| gml")).split("|")[3]) > 1e-3
    # their queue split another way (two more entries for every class before the shares)
    builder = GML_STAND_IN["moco/builder.py"].replace("len(self.queue_k), base_k)", "len(self.queue_k), base_k + 2)")
    other = write_stand_in(tmp_path / "GML2", files=dict(GML_STAND_IN, **{"moco/builder.py": builder}))
    code, out, _ = run(capsys, cifar, "--rows", "gml", "--official-gml", str(other), "--steps", "1")
    assert verdicts(out) == {"gml": "DIFFERS"} and "queue segment of class 0: ours starts at 0 with" in out
    code, out, err = run(capsys, cifar, "--rows", "gml", "--official-gml", str(tmp_path / "nowhere"))
    assert code == 2 and "--official-gml" in err and "no such folder" in err and err.count("\n") == 1, err


def test_large_scale_rows_against_a_stand_in_of_their_large_scale_folder(tmp_path, capsys):
    """ImageNet-LT DBM-BCL (ResNet-50) is equal (the stand-in follows --cos and --use_dbm, so
    the script has to pass them), and the rows their large-scale code cannot run are skipped
    with the reason (a difference is flagged by the code the CIFAR rows' tests cover)."""
    cifar = write_stand_in(tmp_path / "cifar")
    write_stand_in(tmp_path / "large_scale", files=LARGE_STAND_IN)
    script = load()
    script.LARGE_SIDE = 32  # faster; the step mechanics depend neither on this nor on the classes
    script.LARGE_COUNTS = {"imagenet_lt": (40, 100, 20)}
    steps = ["--official", str(cifar), "--data-set", "imagenet_lt", "--steps", "1", "--batch-size", "2"]
    code = script.main([*steps, "--rows", "dbm_bcl,ce,bcl"])
    out = capsys.readouterr().out
    assert code == 0 and verdicts(out) == {"dbm_bcl": "equal"}, out
    assert "ce: skipped (their large-scale code trains BCL only" in out
    assert "bcl: skipped (their large-scale BCL needs --use_norm" in out
    code = script.main(["--official", str(cifar), "--data-set", "inat2018", "--official-large", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "--official-large" in err and "give the large_scale/ folder" in err, err


def test_our_gml_state_under_their_names():
    """Their GML student (moco/builder.py's MoCo after set_distiller): encoder_q (ResNet-32, fc a
    (D, C) cosine layer as ours), encoder_k (the ResNet-56 teacher), embed_q / embed_k,
    queue_k / queue_l / queue_i / queue_ptr; the temperature lives in their loss."""
    from dbm_ltr.data.longtail import long_tail_counts
    from dbm_ltr.engine import load_config
    from dbm_ltr.engine.build import build_method

    config = load_config("cifar10_lt/gml")
    script = load()
    method = build_method(config, long_tail_counts(5000, 10, 100), 10, teacher=script.fresh_teacher(config, 10))
    ours = method.state_dict()
    theirs = script.to_theirs(ours, "gml")
    assert len(theirs) == len(ours)
    assert torch.equal(theirs["encoder_q.layer3.4.conv2.weight"], method.model.trunk.layers[14].conv2.weight)
    assert torch.equal(theirs["encoder_k.layer2.8.bn1.running_var"], method.teacher.trunk.layers[17].bn1.running_var)
    assert torch.equal(theirs["encoder_k.layer3.0.conv1.weight"], method.teacher.trunk.layers[18].conv1.weight)
    assert torch.equal(theirs["encoder_q.fc.weight"], method.model.head.weight)
    assert torch.equal(theirs["embed_k.3.bias"], method.embed_k[3].bias)
    for mine, their in (("queue", "queue_k"), ("queue_labels", "queue_l"), ("queue_index", "queue_i")):
        assert torch.equal(theirs[their], ours[mine])
    assert torch.equal(theirs["criterion.log_T_c__no_wd__"], method.log_temperature)


def test_a_perturbed_margin_is_flagged_in_the_dbm_row_only(tmp_path, capsys):
    code, out, _ = run(capsys, write_stand_in(tmp_path, margin=1.5), "--rows", "ce,dbm_ce,bcl,dbm_bcl")
    assert code == 0 and verdicts(out) == {"ce": "equal", "dbm_ce": "DIFFERS", "bcl": "equal", "dbm_bcl": "DIFFERS"}
    loss = next(line for line in out.splitlines() if line.startswith("| dbm_ce")).split("|")[4]
    assert float(loss) > 1e-6


def test_a_perturbed_learning_rate_is_flagged(tmp_path, capsys):
    code, out, _ = run(capsys, write_stand_in(tmp_path, lr=1.01), "--rows", "ce")
    assert verdicts(out) == {"ce": "DIFFERS"}
    lr = next(line for line in out.splitlines() if line.startswith("| ce")).split("|")[3]
    assert float(lr) > 1e-4


def test_an_override_of_our_preset_is_a_difference_too(tmp_path, capsys):
    code, out, _ = run(
        capsys, write_stand_in(tmp_path), "--rows", "ce", "--set", "optim.schedule=cosine", "--steps", "4"
    )
    assert verdicts(out) == {"ce": "DIFFERS"}


def test_step_epochs_cover_warm_up_cosine_and_the_drw_switch():
    from dbm_ltr.engine import load_config

    epochs = load().step_epochs(load_config("cifar10_lt/dbm_drw"), 10)
    assert epochs == [0, 4, 5, 6, 102, 159, 160, 161, 198, 199]
    assert load().step_epochs(load_config("cifar10_lt/ce"), 3) == [0, 159, 160]
    assert len(load().step_epochs(load_config("cifar10_lt/ce"), 14)) == 14
    # a step schedule: both sides of each step (their lr drops after epochs 320 and 360)
    assert load().step_epochs(load_config("cifar10_lt/ncl_code"), 5) == [0, 319, 320, 359, 360]


@pytest.mark.parametrize("row", ["ncl_code", "dbm_ncl_code"])
def test_our_ncl_state_under_their_names(row):
    """Their NCL model (models/resnet_ncl.py): per expert i backbone.i (ResNet-32 stages
    layer1-3), classifier_ce.i (FCNorm (C, D) against our cosine head's (D, C); nn.Linear as
    ours), classifier.i (query MLP), backbone_MA.i / classifier_MA.i (key encoder), MOCO.i.queue
    (d, K) and MOCO.i.queue_ptr (1,)."""
    from dbm_ltr.data.longtail import long_tail_counts
    from dbm_ltr.engine import load_config
    from dbm_ltr.engine.build import build_method

    counts = long_tail_counts(5000, 10, 100)
    method = build_method(load_config(f"cifar10_lt/{row}"), counts, 10)
    method.queue_ptr.copy_(torch.tensor([3, 5, 7]))
    ours = method.state_dict()
    theirs = load().to_theirs(ours, "ncl")
    assert len(theirs) == len(ours) - 2 + 2 * 3  # queues, queue_ptr -> three of each
    e = method.experts[2]
    head = e.head.weight.t() if row.startswith("dbm_") else e.head.weight
    assert torch.equal(theirs["classifier_ce.2.weight"], head)
    assert ("classifier_ce.2.bias" in theirs) == (row == "ncl_code")
    assert torch.equal(theirs["backbone.2.layer1.0.conv1.weight"], e.trunk.layers[0].conv1.weight)
    assert torch.equal(theirs["backbone.2.layer2.4.bn2.running_var"], e.trunk.layers[9].bn2.running_var)
    assert torch.equal(theirs["backbone_MA.1.layer3.0.conv2.weight"], method.key_trunks[1].layers[10].conv2.weight)
    assert torch.equal(theirs["backbone_MA.0.bn1.bias"], method.key_trunks[0].bn1.bias)
    assert torch.equal(theirs["classifier.0.2.weight"], method.query_heads[0][2].weight)
    assert torch.equal(theirs["classifier_MA.1.0.bias"], method.key_heads[1][0].bias)
    for i in range(3):
        assert torch.equal(theirs[f"MOCO.{i}.queue"], method.queues[i].t())
        assert theirs[f"MOCO.{i}.queue_ptr"].tolist() == [3 + 2 * i]


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "no such folder"),
        (
            "empty",
            "no models/net.py, models/resnet.py, losses/loss.py, utils/common.py, utils/config.py, train/train.py",
        ),
        ("no_get_loss", "losses/loss.py has no get_loss (another version of the authors' code?)"),
        ("broken", "importing models/net.py failed (ModuleNotFoundError"),
        ("unknown_row", "--rows: no preset cifar10_lt/foo"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, case, message):
    folder = tmp_path / "cifar"
    rows = "ce"
    if case == "empty":
        folder.mkdir()
    elif case == "no_get_loss":
        files = dict(STAND_IN, **{"losses/loss.py": "def get_optimizer(args, model, criterion):\n    pass\n"})
        write_stand_in(folder, files=files)
    elif case == "broken":
        write_stand_in(folder, files=dict(STAND_IN, **{"models/net.py": "import their_missing_module\n"}))
    elif case == "unknown_row":
        write_stand_in(folder)
        rows = "foo"
    code, out, err = run(capsys, folder, "--rows", rows)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_augmentation_statistics_of_a_stand_in_policy(tmp_path, capsys, fake_cifar10):
    """--augment: a stand-in of their policy that is our reference policy matches op by op
    (0 levels) and in its statistics."""
    files = dict(STAND_IN)
    files["aug/__init__.py"] = ""
    files["aug/autoaug.py"] = """
        import random
        from dbm_ltr.data.autoaugment import CIFAR10_SUB_POLICIES, reference_magnitudes, reference_op

        class SubPolicy:
            def __init__(self, stages):
                self.stages = stages

            def __call__(self, img):
                table = reference_magnitudes(32, 32)
                for op, p, level in self.stages:
                    if random.random() < p:
                        values, signed = table[op]
                        value = float(values[level or 0])
                        img = reference_op(img, op, value * random.choice([-1, 1]) if signed else value)
                return img

        class CIFAR10Policy:
            def __init__(self, fillcolor=(128, 128, 128)):
                self.policies = [SubPolicy(s) for s in CIFAR10_SUB_POLICIES]

            def __call__(self, img):
                return self.policies[random.randint(0, 24)](img)
    """
    files["aug/transforms.py"] = """
        from torchvision import transforms

        def get_transform(loss_fn, cutout=False):
            before = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])
            return [[before, transforms.ToTensor()]], transforms.ToTensor()
    """
    folder = write_stand_in(tmp_path / "cifar", files=files)
    code, out, err = run(capsys, folder, "--no-steps", "--augment", "--data", str(fake_cifar10), "--images", "120")
    assert code == 0, err
    assert "our per-image policy 0, batched twin 0" in out
    lines = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {
        "theirs (draw 1)",
        "theirs (draw 2)",
        "loader-reference",
        "device-reference",
        "loader-torchvision",
        "device-torchvision",
    } <= set(lines)
    assert "loader-reference: within" in out and "device-reference: within" in out


def test_image_statistics_count_the_fill():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[0, :2] = 128  # 8 grey pixels of 16
    images[1, 0, 0] = (128, 128, 0)  # not grey: one channel differs
    stats = load().image_statistics(images)
    assert stats["fill_grey"][0] == pytest.approx(0.25)
    assert np.allclose(stats["mean"], np.array([9, 9, 8]) * 128 / 32 / 255)
