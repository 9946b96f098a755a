"""codellm_jax: pretrain, finetune, align, decode and evaluate code LLMs in JAX/Flax."""
