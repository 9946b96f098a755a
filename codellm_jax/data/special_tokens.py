"""Special tokens with stable ids, and their JSON record beside a tokenizer model.

Layout of a tokenizer trained by `tokenizer.train_tokenizer` (T5 convention for the first
three): pad = 0, eos = 1, unk = 2, bos = 3, then the control symbols in `CONTROL_SYMBOLS`
order (ids 4, 5, ...): fill-in-the-middle, chat roles, then the span-corruption sentinels
`<extra_id_0>`, `<extra_id_1>`, ... Control symbols are never produced by encoding text:
they are inserted by id only.
"""

from __future__ import annotations

import dataclasses
import json
import os

PAD, EOS, UNK, BOS = '<pad>', '</s>', '<unk>', '<s>'
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = '<fim_prefix>', '<fim_middle>', '<fim_suffix>'
SYSTEM, USER, ASSISTANT, END_OF_TURN = '<|system|>', '<|user|>', '<|assistant|>', '<|end|>'
NUM_SENTINELS = 100
FILENAME = 'special_tokens.json'


def sentinel(i: int) -> str:
    """The i-th span-corruption sentinel piece, `<extra_id_i>`."""
    return f'<extra_id_{i}>'


def control_symbols(num_sentinels: int = NUM_SENTINELS) -> list[str]:
    """Control symbols in id order (after pad, eos, unk, bos)."""
    named = [FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, SYSTEM, USER, ASSISTANT, END_OF_TURN]
    return named + [sentinel(i) for i in range(num_sentinels)]


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens a pipeline or prompt needs; None where a tokenizer lacks one.

    `sentinel_ids[i]` is `<extra_id_i>` (T5 span corruption); `roles` maps 'system', 'user',
    'assistant' to their marker ids.
    """

    pad: int = 0
    eos: int | None = None
    bos: int | None = None
    unk: int | None = None
    fim_prefix: int | None = None
    fim_middle: int | None = None
    fim_suffix: int | None = None
    system: int | None = None
    user: int | None = None
    assistant: int | None = None
    end_of_turn: int | None = None
    sentinel_ids: tuple[int, ...] = ()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> SpecialIds:
        d = json.loads(text)
        d['sentinel_ids'] = tuple(d.get('sentinel_ids', ()))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def all_ids(self) -> frozenset[int]:
        """Every special id (the set plain text must never produce)."""
        ids = [v for k, v in dataclasses.asdict(self).items() if k != 'sentinel_ids']
        return frozenset([i for i in ids if i is not None] + list(self.sentinel_ids))


def from_piece_lookup(piece_to_id, num_sentinels: int = NUM_SENTINELS) -> SpecialIds:
    """Looks the standard pieces up with `piece_to_id(piece) -> int | None`."""

    def get(p):
        return piece_to_id(p)

    sentinels = []
    for i in range(num_sentinels):
        sid = get(sentinel(i))
        if sid is None:
            break
        sentinels.append(sid)
    return SpecialIds(
        pad=get(PAD) if get(PAD) is not None else 0,
        eos=get(EOS),
        bos=get(BOS),
        unk=get(UNK),
        fim_prefix=get(FIM_PREFIX),
        fim_middle=get(FIM_MIDDLE),
        fim_suffix=get(FIM_SUFFIX),
        system=get(SYSTEM),
        user=get(USER),
        assistant=get(ASSISTANT),
        end_of_turn=get(END_OF_TURN),
        sentinel_ids=tuple(sentinels),
    )


def save(ids: SpecialIds, directory: str) -> str:
    """Writes `special_tokens.json` into `directory`; returns its path."""
    path = os.path.join(directory, FILENAME)
    with open(path, 'w') as f:
        f.write(ids.to_json())
    return path


def load(directory: str) -> SpecialIds | None:
    """Reads `special_tokens.json` from `directory`, or None when there is none."""
    path = os.path.join(directory, FILENAME)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return SpecialIds.from_json(f.read())
