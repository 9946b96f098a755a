"""Where a benchmark runs each framework: JAX's backend and torch's device, kept in step.

Both speed benchmarks compare JAX with Hugging Face PyTorch in one process; `--device`
picks where: 'auto' (torch on CUDA iff JAX's default backend is the GPU and torch sees
CUDA), 'cpu' or 'gpu' (both frameworks there, or an error naming what is missing).
"""

from __future__ import annotations


def add_device_flag(parser) -> None:
    """`--device auto|cpu|gpu` on an argparse parser (see `select_devices`)."""
    parser.add_argument(
        '--device', choices=('auto', 'cpu', 'gpu'), default='auto',
        help="auto: torch on cuda iff JAX's default backend is gpu and torch sees CUDA; "
        'cpu / gpu: both frameworks there',
    )  # fmt: skip


def pin_jax_platform(device: str) -> None:
    """For `--device=cpu`, keeps JAX on CPU even where a GPU backend exists. Must run before
    JAX's first backend use (as `main()` does); a no-op for 'auto' and 'gpu'."""
    import jax

    if device == 'cpu':
        jax.config.update('jax_platforms', 'cpu')


def select_devices(device: str = 'auto') -> tuple[str, str]:
    """(JAX backend, torch device) for `device`, checked against what this process has.

    'auto': torch on 'cuda' iff JAX's default backend is 'gpu' and torch sees CUDA, else on
    'cpu' (JAX stays on its default backend either way); 'cpu' / 'gpu': both frameworks
    there, or ValueError naming what is missing.
    """
    import jax
    import torch

    backend, cuda = jax.default_backend(), torch.cuda.is_available()
    if device == 'auto':
        return backend, 'cuda' if backend == 'gpu' and cuda else 'cpu'
    want_backend, torch_device = {'cpu': ('cpu', 'cpu'), 'gpu': ('gpu', 'cuda')}[device]
    if backend != want_backend or (torch_device == 'cuda' and not cuda):
        raise ValueError(
            f'--device={device}: JAX default backend is {backend!r}, torch CUDA available: {cuda}'
        )
    return backend, torch_device


def torch_sync(torch_device: str):
    """A callable that waits for torch's queued work on `torch_device` (CUDA runs async)."""
    import torch

    return torch.cuda.synchronize if torch_device == 'cuda' else lambda: None


def matmul_precisions() -> dict[str, str | None]:
    """The f32 matmul precision each framework is set to (None for JAX = its default)."""
    import jax
    import torch

    return {
        'jax_matmul_precision': jax.config.jax_default_matmul_precision,
        'torch_matmul_precision': torch.get_float32_matmul_precision(),
    }
