r"""The `Generator`: a model and its params become a `tokens_to_logits` callback.

  # standalone, from our pretrained format, a HF checkpoint dir, or a training workdir:
  python -m codellm_jax.generate --checkpoint=/ckpt/llama_jax --prompts=in.jsonl \
      --output=out.jsonl --strategy=sample --top_p=0.95 --num_samples=10 --max_new_tokens=256
  # from an experiment config (dispatched by `python -m codellm_jax.main --mode=generate`):
  run_generate(config, workdir)

Prompt JSONL: one object per line with "prompt" (text) or "tokens" (ids); other fields (e.g.
"id") are copied to the output line, which adds "samples": [{"tokens", "text", "score"}].

Where things happen:
  * Prompts are RIGHT-padded to a length bucket (powers of two from 16) and batched
    `batch_size` prompts at a time (the last batch padded with dummy prompts), and the KV
    cache holds bucket + max_new_tokens - 1 slots (a block for the prompt, then blocks of
    `cache_block` slots: the loop attends only to the filled ones), so a handful of
    programs serve all prompt lengths. Prompts are processed longest first; results come back in input order.
  * Stop conditions INSIDE the jitted loop: eos ids and the token ids of each stop string
    (as the tokenizer encodes it) — they end a row early and save compute.
  * Stop strings AFTER detokenization (exact, whatever the tokenization): `text` is cut
    before the first occurrence of any stop string, and `tokens` end with the token that
    completed it. eos and everything after it never appear in `text`.
  * Per-row RNG: sample j of prompt i uses fold_in(key(seed), i * num_samples + j), so the
    samples of a prompt do not depend on batching.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from codellm_jax import decoding
from codellm_jax.models import decoder, encoder_decoder
from codellm_jax.models.model_config import DecoderConfig, EncoderDecoderConfig

ModelConfig = DecoderConfig | EncoderDecoderConfig
_MIN_BUCKET = 16
# Decoding loops with fewer rows (batch x beams/samples) run the decoder with q/k/v fused
# into one matmul (`Generator._params_for`).
_FUSE_QKV_BELOW = 8


def fuses_qkv(rows: int) -> bool:
    """Whether a decoder-only loop of `rows` rows runs with q/k/v fused into one matmul."""
    return rows < _FUSE_QKV_BELOW


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """How to generate.

    Attributes:
      strategy: 'greedy' | 'beam' | 'sample'.
      max_new_tokens: generated tokens per sample, eos included.
      num_beams, length_penalty, length_penalty_style ('hf': len^a, 't5x': ((5+len)/6)^a),
        early_stopping (True | False | 'never', HF semantics), num_return_sequences:
        beam search.
      temperature, top_k (0 = off), top_p (1 = off), min_p (0 = off), num_samples: sampling.
      stop_sequences: strings that end a sample (see the module docstring).
      seed: sampling seed.
      batch_size: prompts per device call.
      truncate_prompt: 'error' (a prompt too long for the context is an error) or 'left'
        (keep its last tokens).
      eos_ids: end-of-sequence ids; None = the tokenizer's eos.
      add_bos: prepend the tokenizer's bos to TEXT prompts of a decoder-only model.
      add_eos_to_encoder: append eos to TEXT inputs of an encoder-decoder (T5 convention).
      max_memory_gb: refuse a batch whose estimated memory exceeds this; 0 = the device's.
      cache_block: slots per block of the generated part of the KV cache; the decoding loop
        runs one phase per block and attends only to the blocks filled so far (0 = the
        prompt's block holds everything: one phase, attention over the whole cache).
    """

    strategy: str = 'greedy'
    max_new_tokens: int = 128
    num_beams: int = 4
    length_penalty: float = 1.0
    length_penalty_style: str = 'hf'
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    num_samples: int = 1
    stop_sequences: tuple[str, ...] = ()
    seed: int = 0
    batch_size: int = 8
    truncate_prompt: str = 'error'
    eos_ids: tuple[int, ...] | None = None
    add_bos: bool = True
    add_eos_to_encoder: bool = True
    max_memory_gb: float = 0.0
    cache_block: int = 64

    def __post_init__(self):
        if self.strategy not in ('greedy', 'beam', 'sample'):
            raise ValueError(f"strategy={self.strategy!r}; expected 'greedy', 'beam' or 'sample'.")
        if self.max_new_tokens < 1:
            raise ValueError(f'max_new_tokens={self.max_new_tokens} must be >= 1.')
        if self.batch_size < 1:
            raise ValueError(f'batch_size={self.batch_size} must be >= 1.')
        if self.cache_block < 0:
            raise ValueError(f'cache_block={self.cache_block} must be >= 0 (0 = one block).')
        if self.truncate_prompt not in ('error', 'left'):
            raise ValueError(f"truncate_prompt={self.truncate_prompt!r}; use 'error' or 'left'.")
        if self.strategy == 'beam':
            if self.num_beams < 1 or not 1 <= self.num_return_sequences <= self.num_beams:
                raise ValueError(
                    f'num_return_sequences={self.num_return_sequences} must be in [1, num_beams='
                    f'{self.num_beams}] and num_beams >= 1.'
                )
            decoding.length_penalty_fn(self.length_penalty, self.length_penalty_style)
            if self.early_stopping not in (True, False, 'never'):
                raise ValueError(
                    f"early_stopping={self.early_stopping!r}; expected True, False or 'never'."
                )
        if self.strategy == 'greedy' and self.num_samples != 1:
            raise ValueError('num_samples > 1 needs strategy="sample" (greedy samples are equal).')
        if self.num_samples < 1:
            raise ValueError(f'num_samples={self.num_samples} must be >= 1.')
        self.policy()  # validates temperature / top_p / min_p / top_k

    def policy(self) -> decoding.Greedy | decoding.Sampling:
        strategy = 'sample' if self.strategy == 'sample' else 'greedy'
        return decoding.make_policy(strategy, self.temperature, self.top_k, self.top_p, self.min_p)

    @property
    def samples_per_prompt(self) -> int:
        return self.num_samples if self.strategy == 'sample' else 1


@dataclasses.dataclass(frozen=True)
class Sample:
    """One generated continuation: tokens (eos / stop tokens kept), text, score.

    score: beam search: HF `sequences_scores` (length-penalized summed log-prob); greedy and
    sampling: summed log-prob of the tokens under the model (before temperature/filters).
    """

    tokens: list[int]
    text: str
    score: float


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about one compiled generation program (hashable)."""

    model_kind: str
    model_cfg: ModelConfig
    strategy: str
    policy: Any
    max_new_tokens: int
    eos_ids: tuple[int, ...]
    stop_ids: tuple[tuple[int, ...], ...]
    pad_id: int
    num_beams: int
    length_penalty: float
    length_penalty_style: str
    early_stopping: bool | str


def _rows_per_prompt(spec: _Spec, gen_cfg: GenerateConfig) -> int:
    return spec.num_beams if spec.strategy == 'beam' else gen_cfg.samples_per_prompt


@functools.partial(jax.jit, static_argnames=('spec', 'rows', 'blocks'))
def _init_cache(params, inputs_BxS, *, spec: _Spec, rows: int, blocks: tuple[int, ...]):
    """The empty blocked cache; for encoder-decoders, encode once and project cross k/v."""
    if spec.model_kind == 'decoder':
        return decoder.init_cache(spec.model_cfg, rows, blocks)
    mask_BxS = inputs_BxS >= 0
    tokens_BxS = jnp.where(mask_BxS, inputs_BxS, 0)
    encoded_BxSxD = encoder_decoder.encode(params, spec.model_cfg, tokens_BxS, mask_BxS)
    return encoder_decoder.init_cache(params, spec.model_cfg, encoded_BxSxD, mask_BxS, rows, blocks)


@functools.partial(jax.jit, static_argnames=('spec',), donate_argnames=('cache',))
def _generate_batch(params, cache, prompt_BxT, prompt_len_B, row_ids_R, seed, *, spec: _Spec):
    """One batch → (tokens [B, n, N], lengths [B, n], scores [B, n], final cache).

    The cache is donated and returned so the loop updates it in place (no copy of the
    input cache); callers drop the returned one.
    """
    if spec.model_kind == 'decoder':
        tokens_to_logits = functools.partial(decoder.forward_with_cache, params, spec.model_cfg)
    else:
        tokens_to_logits = functools.partial(
            encoder_decoder.decode_with_cache, params, spec.model_cfg
        )
    stop_arr = decoding.stop_sequence_array(spec.stop_ids)
    batch = prompt_BxT.shape[0]
    if spec.strategy == 'beam':
        out = decoding.beam_search(
            tokens_to_logits,
            cache,
            prompt_BxT,
            prompt_len_B,
            num_beams=spec.num_beams,
            max_new_tokens=spec.max_new_tokens,
            eos_ids=spec.eos_ids,
            stop_ids_SxM=stop_arr,
            pad_id=spec.pad_id,
            length_penalty=spec.length_penalty,
            length_penalty_style=spec.length_penalty_style,
            early_stopping=spec.early_stopping,
        )
        return out.tokens_BxNbxN, out.lengths_BxNb, out.scores_BxNb, out.cache
    n = row_ids_R.shape[0] // batch
    out = decoding.decode(
        tokens_to_logits,
        cache,
        jnp.repeat(prompt_BxT, n, axis=0),
        jnp.repeat(prompt_len_B, n, axis=0),
        policy=spec.policy,
        max_new_tokens=spec.max_new_tokens,
        eos_ids=spec.eos_ids,
        stop_ids_SxM=stop_arr,
        pad_id=spec.pad_id,
        keys_R=decoding.row_keys(jax.random.key(seed), row_ids_R),
    )
    shape = (batch, n)
    return (
        out.tokens_RxN.reshape(shape + (-1,)),
        out.lengths_R.reshape(shape),
        out.scores_R.reshape(shape),
        out.cache,
    )


def estimate_memory_bytes(
    model_kind: str, cfg: ModelConfig, rows: int, batch: int, prompt_len: int, cache_len: int
) -> int:
    """A rough upper estimate of one generation call's device memory (params excluded).

    Counts the KV cache twice (beam reorder / donation double-buffering), the prefill logits
    and activations.
    """
    itemsize = np.dtype(cfg.dtype).itemsize if cfg.dtype != 'bfloat16' else 2
    if model_kind == 'decoder':
        kv = 2 * cfg.num_layers * rows * cache_len * cfg.num_kv_heads * cfg.head_dim
        ff = cfg.d_ff
    else:
        kv = 2 * cfg.num_decoder_layers * cfg.num_heads * cfg.head_dim
        kv = kv * (rows * cache_len + batch * prompt_len)
        ff = cfg.d_ff
    width = prompt_len if model_kind == 'decoder' else 1
    logits = rows * width * cfg.vocab_size * 4
    acts = rows * width * (4 * cfg.d_model + 3 * ff) * 4
    return int(2 * kv * itemsize + logits + acts)


def _device_memory_bytes() -> int:
    stats = jax.devices()[0].memory_stats() or {}
    if 'bytes_limit' in stats:
        return int(stats['bytes_limit'])
    return int(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))


class Generator:
    """A model with its params and tokenizer, ready to generate; see `make_generator`."""

    def __init__(self, model_kind: str, model_cfg: ModelConfig, params: Any, tokenizer: Any):
        kinds = {'decoder': DecoderConfig, 'encoder_decoder': EncoderDecoderConfig}
        if model_kind not in kinds or not isinstance(model_cfg, kinds[model_kind]):
            raise ValueError(
                f'model_kind={model_kind!r} with {type(model_cfg).__name__}; expected '
                "'decoder' + DecoderConfig or 'encoder_decoder' + EncoderDecoderConfig."
            )
        self.model_kind = model_kind
        self.model_cfg = model_cfg
        # Decoding runs the layers one by one: give each layer its own buffers once here
        # (a slice of a stacked weight is a copy, every step, on XLA CPU), and the kernels
        # of a step transposed (`decode_layout`: the weight is the left matmul operand).
        if model_kind == 'decoder':
            self.params = decoder.decode_layout(params)
        else:
            self.params = encoder_decoder.decode_layout(params)
        self._fused_params = None
        self.tokenizer = tokenizer

    def _params_for(self, rows: int) -> Any:
        """The decoder's params for a loop of `rows` rows: q/k/v fused below `_FUSE_QKV_BELOW`.

        Measured (d_model 512, 2 CPU threads, ms per step, interleaved): fused vs separate
        at 1 row 4.90 vs 5.51, 4 rows (beams) 12.6 vs 13.2, 8 rows 16.4 vs 15.8 (there the
        three separate matmuls run concurrently). Built once, on first use; the fused
        layout shares every other leaf with `self.params`, so it costs one more copy of the
        q/k/v kernels (~12% of a Llama-3-8B layer's weights) while the generator lives.
        """
        if self.model_kind != 'decoder' or not fuses_qkv(rows):
            return self.params
        if self._fused_params is None:
            self._fused_params = decoder.decode_layout(self.params, fuse_qkv=True)
        return self._fused_params

    # -- prompts --------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str] | Sequence[Sequence[int]], gen_cfg) -> list:
        """Token ids per prompt (text is tokenized; bos/eos added per `gen_cfg`)."""
        out = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError(f'Prompt {i} is text but the generator has no tokenizer.')
                ids = list(self.tokenizer.encode(p))
                if self.model_kind == 'decoder':
                    if gen_cfg.add_bos and self.tokenizer.bos_id is not None:
                        ids = [self.tokenizer.bos_id] + ids
                elif gen_cfg.add_eos_to_encoder and self.tokenizer.eos_id is not None:
                    ids = ids + [self.tokenizer.eos_id]
            else:
                ids = [int(t) for t in p]
            if not ids:
                raise ValueError(f'Prompt {i} is empty; give at least one token.')
            bad = [t for t in ids if not 0 <= t < self.model_cfg.vocab_size]
            if bad:
                raise ValueError(
                    f'Prompt {i} has token ids {bad[:5]} outside [0, {self.model_cfg.vocab_size}).'
                )
            out.append(self._fit(i, ids, gen_cfg))
        return out

    def _fit(self, i: int, ids: list[int], gen_cfg: GenerateConfig) -> list[int]:
        limit = self.model_cfg.max_seq_len
        if self.model_kind == 'decoder':
            limit -= gen_cfg.max_new_tokens
        elif gen_cfg.max_new_tokens + 1 > limit:
            raise ValueError(
                f'max_new_tokens={gen_cfg.max_new_tokens} + the start token exceeds the model '
                f'context max_seq_len={limit}; lower max_new_tokens.'
            )
        if limit < 1:
            raise ValueError(
                f'max_new_tokens={gen_cfg.max_new_tokens} leaves no room for a prompt in the '
                f'context of {self.model_cfg.max_seq_len} tokens; lower max_new_tokens.'
            )
        if len(ids) <= limit:
            return ids
        if gen_cfg.truncate_prompt == 'left':
            return ids[-limit:]
        raise ValueError(
            f'Prompt {i} has {len(ids)} tokens but at most {limit} fit (max_seq_len='
            f'{self.model_cfg.max_seq_len}, max_new_tokens={gen_cfg.max_new_tokens}); shorten '
            "it, lower max_new_tokens, or set truncate_prompt='left'."
        )

    def _spec(self, gen_cfg: GenerateConfig) -> _Spec:
        eos = gen_cfg.eos_ids
        if eos is None:
            eos_id = None if self.tokenizer is None else self.tokenizer.eos_id
            eos = () if eos_id is None else (int(eos_id),)
        stop_ids = ()
        if gen_cfg.stop_sequences:
            if self.tokenizer is None:
                raise ValueError('stop_sequences need a tokenizer; the generator has none.')
            stop_ids = tuple(tuple(self.tokenizer.encode(s)) for s in gen_cfg.stop_sequences)
        policy = gen_cfg.policy()
        policy.validate(self.model_cfg.vocab_size)
        if gen_cfg.strategy == 'beam' and 2 * gen_cfg.num_beams > self.model_cfg.vocab_size:
            raise ValueError(f'num_beams={gen_cfg.num_beams} is too large for the vocabulary.')
        pad = 0 if self.tokenizer is None else int(self.tokenizer.pad_id)
        return _Spec(
            model_kind=self.model_kind,
            model_cfg=self.model_cfg,
            strategy=gen_cfg.strategy,
            policy=policy,
            max_new_tokens=gen_cfg.max_new_tokens,
            eos_ids=tuple(eos),
            stop_ids=stop_ids,
            pad_id=pad,
            num_beams=gen_cfg.num_beams if gen_cfg.strategy == 'beam' else 1,
            length_penalty=float(gen_cfg.length_penalty),
            length_penalty_style=gen_cfg.length_penalty_style,
            early_stopping=gen_cfg.early_stopping,
        )

    def _shapes(self, longest: int, gen_cfg: GenerateConfig) -> tuple[int, tuple[int, ...]]:
        """(padded prompt width, cache block sizes) for a batch whose longest prompt is
        `longest`."""
        n_new, max_len = gen_cfg.max_new_tokens, self.model_cfg.max_seq_len
        buckets = decoding.pow2_buckets(_MIN_BUCKET, max_len)
        width = decoding.bucket_length(longest, buckets)
        if self.model_kind == 'decoder':
            width = min(width, max_len - n_new)
            return width, decoding.cache_blocks(width, n_new, gen_cfg.cache_block)
        width = min(width, max(max_len, longest))
        return width, decoding.cache_blocks(1, n_new, gen_cfg.cache_block)

    # -- generation -----------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        gen_cfg: GenerateConfig,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[list[Sample]]:
        """Per prompt, its samples (sampling), hypotheses best first (beam) or one (greedy).

        Args:
          prompts: texts, or token-id lists used as given.
          gen_cfg: the `GenerateConfig`.
          progress: called with (prompts done, total) after each batch.
        """
        spec = self._spec(gen_cfg)
        ids = self.encode_prompts(prompts, gen_cfg)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        n_rows = _rows_per_prompt(spec, gen_cfg)
        n_out = gen_cfg.num_return_sequences if spec.strategy == 'beam' else n_rows
        bsz = min(gen_cfg.batch_size, len(ids)) or 1
        results: list[list[Sample]] = [[] for _ in ids]
        for start in range(0, len(order), bsz):
            chunk = order[start : start + bsz]
            tokens, lengths, scores = self._run_batch(
                spec, gen_cfg, [ids[i] for i in chunk], chunk, bsz, n_rows
            )
            for j, i in enumerate(chunk):
                results[i] = [
                    self._sample(tokens[j, k, : lengths[j, k]], float(scores[j, k]), gen_cfg)
                    for k in range(n_out)
                ]
            if progress is not None:
                progress(min(start + bsz, len(ids)), len(ids))
        return results

    def _run_batch(self, spec, gen_cfg, batch_ids, indices, bsz, n_rows):
        longest = max(len(x) for x in batch_ids)
        width, blocks = self._shapes(longest, gen_cfg)
        cache_len = sum(blocks)
        rows = bsz * n_rows
        budget = gen_cfg.max_memory_gb * 2**30 or _device_memory_bytes()
        need = estimate_memory_bytes(self.model_kind, self.model_cfg, rows, bsz, width, cache_len)
        if need > budget:
            raise ValueError(
                f'Generation needs about {need / 2**30:.2f} GiB ({bsz} prompts x {n_rows} '
                f'beams/samples, cache {cache_len} slots) but {budget / 2**30:.2f} GiB are '
                'available; lower batch_size, num_beams/num_samples or max_new_tokens.'
            )
        inputs = np.full((bsz, width), -1, np.int32)
        for j, x in enumerate(batch_ids):
            inputs[j, : len(x)] = x
        inputs[len(batch_ids) :, 0] = 0  # dummy prompts fill the last batch
        row_ids = np.zeros((bsz, n_rows), np.int32)
        row_ids[: len(indices)] = np.asarray(indices)[:, None] * n_rows + np.arange(n_rows)
        params = self._params_for(rows)
        cache = _init_cache(params, jnp.asarray(inputs), spec=spec, rows=rows, blocks=blocks)
        if self.model_kind == 'decoder':
            prompt = np.maximum(inputs, 0)
            lens = np.maximum((inputs >= 0).sum(1), 1)
        else:
            start = self.model_cfg.decoder_start_token_id
            prompt, lens = np.full((bsz, 1), start, np.int32), np.ones((bsz,), np.int32)
        out = _generate_batch(
            params,
            cache,
            jnp.asarray(prompt),
            jnp.asarray(lens, jnp.int32),
            jnp.asarray(row_ids.reshape(-1)),
            jnp.uint32(gen_cfg.seed),
            spec=spec,
        )
        tokens, lengths, scores, _ = out
        return jax.device_get((tokens, lengths, scores))

    def _sample(self, tokens: np.ndarray, score: float, gen_cfg: GenerateConfig) -> Sample:
        tokens = [int(t) for t in tokens]
        if self.tokenizer is None:
            return Sample(tokens, '', score)
        text = self.tokenizer.decode(tokens)
        cut = _first_stop(text, gen_cfg.stop_sequences)
        if cut is not None:
            text = text[:cut]
            # The shortest token prefix whose text contains a stop string.
            lo, hi = 1, len(tokens)
            while lo < hi:
                mid = (lo + hi) // 2
                if _first_stop(self.tokenizer.decode(tokens[:mid]), gen_cfg.stop_sequences) is None:
                    lo = mid + 1
                else:
                    hi = mid
            tokens = tokens[:lo]
        return Sample(tokens, text, score)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def make_generator(
    model_kind: str, model_cfg: ModelConfig, params: Any, tokenizer: Any
) -> Generator:
    """A `Generator`; `tokenizer` may be None when prompts are token ids (texts are then '')."""
    return Generator(model_kind, model_cfg, params, tokenizer)
