"""What to rebuild, and when: the one rule of what is stale, the runs of dead processes, the
headless build (`qwen-assets build`), the cost said before it, and the sensor and schedules
that build the same way from the daemon. It reads the definitions of ``qwen_assets.defs``
and is imported by neither them nor the pipeline code."""
