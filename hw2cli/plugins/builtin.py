"""The built-in plugins' specs. Each is named by an entry point in ``pyproject.toml``
(group ``hw2.plugins``), exactly as a third-party plugin would be; the command modules they
point to are imported only when one of their commands runs."""

from hw2cli.registry import Plugin

HOMEWORK = "Homework"
TOOLS = "Tools"

data = Plugin(
    name="data",
    help="Digits in the homework layout (MNIST-M by its recipe, SVHN, look-alikes); fetch hw2_data.zip; check.",
    app="hw2cli.plugins.data:app",
    panel=TOOLS,
)

ddpm = Plugin(
    name="ddpm",
    help="P1: conditional DDPM on digits: train, sample, generate the graded folders, figures, grade.",
    app="hw2cli.plugins.ddpm:app",
    panel=HOMEWORK,
)

classifier = Plugin(
    name="classifier",
    help="Train the digit classifiers that grade P1.",
    app="hw2cli.plugins.classifier:app",
    panel=TOOLS,
)

ddim = Plugin(
    name="ddim",
    help="P2: DDIM with eta on the face UNet: graded generation, eta grid, slerp/lerp, MSE.",
    app="hw2cli.plugins.ddim:app",
    panel=HOMEWORK,
)

bench = Plugin(
    name="bench",
    help="Benchmarks: fused kernels and sampling loops, eager vs Triton vs torch.compile.",
    app="hw2cli.plugins.bench:app",
    panel=TOOLS,
)

personalize = Plugin(
    name="personalize",
    help="P3b: textual inversion / Custom Diffusion on Stable Diffusion; graded generation; CLIP grading.",
    app="hw2cli.plugins.personalize:app",
    panel=HOMEWORK,
)

clip = Plugin(
    name="clip",
    help="P3a: CLIP zero-shot classification of the validation set.",
    app="hw2cli.plugins.clip:app",
    panel=HOMEWORK,
)
