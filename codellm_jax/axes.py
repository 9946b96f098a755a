"""The logical axis vocabulary, defined once.

Parameters are annotated with these names when created and activations are constrained
with them at block boundaries; `configs/*` map them onto mesh axes ('data', 'fsdp',
'tensor') through `config.mesh.rules` (see `codellm_jax.sharding`).
"""

BATCH = 'batch'
LENGTH = 'length'
EMBED = 'embed'
HEADS = 'heads'
KV_HEADS = 'kv_heads'
HEAD_DIM = 'head_dim'
MLP = 'mlp'
VOCAB = 'vocab'
LAYERS = 'layers'
# Relative-position buckets of T5's attention bias: never sharded.
REL_BUCKETS = 'rel_buckets'
# The length axis of a KV cache (keys/values), kept apart from activation `length`.
CACHE_LENGTH = 'cache_length'

ALL = (
    BATCH,
    LENGTH,
    EMBED,
    HEADS,
    KV_HEADS,
    HEAD_DIM,
    MLP,
    VOCAB,
    LAYERS,
    REL_BUCKETS,
    CACHE_LENGTH,
)

MESH_AXES = ('data', 'fsdp', 'tensor')

# Default logical → mesh rules (MaxText-style). Configs copy and may override them.
DEFAULT_RULES = (
    (BATCH, ('data', 'fsdp')),
    (LENGTH, None),
    (EMBED, 'fsdp'),
    (HEADS, 'tensor'),
    (KV_HEADS, 'tensor'),
    (HEAD_DIM, None),
    (MLP, 'tensor'),
    (VOCAB, 'tensor'),
    (LAYERS, None),
    (REL_BUCKETS, None),
    (CACHE_LENGTH, None),
)
