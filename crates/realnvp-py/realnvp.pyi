"""Real NVP normalizing flows trained with realnvp-rs.

``realnvp.load(path)`` reads a model trained by ``realnvp train``; its methods take
anything NumPy can read (arrays, lists, ``torch.Tensor.numpy()``, objects with
``__array__`` or the buffer protocol) and return NumPy arrays. Computation runs on the CPU
(realnvp-rs's Flex backend) with the GIL released, ``batch_size`` examples at a time.
"""

from os import PathLike
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

ArrayLike = npt.ArrayLike
Dequantization = Literal["uniform", "centre"]

def load(path: Union[str, PathLike[str]], best: bool = False) -> Model:
    """Loads a trained model.

    ``path`` is a run directory of ``realnvp train`` (its ``export/``, written when
    training ends) or an export directory (``model.safetensors`` beside ``model.toml``).
    With ``best=True``, the export of the best held-out bits/dim so far
    (``export/best``).

    Raises ``FileNotFoundError`` when no model is there, ``OSError`` when a file cannot be
    read and ``ValueError`` when a file is not a valid model; each names the file.
    """

class Model:
    """A trained Real NVP, loaded by ``realnvp.load``.

    Image models take pixel levels ``[N, C, H, W]`` (uint8; ``channels_last=True`` for
    ``[N, H, W, C]``), vector models float32 ``[N, D]``. Results are NumPy arrays:
    bits/dim and log-likelihoods float64 ``[N]``, images uint8, vectors and latents
    float32.
    """

    @property
    def kind(self) -> Literal["image", "vector"]:
        """``"image"`` or ``"vector"``."""
    @property
    def shape(self) -> Tuple[int, ...]:
        """One example's shape: ``(C, H, W)`` for images, ``(D,)`` for vectors."""
    @property
    def classes(self) -> int:
        """Number of classes of a class-conditional model; 0 for an unconditional one."""
    @property
    def dims(self) -> int:
        """Dimensions of one example, ``D`` (``C * H * W`` for images)."""
    @property
    def levels(self) -> Optional[int]:
        """Pixel levels of the training data (256 for 8-bit images); None for vectors."""
    @property
    def latent_shapes(self) -> List[Tuple[int, ...]]:
        """Per-scale latent shapes ``(c, h, w)``, finest first; ``[(D,)]`` for vectors."""
    @property
    def config(self) -> Dict[str, Any]:
        """The model configuration (the export's ``model.toml``) as a dict."""
    @property
    def path(self) -> str:
        """The export directory the model was read from."""
    def bits_per_dim(
        self,
        x: ArrayLike,
        labels: Optional[ArrayLike] = None,
        *,
        dequantization: Dequantization = "uniform",
        seed: Optional[int] = 0,
        batch_size: int = 64,
        channels_last: bool = False,
    ) -> npt.NDArray[np.float64]:
        """Bits per dimension of each example, float64 ``[N]``: ``-log2 p(x) / D``.

        ``x``: images ``[N, C, H, W]`` of integer levels ``0..levels`` (uint8;
        ``channels_last=True`` for ``[N, H, W, C]``), or vectors float32 ``[N, D]``.
        ``labels``: ``[N]`` class labels of a class-conditional model, for
        ``-log2 p(x | label) / D``; without them, the marginal. ``dequantization``:
        ``"uniform"`` (noise ``u ~ U[0, 1)`` on every level, one stream seeded with
        ``seed`` over the whole input, so the result does not depend on ``batch_size``;
        ``seed=None`` draws fresh noise) or ``"centre"`` (``+ 0.5``, deterministic).
        ``realnvp score --json`` gives the same numbers for ``seed=0``.

        Raises ``ValueError`` for a wrong rank, shape or dtype, levels out of range,
        labels out of range or given to an unconditional model.
        """
    def log_prob(
        self,
        x: ArrayLike,
        labels: Optional[ArrayLike] = None,
        *,
        dequantization: Dequantization = "uniform",
        seed: Optional[int] = 0,
        batch_size: int = 64,
        channels_last: bool = False,
    ) -> npt.NDArray[np.float64]:
        """Log-likelihood of each example in nats, float64 ``[N]``: ``log p(x)``
        (``log p(x | label)`` given ``labels``). Arguments as for ``bits_per_dim``."""
    def classify(
        self,
        x: ArrayLike,
        *,
        dequantization: Dequantization = "uniform",
        seed: Optional[int] = 0,
        batch_size: int = 64,
        channels_last: bool = False,
    ) -> npt.NDArray[np.float64]:
        """Class posteriors ``log p(k | x)`` of a class-conditional image model, float64
        ``[N, classes]`` (equal class priors). Arguments as for ``bits_per_dim``."""
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        seed: Optional[int] = None,
        label: Optional[int] = None,
        *,
        batch_size: int = 64,
        channels_last: bool = False,
    ) -> Union[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
        """Draws ``n`` samples: images uint8 ``[n, C, H, W]`` of the training data's
        levels, or vectors float32 ``[n, D]``.

        ``temperature`` scales the prior's standard deviation (0 gives the mode).
        The same ``seed`` gives the same samples (``None``: fresh ones). ``label``: every
        sample from that class of a class-conditional model; otherwise from the mixture
        of all classes.
        """
    def encode(
        self,
        x: ArrayLike,
        *,
        flat: bool = False,
        batch_size: int = 64,
        channels_last: bool = False,
    ) -> Union[List[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
        """The latents of ``x``, exactly invertible by ``decode``: one float32 array per
        scale ``[N, c, h, w]``, finest first, or with ``flat=True`` one ``[N, D]`` array;
        vectors give one ``[N, D]`` array. Images are dequantised at their bin centres."""
    def decode(
        self,
        z: Union[Sequence[ArrayLike], ArrayLike],
        *,
        batch_size: int = 64,
        channels_last: bool = False,
    ) -> Union[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
        """Inverts ``encode``: per-scale latents or one flat ``[N, D]`` array to images
        uint8 ``[N, C, H, W]`` of the training data's levels (vectors: float32
        ``[N, D]``). ``decode(encode(x))`` gives integer images back exactly."""
