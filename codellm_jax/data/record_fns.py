"""Per-record transforms of the pipelines: tfds record → example dict, packed batch → the
batch contract. Module-level functions bound with `functools.partial`, so that they pickle for
grain's multiprocess prefetch; the token logic itself lives in `preprocessing`.
"""

from __future__ import annotations

import functools
import json

import numpy as np

from codellm_jax.data import preprocessing


def text(value) -> str:
    """A tfds text feature (bytes) as str."""
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def example_fn(data_cfg, tok, lengths):
    """record, rng → example dict (see `preprocessing`), picked by task and dataset."""
    kw = dict(tok=tok, cfg=data_cfg)
    if data_cfg.task == 'lm':
        return functools.partial(_lm_record, **kw)
    if data_cfg.task == 'fim':
        return functools.partial(_fim_record, **kw)
    if data_cfg.task == 'span_corruption':
        return functools.partial(_tokens_record, **kw)
    if data_cfg.task == 'sft':
        return functools.partial(_sft_record, max_len=lengths['input'], **kw)
    return functools.partial(
        _seq2seq_record, enc_len=lengths['encoder'], dec_len=lengths['decoder'], **kw
    )


def document_text(record) -> str:
    """The document of a corpus record (its `content`)."""
    for key in ('content', 'text', 'source'):
        if key in record:
            return text(record[key])
    raise ValueError(f'A record with fields {sorted(record)} has no content/text field.')


def _lm_record(record, rng, *, tok, cfg):
    del rng
    ids = tok.encode(document_text(record))
    return preprocessing.lm_example(ids, tok.eos_id, tok.bos_id if cfg.add_bos else None)


def _fim_record(record, rng, *, tok, cfg):
    ids = preprocessing.maybe_fim(
        document_text(record),
        tok.encode,
        tok.special,
        rng,
        fim_rate=cfg.fim_rate,
        spm_rate=cfg.fim_spm_rate,
    )
    return preprocessing.lm_example(ids, tok.eos_id, tok.bos_id if cfg.add_bos else None)


def _tokens_record(record, rng, *, tok, cfg):
    del rng, cfg
    return {'tokens': np.asarray(tok.encode(document_text(record)), np.int32)}


def _prompt_response(record, cfg) -> tuple[str, str]:
    """(input text, output text) of an instructions or translation record."""
    if 'prompt' in record:
        return text(record['prompt']), text(record['response'])
    src, tgt = text(record['source']), text(record['target'])
    src_lang, tgt_lang = text(record['source_lang']), text(record['target_lang'])
    if cfg.translation_direction:
        want_src = cfg.translation_direction.split('->')[0].strip()
        if want_src == tgt_lang:
            src, tgt, src_lang, tgt_lang = tgt, src, tgt_lang, src_lang
    return f'Translate {src_lang} to {tgt_lang}:\n{src}', tgt


def _sft_record(record, rng, *, tok, cfg, max_len, with_flag=False):
    del rng
    bos = tok.bos_id if cfg.add_bos else None
    messages = text(record.get('messages', b''))
    if messages:
        tokens, weights = preprocessing.chat_tokens(json.loads(messages), tok.encode, tok.special)
        if bos is not None:
            tokens, weights = [bos] + tokens, [0.0] + weights
        out = preprocessing.truncate_weighted(tokens, weights, max_len)
    else:
        prompt, response = _prompt_response(record, cfg)
        out = preprocessing.sft_example(
            tok.encode(prompt), tok.encode(response), tok.eos_id, max_len, bos
        )
    return out if with_flag else out[0]


def _seq2seq_record(record, rng, *, tok, cfg, enc_len, dec_len, with_flag=False):
    del rng
    prompt, response = _prompt_response(record, cfg)
    out = preprocessing.seq2seq_example(
        tok.encode(prompt), tok.encode(response), tok.eos_id, enc_len, dec_len
    )
    return out if with_flag else out[0]


def span_corrupt(element, rng, *, special, cfg, lengths):
    """A concatenated raw chunk → one encoder-decoder row (segment 1, padded with 0)."""
    ids = element['tokens'][element['tokens_segment_ids'] > 0].tolist()
    inputs, targets = preprocessing.span_corruption(
        ids,
        rng,
        special,
        noise_density=cfg.noise_density,
        mean_noise_span_length=cfg.mean_noise_span_length,
    )
    example, _ = preprocessing.seq2seq_example(
        inputs, targets, special.eos, lengths['encoder'], lengths['decoder'], add_eos=False
    )
    out = {}
    for key, value in example.items():
        n = lengths['encoder'] if key.startswith('encoder') else lengths['decoder']
        out[key] = np.zeros(n, value.dtype)
        out[key][: len(value)] = value
        seg = np.zeros(n, np.int32)
        seg[: len(value)] = 1
        out[f'{key}_segment_ids'] = seg
    return out


def finalize_decoder(batch) -> dict[str, np.ndarray]:
    """Packed batch → the decoder batch contract (positions restart per segment)."""
    seg = np.asarray(batch['input_tokens_segment_ids'], np.int32)
    return {
        'input_tokens': np.asarray(batch['input_tokens'], np.int32),
        'target_tokens': np.asarray(batch['target_tokens'], np.int32),
        'positions': preprocessing.positions_from_segment_ids(seg),
        'segment_ids': seg,
        'loss_weights': np.where(seg > 0, batch['loss_weights'], 0).astype(np.float32),
    }


def finalize_encdec(batch) -> dict[str, np.ndarray]:
    """Packed batch → the encoder-decoder batch contract (t5x feature names)."""
    enc_seg = np.asarray(batch['encoder_input_tokens_segment_ids'], np.int32)
    dec_seg = np.asarray(batch['decoder_target_tokens_segment_ids'], np.int32)
    dec_weights = np.where(dec_seg > 0, batch['decoder_loss_weights'], 0)
    return {
        'encoder_input_tokens': np.asarray(batch['encoder_input_tokens'], np.int32),
        'encoder_segment_ids': enc_seg,
        'encoder_positions': preprocessing.positions_from_segment_ids(enc_seg),
        'decoder_input_tokens': np.asarray(batch['decoder_input_tokens'], np.int32),
        'decoder_target_tokens': np.asarray(batch['decoder_target_tokens'], np.int32),
        'decoder_segment_ids': dec_seg,
        'decoder_positions': preprocessing.positions_from_segment_ids(dec_seg),
        'decoder_loss_weights': dec_weights.astype(np.float32),
    }
