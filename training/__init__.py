"""covip.training: data, rewards, judges and GSPO post-training (issue 4; not built yet)."""

__all__: list[str] = []
