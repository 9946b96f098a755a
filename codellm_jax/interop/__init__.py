"""codellm_jax.interop."""
