"""The generation engine: requests, prompts, sampling, the batched frame step and its scheduler."""
