"""Weights outside a training run: weights directories, file formats, PyTorch layouts, starting points, exports.

files.py        weights-only directories (``save_weights``, ``load_weights``, ``read_meta``, ``input_spec``)
formats.py      safetensors (read and write), state dicts in .npz / .safetensors / PyTorch files (read)
layouts.py      pycls / torchvision / timm state dicts <-> Flax variables (``python -m regnet_jax.convert``)
pretrained.py   the weights of a weights directory or a training workdir, to start from (``load_pretrained``)
exporting.py    one portable file plus its config (``python -m regnet_jax.export``)
"""
