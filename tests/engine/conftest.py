def tiny_overrides(root, epochs=2):
    """A seconds-long CIFAR-10-LT run: IF 10 on the fake set (159 images), 2 epochs."""
    return [
        f"data.root={root}", f"optim.epochs={epochs}", "optim.warmup_epochs=1",
        "data.imbalance_factor=10", "data.workers=0", "optim.batch_size=32", "train.progress=false",
        "data.eval_batch_size=100",
    ]
