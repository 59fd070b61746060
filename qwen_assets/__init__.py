"""qwen_assets: how task instructions reshape Qwen3-Embedding spaces, as Dagster assets."""
