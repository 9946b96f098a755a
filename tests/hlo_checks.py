"""Checks on compiled (optimized) HLO text, shared by the models' decoding-loop tests."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp


def greedy_loop_hlo(step, params, cache, steps: int = 8) -> str:
    """Optimized HLO of `steps` greedy decoding steps of one row in a `fori_loop`, the cache
    donated. `step(params, tokens=, positions_BxT=, cache=)` is the model's cached call
    (`decoder.forward_with_cache` or `encoder_decoder.decode_with_cache`, cfg bound)."""

    def loop(params, cache):
        def body(i, carry):
            tok, cache = carry
            logits, cache = step(params, tokens_BxT=tok, positions_BxT=i[None, None], cache=cache)
            return jnp.argmax(logits, -1).astype(jnp.int32), cache

        return jax.lax.fori_loop(0, steps, body, (jnp.ones((1, 1), jnp.int32), cache))

    return jax.jit(loop, donate_argnums=1).lower(params, cache).compile().as_text()


def assert_loop_bodies_copy_less_than(hlo: str, limit_elems: int) -> None:
    """Fails if a `while` body of `hlo` has a copy or transpose of >= `limit_elems` elements.

    A decoding loop that updates its KV cache in place copies nothing cache-sized per step.
    """
    bodies = set(re.findall(r'body=%([\w.\-]+)', hlo))
    assert bodies, 'the program has no while loop'
    for computation in hlo.split('\n\n'):
        name = re.match(r'\s*%([\w.\-]+)', computation)
        if not name or name.group(1) not in bodies:
            continue
        for m in re.finditer(
            r'%([\w.\-]*(?:copy|transpose)[\w.\-]*) = \w+\[([\d,]*)\]', computation
        ):
            elems = math.prod(int(d) for d in m.group(2).split(',') if d)
            assert elems < limit_elems, f'{m.group(1)} copies a cache-sized buffer every step'
