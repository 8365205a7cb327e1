"""Training code (expert heads, LVLM adapters). Imports the library; the library never imports this."""


def make_accelerator(device: str = "auto", **kwargs):
    """The trainers' Accelerator. With no GPU (or vision.device cpu) it is built with cpu=True: only then does
    accelerate join the processes of `accelerate launch` / torchrun into one gloo group (MULTI_CPU), so that N
    launched CPU processes share the samples and one of them writes the files."""
    import torch
    from accelerate import Accelerator

    has_gpu = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    return Accelerator(cpu=device == "cpu" or not has_gpu, **kwargs)
