"""RegNet/AnyNet models in Flax linen: ``create_model(config_or_name)``, ``list_models()``."""

from regnet_jax.models.anynet import AnyNet, create_model, list_models, resolve_model_config
from regnet_jax.models.spec import ModelSpec, model_spec

__all__ = ["AnyNet", "ModelSpec", "create_model", "list_models", "model_spec", "resolve_model_config"]
