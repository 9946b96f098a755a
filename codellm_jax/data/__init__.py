"""codellm_jax.data."""
