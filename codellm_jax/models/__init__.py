"""codellm_jax.models."""
