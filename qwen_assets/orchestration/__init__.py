"""Building what is stale, outside the definitions: the one rule of what is stale, the runs
of dead processes, and the headless build (`qwen-assets build`) that uses both."""
