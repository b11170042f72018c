"""WeCare package."""
