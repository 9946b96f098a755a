"""Device mesh from config, logical-axis rules → shardings, abstract-first sharded init.

The mesh has at most the axes ('data', 'fsdp', 'tensor') (`codellm_jax.axes.MESH_AXES`), all
of type `AxisType.Auto` (GSPMD-style: shardings are hints propagated by the compiler).
Parameters carry logical axis names from creation (`nn.with_logical_partitioning`); the
rules in `config.mesh.rules` map them to mesh axes.

Typical use (abstract first, jit once):

    mesh = make_mesh(config.mesh)
    rules = model_rules(config.mesh.rules, model_cfg, mesh)
    params, shardings = init_sharded(partial(decoder.init_params_boxed, model_cfg), rng,
                                     mesh, rules)
    with logical_rules(mesh, rules):            # activation constraints while tracing
        logits = jax.jit(decoder.forward, static_argnums=1)(params, model_cfg, tokens_BxT)

Key/value heads: when the tensor-parallel size exceeds `num_kv_heads` and is a multiple of
it, `model_rules` replicates the kv-head axis (each tensor shard holds all K kv heads, as
Llama-70B does with 8 kv heads on 16-way tensor parallelism); any other non-dividing
combination is an error.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from codellm_jax import axes

Rules = tuple[tuple[str, Any], ...]


def normalize_rules(rules: Sequence[Sequence[Any]]) -> Rules:
    """Rules as hashable tuples `((logical, mesh_axis_or_tuple_or_None), ...)`.

    Config files may hold lists (after a ConfigDict / JSON round trip); unknown logical
    names are an error so a typo cannot silently replicate an axis.
    """
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f'Sharding rule {rule!r} is not a (logical_axis, mesh_axes) pair.')
        name, target = rule
        if name not in axes.ALL:
            raise ValueError(f'Unknown logical axis {name!r} in rules; known: {axes.ALL}.')
        if isinstance(target, list | tuple):
            target = tuple(target)
        out.append((name, target))
    return tuple(out)


def _mesh_shape_and_axes(mesh_cfg: Any) -> tuple[tuple[int, ...], tuple[str, ...]]:
    if isinstance(mesh_cfg, Mapping) or hasattr(mesh_cfg, 'shape') and hasattr(mesh_cfg, 'axes'):
        shape, names = mesh_cfg['shape'], mesh_cfg.get('axes', axes.MESH_AXES)
    else:
        shape, names = mesh_cfg
    return tuple(int(s) for s in shape), tuple(names)


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` with `AxisType.Auto` axes from `config.mesh` or `(shape, axis_names)`.

    One size may be -1: it takes the devices left over. The product of sizes must equal
    the device count (all devices by default).
    """
    shape, names = _mesh_shape_and_axes(mesh_cfg)
    if len(shape) != len(names):
        raise ValueError(f'Mesh shape {shape} and axis names {names} differ in length.')
    unknown = [n for n in names if n not in axes.MESH_AXES]
    if unknown:
        raise ValueError(f'Unknown mesh axes {unknown}; use a subset of {axes.MESH_AXES}.')
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if shape.count(-1) > 1:
        raise ValueError(f'Mesh shape {shape} has more than one -1 (fill) entry.')
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f'Mesh shape {shape} has a size that is neither positive nor -1.')
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n % known:
            raise ValueError(
                f'Mesh shape {shape} over {dict(zip(names, shape, strict=True))}: the fixed '
                f'sizes (product {known}) do not divide the {n} devices.'
            )
        shape = tuple(n // known if s == -1 else s for s in shape)
    if math.prod(shape) != n:
        raise ValueError(
            f'Mesh shape {shape} (axes {names}) needs {math.prod(shape)} devices but '
            f'{n} are available; change config.mesh.shape (use -1 to fill one axis).'
        )
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def mesh_axis_size(mesh: Mesh, mesh_axes: Any) -> int:
    """Number of shards of one `PartitionSpec` entry (None, a name or a tuple of names)."""
    if mesh_axes is None:
        return 1
    if isinstance(mesh_axes, str):
        mesh_axes = (mesh_axes,)
    return math.prod(mesh.shape[a] for a in mesh_axes if a in mesh.shape)


def logical_size(mesh: Mesh, rules: Rules, logical_axis: str) -> int:
    """How many shards the rules split `logical_axis` into on this mesh."""
    spec = nn.logical_to_mesh_axes((logical_axis,), normalize_rules(rules))
    return mesh_axis_size(mesh, spec[0])


def model_rules(rules: Sequence[Sequence[Any]], model_cfg: Any, mesh: Mesh) -> Rules:
    """Checks the model against the mesh; replicates kv heads where documented (module doc).

    Raises a clear error when the split of heads, kv heads or the MLP width does not divide.
    """
    rules = normalize_rules(rules)
    heads = model_cfg.num_heads
    n_heads = logical_size(mesh, rules, axes.HEADS)
    if heads % n_heads:
        raise ValueError(
            f'num_heads={heads} is not divisible by its {n_heads}-way split (mesh '
            f'{dict(mesh.shape)}); pick a tensor-parallel size that divides num_heads.'
        )
    d_ff = model_cfg.d_ff
    n_mlp = logical_size(mesh, rules, axes.MLP)
    if d_ff % n_mlp:
        raise ValueError(
            f'd_ff={d_ff} (MLP width) is not divisible by its {n_mlp}-way split (mesh '
            f'{dict(mesh.shape)}); pick a tensor-parallel size that divides d_ff.'
        )
    kv_heads = getattr(model_cfg, 'num_kv_heads', None)
    n_kv = logical_size(mesh, rules, axes.KV_HEADS)
    if kv_heads is not None and kv_heads % n_kv:
        if n_kv % kv_heads:
            raise ValueError(
                f'num_kv_heads={kv_heads} and its {n_kv}-way split (mesh {dict(mesh.shape)}) '
                'neither divide each other; choose a tensor-parallel size that is a multiple '
                'or a divisor of num_kv_heads.'
            )
        rules = tuple((n, None if n == axes.KV_HEADS else t) for n, t in rules)
    return rules


def mesh_spec(logical_spec: PartitionSpec | Sequence[str | None], rules: Rules) -> PartitionSpec:
    """Logical `PartitionSpec` → mesh `PartitionSpec` under `rules`."""
    return nn.logical_to_mesh_axes(tuple(logical_spec), normalize_rules(rules))


def logical_sharding(mesh: Mesh, rules: Rules, *logical_axes: str | None) -> NamedSharding:
    """`NamedSharding` for an array whose axes have these logical names (e.g. a batch)."""
    return NamedSharding(mesh, mesh_spec(logical_axes, rules))


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def param_shardings(logical_specs: Any, mesh: Mesh, rules: Rules, shapes: Any | None = None) -> Any:
    """Tree of `NamedSharding` from a tree of logical `PartitionSpec`s.

    With `shapes` (a matching tree of arrays / ShapeDtypeStructs) every sharded dimension
    is checked to divide evenly, naming the offending leaf.
    """
    rules = normalize_rules(rules)
    shardings = jax.tree.map(
        lambda s: NamedSharding(mesh, mesh_spec(s, rules)), logical_specs, is_leaf=_is_spec
    )
    if shapes is not None:
        flat, _ = jax.tree_util.tree_flatten_with_path(shapes)
        flat_sh = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
        for (path, leaf), sharding in zip(flat, flat_sh, strict=True):
            for dim, entry in zip(leaf.shape, sharding.spec, strict=False):
                n = mesh_axis_size(mesh, entry)
                if dim % n:
                    raise ValueError(
                        f'Parameter {jax.tree_util.keystr(path)} with shape {leaf.shape} '
                        f'cannot be split {n}-way over mesh axes {entry!r} (spec '
                        f'{sharding.spec}); change config.mesh.shape or config.mesh.rules.'
                    )
    return shardings


def abstract_params(init_fn: Callable[[jax.Array], Any], rng: jax.Array) -> tuple[Any, Any]:
    """`(shapes, logical_specs)` of `init_fn(rng)` without allocating anything.

    `init_fn` returns params whose leaves are `nn.Partitioned` (e.g.
    `decoder.init_params_boxed`); shapes are the unboxed `ShapeDtypeStruct`s.
    """
    boxed = jax.eval_shape(init_fn, rng)
    return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)


def init_sharded(
    init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh, rules: Rules
) -> tuple[Any, Any]:
    """Creates params already sharded: eval_shape → specs → jit(init, out_shardings).

    Returns `(params, shardings)`, params unboxed (plain arrays).
    """
    shapes, specs = abstract_params(init_fn, rng)
    shardings = param_shardings(specs, mesh, rules, shapes)
    init = jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)
    return init(rng), shardings


@contextlib.contextmanager
def logical_rules(mesh: Mesh | None = None, rules: Rules = axes.DEFAULT_RULES) -> Iterator[None]:
    """Context for tracing model code: activates `rules` (and `mesh` when given).

    Only the mesh's *abstract* mesh is installed (`jax.sharding.use_abstract_mesh`): that is
    what `nn.with_logical_constraint` needs while tracing, and arrays created eagerly inside
    the context stay uncommitted. Without a mesh the constraints are no-ops, so the same
    model code runs on one device.
    """
    rules = normalize_rules(rules)
    with contextlib.ExitStack() as stack:
        if mesh is not None:
            stack.enter_context(jax.sharding.use_abstract_mesh(mesh.abstract_mesh))
        stack.enter_context(nn.logical_axis_rules(rules))
        yield


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names (no-op outside `logical_rules(mesh, ...)`)."""
    return nn.with_logical_constraint(x, tuple(logical_axes))
