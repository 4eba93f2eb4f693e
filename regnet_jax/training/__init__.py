"""The training run and what uses its results: the trainer (``trainer.train_and_evaluate``), its steps, optimizer,
checkpoints, run records, evaluation and prediction.

    trainer.py       the training loop: resume, train, evaluate, checkpoint, preemption; ``train_and_evaluate``
    steps.py         the jitted, sharded train / BN-statistics / evaluation steps and ``TrainState``
    optimizer.py     the lr schedule, SGD with weight decay, the loss
    precise_bn.py    pycls's precise BatchNorm statistics
    checkpoint.py    the workdir's orbax checkpoints
    records.py       the run's files: config.json and its history, the JSON-lines logs, ``RunWriter``
    events.py, progress.py, plots.py, profiling.py, preemption.py, workdir_lock.py
    evaluation.py    exact evaluation of a workdir or a weights directory (``python -m regnet_jax.evaluate``)
    prediction.py    top-k classes of image files (``python -m regnet_jax.predict``)
"""
