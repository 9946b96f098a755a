"""Pure per-example transforms: causal LM, fill-in-the-middle, SFT masks, chats, T5 span
corruption, seq2seq, and helpers on packed rows. Token ids are Python/numpy ints; nothing here
touches files, grain or global state. Randomness comes in as a `np.random.Generator`.

Example dicts hold 1-D numpy arrays of one document; packing (in `pipeline`) concatenates them
into rows and adds segment ids and positions, so shifts done here stay within a document.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from codellm_jax.data import special_tokens as st

Example = dict[str, np.ndarray]


def _i32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int32)


def lm_example(ids: Sequence[int], eos_id: int, bos_id: int | None = None) -> Example:
    """Causal LM: tokens = [bos] + ids + [eos]; inputs = tokens[:-1], targets = tokens[1:].

    Returns `input_tokens`, `target_tokens` [n] int32 and `loss_weights` [n] float32 (all 1).
    """
    tokens = ([bos_id] if bos_id is not None else []) + list(ids) + [eos_id]
    tokens = _i32(tokens)
    return {
        'input_tokens': tokens[:-1],
        'target_tokens': tokens[1:],
        'loss_weights': np.ones(len(tokens) - 1, np.float32),
    }


def weighted_example(tokens: Sequence[int], weights: Sequence[float]) -> Example:
    """Decoder example from a token sequence and per-token weights (weight of predicting it).

    `weights[i]` is the loss weight of token i as a target; inputs = tokens[:-1].
    """
    tokens, weights = _i32(tokens), np.asarray(weights, np.float32)
    return {
        'input_tokens': tokens[:-1],
        'target_tokens': tokens[1:],
        'loss_weights': weights[1:],
    }


def fim_split(text: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """Splits `text` at two uniformly random character offsets into (prefix, middle, suffix)."""
    a, b = sorted(rng.integers(0, len(text) + 1, size=2).tolist())
    return text[:a], text[a:b], text[b:]


def fim_tokens(
    prefix: Sequence[int],
    middle: Sequence[int],
    suffix: Sequence[int],
    special: st.SpecialIds,
    *,
    spm: bool,
) -> list[int]:
    """Fill-in-the-middle order (Bavarian et al. 2022), without eos.

    PSM: <pre> prefix <suf> suffix <mid> middle.
    SPM: <pre> <suf> suffix <mid> prefix middle (the prefix continues straight into the middle).
    """
    pre, mid, suf = special.fim_prefix, special.fim_middle, special.fim_suffix
    if None in (pre, mid, suf):
        raise ValueError('This tokenizer has no fill-in-the-middle tokens; use task="lm".')
    if spm:
        return [pre, suf, *suffix, mid, *prefix, *middle]
    return [pre, *prefix, suf, *suffix, mid, *middle]


def maybe_fim(
    text: str,
    encode: Callable[[str], list[int]],
    special: st.SpecialIds,
    rng: np.random.Generator,
    *,
    fim_rate: float,
    spm_rate: float,
) -> list[int]:
    """With probability `fim_rate` the FIM token sequence of `text` (SPM with `spm_rate`),
    else `encode(text)`. Always draws the same number of random values (stable streams)."""
    do_fim, do_spm = rng.random(2) < (fim_rate, spm_rate)
    prefix, middle, suffix = fim_split(text, rng)
    if not do_fim:
        return encode(text)
    return fim_tokens(encode(prefix), encode(middle), encode(suffix), special, spm=bool(do_spm))


def truncate_prompt_response(
    prompt: Sequence[int], response: Sequence[int], max_tokens: int
) -> tuple[list[int], list[int], bool]:
    """Fits prompt + response into `max_tokens`: drops the prompt's start first (keeping at
    least half the budget for it when the response is long), then the response's end.

    Returns (prompt, response, truncated).
    """
    prompt, response = list(prompt), list(response)
    if len(prompt) + len(response) <= max_tokens:
        return prompt, response, False
    keep_prompt = max(max_tokens - len(response), min(len(prompt), max_tokens // 2))
    prompt = prompt[len(prompt) - keep_prompt :] if keep_prompt else []
    response = response[: max_tokens - len(prompt)]
    return prompt, response, True


def sft_example(
    prompt: Sequence[int],
    response: Sequence[int],
    eos_id: int,
    max_len: int,
    bos_id: int | None = None,
) -> tuple[Example, bool]:
    """Prompt/response pair → decoder example of at most `max_len` positions.

    Loss weight 0 on the prompt, 1 on the response and its eos. Returns (example, truncated).
    """
    head = [bos_id] if bos_id is not None else []
    budget = max_len + 1 - len(head) - 1  # tokens = head + prompt + response + eos = max_len + 1
    prompt, response, truncated = truncate_prompt_response(prompt, response, budget)
    tokens = head + prompt + response + [eos_id]
    weights = [0.0] * (len(head) + len(prompt)) + [1.0] * (len(response) + 1)
    return weighted_example(tokens, weights), truncated


def chat_tokens(
    messages: Sequence[Mapping[str, str]],
    encode: Callable[[str], list[int]],
    special: st.SpecialIds,
) -> tuple[list[int], list[float]]:
    """Chat → (tokens, weights): `<|role|> content <|end|>` per turn, then eos.

    Only assistant turns are weighted (their content and closing `<|end|>`); the final eos is
    weighted when the last turn is the assistant's.
    """
    roles = {'system': special.system, 'user': special.user, 'assistant': special.assistant}
    if None in roles.values() or special.end_of_turn is None or special.eos is None:
        raise ValueError('This tokenizer lacks chat role markers; use prompt/response pairs.')
    tokens, weights = [], []
    for i, m in enumerate(messages):
        if m.get('role') not in roles:
            raise ValueError(f'Chat message {i} has role {m.get("role")!r}; expected {roles}.')
        w = 1.0 if m['role'] == 'assistant' else 0.0
        body = encode(m.get('content', '')) + [special.end_of_turn]
        tokens += [roles[m['role']]] + body
        weights += [0.0] + [w] * len(body)
    last_is_assistant = bool(messages) and messages[-1]['role'] == 'assistant'
    return tokens + [special.eos], weights + [1.0 if last_is_assistant else 0.0]


def truncate_weighted(
    tokens: Sequence[int], weights: Sequence[float], max_len: int
) -> tuple[Example, bool]:
    """`weighted_example` of the first `max_len + 1` tokens; returns (example, truncated)."""
    truncated = len(tokens) > max_len + 1
    return weighted_example(tokens[: max_len + 1], weights[: max_len + 1]), truncated


def span_corruption_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """(raw tokens per example, targets length) so corrupted inputs fill `inputs_length`.

    As T5's `random_spans_helper`: inputs = non-noise tokens + one sentinel per span + eos,
    targets = noise tokens + one sentinel per span + eos. 512 → (568, 114) at 0.15 / 3.
    """

    def lengths(tokens_length):
        num_noise = int(round(tokens_length * noise_density))
        num_spans = int(round(num_noise / mean_noise_span_length))
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    return tokens_length, lengths(tokens_length)[1]


def _random_segmentation(num_items: int, num_segments: int, rng) -> np.ndarray:
    """Lengths of a uniformly random partition of `num_items` into `num_segments` parts > 0."""
    first_in_segment = np.zeros(num_items - 1, np.int64)
    first_in_segment[: num_segments - 1] = 1
    first_in_segment = rng.permutation(first_in_segment)
    segment_id = np.cumsum(np.concatenate([[0], first_in_segment]))
    return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """[length] bool: T5's noise mask, spans alternating non-noise/noise, starting non-noise."""
    num_noise = int(round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    num_nonnoise = length - num_noise
    num_spans = min(num_spans, num_noise, num_nonnoise)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = _random_segmentation(num_nonnoise, num_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    return np.repeat(np.tile([False, True], num_spans), interleaved)


def span_corruption(
    ids: Sequence[int],
    rng: np.random.Generator,
    special: st.SpecialIds,
    *,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tuple[list[int], list[int]]:
    """T5 span corruption: (inputs, targets), each ending with eos.

    Each noise span becomes one sentinel `<extra_id_k>` (k = 0, 1, ... in order) in the inputs;
    the targets list each sentinel followed by the span it replaced.
    """
    ids = list(ids)
    if len(ids) < 2:
        return ids + [special.eos], [special.eos]
    mask = random_spans_noise_mask(len(ids), noise_density, mean_noise_span_length, rng)
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    if int(starts.sum()) > len(special.sentinel_ids):
        raise ValueError(
            f'{int(starts.sum())} noise spans but the tokenizer has only '
            f'{len(special.sentinel_ids)} sentinels; shorten the sequence or add sentinels.'
        )
    inputs, targets, k = [], [], -1
    for tok, noise, start in zip(ids, mask, starts, strict=True):
        if start:
            k += 1
            inputs.append(special.sentinel_ids[k])
            targets.append(special.sentinel_ids[k])
        (targets if noise else inputs).append(tok)
    return inputs + [special.eos], targets + [special.eos]


def seq2seq_example(
    inputs: Sequence[int],
    targets: Sequence[int],
    eos_id: int,
    max_encoder_len: int,
    max_decoder_len: int,
    *,
    add_eos: bool = True,
) -> tuple[Example, bool]:
    """Encoder-decoder example; decoder inputs = targets shifted right, starting with 0.

    Sequences longer than their budget are cut at the end (the eos is kept as last token).
    Returns (example with `encoder_input_tokens`, `decoder_input_tokens`,
    `decoder_target_tokens`, `decoder_loss_weights`; truncated).
    """
    enc = list(inputs) + ([eos_id] if add_eos else [])
    dec = list(targets) + ([eos_id] if add_eos else [])
    truncated = len(enc) > max_encoder_len or len(dec) > max_decoder_len
    if len(enc) > max_encoder_len:
        enc = enc[: max_encoder_len - 1] + enc[-1:]
    if len(dec) > max_decoder_len:
        dec = dec[: max_decoder_len - 1] + dec[-1:]
    dec = _i32(dec)
    return {
        'encoder_input_tokens': _i32(enc),
        'decoder_input_tokens': np.concatenate([_i32([0]), dec[:-1]]),
        'decoder_target_tokens': dec,
        'decoder_loss_weights': np.ones(len(dec), np.float32),
    }, truncated


def positions_from_segment_ids(segment_ids: np.ndarray) -> np.ndarray:
    """[..., L] int32 positions restarting at 0 at every segment change; 0 on padding."""
    seg = np.asarray(segment_ids)
    idx = np.broadcast_to(np.arange(seg.shape[-1]), seg.shape)
    change = np.ones(seg.shape, bool)
    change[..., 1:] = seg[..., 1:] != seg[..., :-1]
    start = np.maximum.accumulate(np.where(change, idx, 0), axis=-1)
    return np.where(seg > 0, idx - start, 0).astype(np.int32)


def packing_efficiency(segment_ids: np.ndarray) -> float:
    """Fraction of positions holding a real token (segment id > 0)."""
    seg = np.asarray(segment_ids)
    return float((seg > 0).mean()) if seg.size else 0.0
