"""Predict digits with a saved agent: `python -m mnist_core.predict AGENT IMAGE [IMAGE ...]`."""
from __future__ import annotations

import json
import sys
import warnings

import click
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .agent import load_agent
from .data import normalise

MAX_SIDE = 28 * 64  # a larger image is shrunk (box filter) to this before it is padded square


def image_to_tensor(path: str, dark_on_light: bool = False) -> torch.Tensor:
    """Any PNG/JPEG as one normalised 784-vector: grey, light digit on dark, padded square, 28x28."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # a decompression bomb is refused
        image = ImageOps.grayscale(Image.open(path))
    if max(image.size) > MAX_SIDE:  # else padding a long thin image square could take gigabytes
        image = image.reduce(-(-max(image.size) // MAX_SIDE))
    if dark_on_light:
        image = ImageOps.invert(image)
    side = max(image.size)
    square = Image.new("L", (side, side), 0)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    small = square.resize((28, 28), Image.Resampling.LANCZOS)
    return normalise(torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8))


def read_images(paths, dark_on_light: bool = False) -> torch.Tensor:
    """(N, 784) normalised images; ValueError naming the first file that cannot be read and why."""
    rows = []
    for path in paths:
        try:
            rows.append(image_to_tensor(path, dark_on_light))
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning, OSError,
                MemoryError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from None
    return torch.cat(rows)


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 10) class probabilities for a batch of normalised images."""
    device = next(model.parameters()).device
    return model(images.to(device)).exp().cpu()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("agent", type=click.Path(exists=True, dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--dark-on-light", is_flag=True,
              help="The images show a dark digit on a light background (ink on paper); invert them "
                   "to MNIST's light-on-dark. [default: off]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image instead of text.")
def main(agent, images, dark_on_light, as_json):
    """Print, for each IMAGE, the predicted digit and the 10 class probabilities of AGENT
    (an mnist_agent.pt written by `python -m mnist_core` or `sweep run`)."""
    try:
        model = load_agent(agent)
        batch = read_images(images, dark_on_light)
    except (ValueError, OSError) as exc:  # a bad agent raises AgentFileError, a ValueError
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for path, probs in zip(images, predict_probabilities(model, batch)):
        digit = int(probs.argmax())
        if as_json:
            click.echo(json.dumps({"image": path, "digit": digit,
                                   "probabilities": [round(float(p), 6) for p in probs]}))
        else:
            listed = " ".join(f"{d}:{float(p):.3f}" for d, p in enumerate(probs))
            click.echo(f"{path}: {digit}  (p={float(probs[digit]):.3f})  [{listed}]")


if __name__ == "__main__":
    main()
