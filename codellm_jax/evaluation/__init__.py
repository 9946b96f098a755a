"""codellm_jax.evaluation."""
