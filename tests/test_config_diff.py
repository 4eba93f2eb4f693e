"""Resuming with a changed config: which changes are harmless, which change the run's meaning, the message."""

import copy

import pytest

from regnet_jax.config import ConfigError
from regnet_jax.config import diff as config_diff
from regnet_jax.models import zoo


def _base():
    return zoo.get_config("regnety_4gf").to_dict()


def test_diff_lists_each_changed_field_and_classifies_it():
    old, new = _base(), _base()
    new["num_epochs"], new["optim"]["label_smoothing"], new["log_every_steps"], new["dataset"]["prefetch"] = (
        3,
        0.1,
        10,
        4,
    )
    changes = config_diff.diff(old, new)
    assert [(c.path, c.old, c.new, c.harmless) for c in changes] == [
        ("dataset.prefetch", 2, 4, True),
        ("log_every_steps", 50, 10, True),
        ("num_epochs", 100, 3, False),
        ("optim.label_smoothing", 0.0, 0.1, False),
    ]
    assert config_diff.diff(old, copy.deepcopy(old)) == []


def test_the_learning_rate_is_compared_as_resolved():
    old = _base()
    pinned = copy.deepcopy(old)
    pinned["optim"]["base_lr"] = 0.4  # what the rule gives at batch 512: the same run, written another way
    assert config_diff.diff(old, pinned) == []
    bigger = copy.deepcopy(old)
    bigger["batch_size"] = 1024
    assert [(c.path, c.old, c.new) for c in config_diff.diff(old, bigger)] == [
        ("batch_size", 512, 1024),
        ("optim.base_lr", 0.4, 0.8),
    ]


def test_a_field_the_saved_config_lacks_is_harmless():
    old, new = _base(), _base()
    del old["dataset"]["output_dtype"]  # a run started before the field existed
    (change,) = config_diff.diff(old, new)
    assert change.path == "dataset.output_dtype" and change.harmless


def test_check_resume_refuses_meaning_changes_unless_allowed():
    old, new = _base(), _base()
    new["num_epochs"], new["optim"]["label_smoothing"], new["log_every_steps"] = 3, 0.1, 10
    with pytest.raises(ConfigError) as e:
        config_diff.check_resume("runs/x", old, new, allow=False)
    message = str(e.value)
    assert "num_epochs: 100 -> 3; optim.label_smoothing: 0.0 -> 0.1" in message and "log_every_steps" not in message
    assert "--config=runs/x/config.json" in message and "--allow_config_change" in message
    assert len(config_diff.check_resume("runs/x", old, new, allow=True)) == 3
    harmless = _base()
    harmless["eval_batch_size"] = 64
    assert [c.path for c in config_diff.check_resume("runs/x", old, harmless, allow=False)] == ["eval_batch_size"]


def test_recipe_fields_a_saved_config_lacks_count_as_their_defaults():
    old, new = _base(), _base()
    for field in ("bn_group_size", "grad_accum_steps", "precise_bn", "precise_bn_images"):
        del old[field]  # a run started before the BatchNorm-groups recipe fields existed (it trained with the defaults)
    new["grad_accum_steps"] = 1
    new["bn_group_size"] = 64  # zoo: groups of batch / 8; the old run normalised over the whole batch (0)
    assert [(c.path, c.old, c.new, c.harmless) for c in config_diff.diff(old, new)] == [("bn_group_size", 0, 64, False)]
    new["bn_group_size"] = 0
    assert config_diff.diff(old, new) == []


def test_normalize_on_older_configs_count_as_host_and_switching_is_harmless():
    """dataset.normalize_on (issue 19): a config written before it normalised on the host; moving the normalisation to
    the devices changes the images by at most half a uint8 level, so a run resumes across it."""
    from regnet_jax.config import base_config, complete_config, validate_config

    old, new = _base(), _base()
    del old["dataset"]["normalize_on"]
    assert complete_config(old)["dataset"]["normalize_on"] == "host" and new["dataset"]["normalize_on"] == "device"
    (change,) = config_diff.check_resume("runs/x", old, new, allow=False)
    assert (change.path, change.old, change.new, change.harmless) == ("dataset.normalize_on", "host", "device", True)
    config = base_config(zoo.get_config("regnety_400mf").model)
    config.dataset.normalize_on = "gpu"
    with pytest.raises(
        ConfigError, match=r"config.dataset.normalize_on='gpu' is invalid: must be 'device' .* or 'host'"
    ):
        validate_config(config)
