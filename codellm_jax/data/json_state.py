"""The pipeline's outermost iterator: grain state that survives a JSON round trip.

Checkpoints store the iterator state as JSON (`grain.checkpoint.CheckpointSave`), which
turns tuples into lists. grain 0.2.18's concat-then-split iterator keeps `remainder_slices`
as (start, end) tuples and tests `slice != (-1, -1)`, so after the round trip "no
remainder" reads as a remainder and the restored stream differs from the saved one
(whenever a checkpoint falls where no document is split, e.g. at every window start of
`row_shuffle_window`). `JsonStateIterator.set_state` turns those slices back into tuples.
"""

from __future__ import annotations

from typing import Any

import grain


def json_state_to_grain(state: Any) -> Any:
    """`state` with every `remainder_slices` mapping's values as tuples (the rest as is)."""
    if isinstance(state, dict):
        return {
            key: (
                {feature: tuple(sl) for feature, sl in value.items()}
                if key == 'remainder_slices' and isinstance(value, dict)
                else json_state_to_grain(value)
            )
            for key, value in state.items()
        }
    if isinstance(state, list):
        return [json_state_to_grain(x) for x in state]
    return state


class JsonStateIterator(grain.DatasetIterator):
    """Passes batches through; `set_state` accepts a state that went through JSON."""

    def __next__(self):
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(json_state_to_grain(state))
