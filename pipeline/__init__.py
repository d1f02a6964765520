"""READ / REST talking-head generation: portrait + speech -> video, by asynchronous diffusion.

Importing this package loads no model and no heavy library; `TalkingHeadPipeline` is imported
on first access.
"""

__all__ = ["TalkingHeadPipeline", "InputError"]


def __getattr__(name):
    if name == "TalkingHeadPipeline":
        from .pipeline import TalkingHeadPipeline

        return TalkingHeadPipeline
    if name == "InputError":
        from .errors import InputError

        return InputError
    raise AttributeError(name)
