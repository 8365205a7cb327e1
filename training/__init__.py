"""Training code (expert heads, LVLM adapters). Imports the library; the library never imports this."""


def make_accelerator(device: str = "auto", **kwargs):
    """The trainers' Accelerator. With no GPU (or vision.device cpu) it is built with cpu=True: only then does
    accelerate join the processes of `accelerate launch` / torchrun into one gloo group (MULTI_CPU). Without it
    each of N launched CPU processes trained alone on the same samples and all wrote the same files."""
    import torch
    from accelerate import Accelerator

    has_gpu = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    return Accelerator(cpu=device == "cpu" or not has_gpu, **kwargs)
