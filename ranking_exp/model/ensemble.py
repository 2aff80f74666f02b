"""The mean-score ensemble of exported rankers, as one SavedModel (``ensemble.seeds``).

The members' exports are loaded into a ``tf.Module``; each of their serving signatures becomes
one of the same name, inputs and output keys that calls every member's and returns the plain
mean of their outputs. Saving the module copies the members' variables in, so the ensemble's
export is self-contained and serves like a member's (see ranking_exp/ensemble.py for why a plain
mean of raw scores).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf


class MeanEnsemble(tf.Module):
    def __init__(self, member_dirs: Sequence[str]):
        super().__init__(name="ranking_ensemble")
        if len(member_dirs) < 1:
            raise ValueError("an ensemble needs at least one member")
        self.members = [tf.saved_model.load(str(d)) for d in member_dirs]
        first = self.members[0].signatures
        for d, m in zip(member_dirs[1:], self.members[1:]):
            if set(m.signatures) != set(first):
                raise ValueError(f"{d}: signatures {sorted(m.signatures)} differ from the first member's "
                                 f"{sorted(first)}")
        self._names = list(first)

    def signatures(self) -> dict[str, Any]:
        """Every member signature's name -> the concrete function averaging it over the members."""
        return {name: self._mean_of(name).get_concrete_function() for name in self._names}

    def _mean_of(self, name: str):
        inputs = self.members[0].signatures[name].structured_input_signature[1]  # {input name: TensorSpec}
        members = self.members

        @tf.function(input_signature=[dict(inputs)])
        def mean(features):
            outputs = [m.signatures[name](**features) for m in members]
            return {key: tf.add_n([o[key] for o in outputs]) / float(len(outputs)) for key in outputs[0]}

        return mean


def save_mean_ensemble(member_dirs: Sequence[str], export_dir: str) -> None:
    module = MeanEnsemble(member_dirs)
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
