"""Where a sweep keeps its files, and reading them back.

    DIR/sweep.json               the resolved sweep spec, the design space and the sampling statistics
    DIR/configs/NNNNNN.json      one complete training config per model (``model`` as in regnet_jax/config.py)
    DIR/configs/NNNNNN.py        an ml_collections config file reading that JSON (python -m regnet_jax.train --config=...)
    DIR/configs_summary.json     per model: drawn values, config.model and flops/params/acts; aggregate statistics
    DIR/runs/NNNNNN/             the model's training workdir (the trainer's files) plus launch.json and train.log
    DIR/results.csv, results.jsonl    the table written by ``collect``
    DIR/analysis/                the report written by ``analyze`` (analysis.html, analysis.json, *.png)

DIR may be local or ``gs://`` (``regnet_jax.core.paths``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from regnet_jax.core import paths
from regnet_jax.core.errors import ConfigError


class SweepError(ConfigError):
    """A sweep directory is missing, incomplete or belongs to a different sweep."""


def model_id(index: int) -> str:
    return f"{index:06d}"


write_json = paths.write_json  # atomic: a reader never sees half a file; a killed writer leaves the old file
read_json = paths.read_json


@dataclasses.dataclass(frozen=True)
class SweepDir:
    """The paths of one sweep directory."""

    root: str

    @property
    def path(self) -> paths.Path:
        return paths.resolve(self.root)

    def _file(self, *parts: str) -> str:
        return str(self.path.joinpath(*parts))

    @property
    def spec_path(self) -> str:
        return self._file("sweep.json")

    @property
    def configs_dir(self) -> str:
        return self._file("configs")

    @property
    def summary_path(self) -> str:
        return self._file("configs_summary.json")

    @property
    def results_csv(self) -> str:
        return self._file("results.csv")

    @property
    def results_jsonl(self) -> str:
        return self._file("results.jsonl")

    def config_json(self, mid: str) -> str:
        return self._file("configs", f"{mid}.json")

    def config_py(self, mid: str) -> str:
        return self._file("configs", f"{mid}.py")

    def run_dir(self, mid: str) -> str:
        return self._file("runs", mid)

    def exists(self) -> bool:
        return paths.exists(self.spec_path)

    def require(self) -> SweepDir:
        """Self, or a SweepError saying how to create the sweep."""
        if not self.exists():
            if paths.isfile(self.root):
                raise SweepError(
                    f"{self.root} is a file, not a sweep directory: give the directory `python -m regnet_jax.sweep setup --out=DIR` created"
                )
            raise SweepError(
                f"{self.root} is not a sweep directory (no sweep.json): create it with `python -m regnet_jax.sweep setup --out={self.root} ...`"
            )
        return self

    def spec(self) -> dict[str, Any]:
        return read_json(self.require().spec_path)

    def model_ids(self) -> list[str]:
        """The ids of the models set up, in order."""
        self.require()
        return [f[:-5] for f in paths.listdir(self.configs_dir) if f.endswith(".json") and f[:-5].isdigit()]

    def config(self, mid: str) -> dict[str, Any]:
        return read_json(self.config_json(mid))

    def summary(self) -> dict[str, Any]:
        return read_json(self.summary_path)
