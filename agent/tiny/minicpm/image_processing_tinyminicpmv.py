"""A stand-in for MiniCPM-V 2.6's image processor (``image_processing_minicpmv.py``), written
for the tiny checkpoints: the same slicing and placeholders, the outputs callers read.

- An image over ``scale_resolution``² pixels is cut into a grid of at most ``max_slice_nums``
  slices (the grid whose aspect ratio is nearest the image's, among the factorizations of the
  slice count and its neighbours), and also sent whole, downscaled: the "source" image first,
  then the slices row by row. Every side is a multiple of ``patch_size``.
- Each image's placeholder: ``<image_id>i</image_id>`` (with ``use_image_id``), then
  ``<image>`` + ``<unk>`` × ``image_feature_size`` + ``</image>``, then one
  ``<slice>…</slice>`` per slice, rows separated by a newline.
- Outputs, per prompt: ``pixel_values`` (per slice, ``3 × patch_size × (patches·patch_size)``:
  the patches laid side by side), ``image_sizes`` (width, height) and ``tgt_sizes`` (the patch
  grid of each slice, height then width). vLLM's MiniCPM-V asks it for ``get_sliced_grid``,
  ``get_slice_image_placeholder``, ``image_feature_size`` and ``max_slice_nums`` too.
"""

import math

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


class TinyMiniCPMVImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values"]

    def __init__(self, max_slice_nums=9, scale_resolution=448, patch_size=14, **kwargs):
        tokens = {k: kwargs.pop(k, v) for k, v in dict(
            im_start="<image>", im_end="</image>", slice_start="<slice>", slice_end="</slice>",
            unk="<unk>", im_id_start="<image_id>", im_id_end="</image_id>").items()}
        self.use_image_id = kwargs.pop("use_image_id", False)
        self.image_feature_size = kwargs.pop("image_feature_size", 64)
        self.slice_mode = kwargs.pop("slice_mode", True)
        self.mean = list(kwargs.pop("norm_mean", [0.5, 0.5, 0.5]))
        self.std = list(kwargs.pop("norm_std", [0.5, 0.5, 0.5]))
        self.version = kwargs.pop("version", 2.6)
        super().__init__(**kwargs)
        self.max_slice_nums, self.scale_resolution = max_slice_nums, scale_resolution
        self.patch_size = patch_size
        self.im_start_token, self.im_end_token = tokens["im_start"], tokens["im_end"]
        self.slice_start_token, self.slice_end_token = tokens["slice_start"], tokens["slice_end"]
        self.unk_token = tokens["unk"]
        self.im_id_start, self.im_id_end = tokens["im_id_start"], tokens["im_id_end"]

    # -- sizes ---------------------------------------------------------------------------

    def _multiple_of_patch(self, length):
        return max(round(length / self.patch_size) * self.patch_size, self.patch_size)

    def _fit(self, size, upscale=False):
        """``size`` scaled to about ``scale_resolution``² pixels (only down unless
        ``upscale``), each side a multiple of the patch size."""
        width, height = size
        if upscale or width * height > self.scale_resolution ** 2:
            ratio = width / height
            height = int(self.scale_resolution / math.sqrt(ratio))
            width = int(height * ratio)
        return self._multiple_of_patch(width), self._multiple_of_patch(height)

    def get_sliced_grid(self, image_size, max_slice_nums=None, never_split=False):
        """(columns, rows) of the slices, or ``None`` for an image taken whole."""
        max_slice_nums = int(max_slice_nums or self.max_slice_nums)
        width, height = (float(v) for v in image_size)
        wanted = min(math.ceil(width * height / self.scale_resolution ** 2), max_slice_nums)
        if wanted <= 1 or never_split:
            return None
        counts = [n for n in (wanted - 1, wanted, wanted + 1) if 1 < n <= max_slice_nums]
        grids = [[cols, n // cols] for n in counts for cols in range(1, n + 1) if n % cols == 0]
        aspect = math.log(width / height)
        return min(grids, key=lambda g: abs(aspect - math.log(g[0] / g[1])))

    def slice_image(self, image, max_slice_nums=None):
        """The source image, then the slices (row by row)."""
        grid = self.get_sliced_grid(image.size, max_slice_nums)
        if grid is None:
            return [image.resize(self._fit(image.size, upscale=True), Image.Resampling.BICUBIC)]
        source = image.resize(self._fit(image.size), Image.Resampling.BICUBIC)
        cols, rows = grid
        cell = self._fit((self._multiple_of_patch(image.size[0]) / cols,
                          self._multiple_of_patch(image.size[1]) / rows), upscale=True)
        refined = image.resize((cell[0] * cols, cell[1] * rows), Image.Resampling.BICUBIC)
        slices = [refined.crop((c * cell[0], r * cell[1], (c + 1) * cell[0], (r + 1) * cell[1]))
                  for r in range(rows) for c in range(cols)]
        return [source, *slices]

    # -- placeholders --------------------------------------------------------------------

    def get_slice_image_placeholder(self, image_size, image_idx=0, max_slice_nums=None,
                                    use_image_id=None):
        unks = self.unk_token * self.image_feature_size
        text = self.im_start_token + unks + self.im_end_token
        if self.use_image_id if use_image_id is None else use_image_id:
            text = f"{self.im_id_start}{image_idx}{self.im_id_end}" + text
        grid = self.get_sliced_grid(image_size, max_slice_nums) if self.slice_mode else None
        if grid is not None:
            one = self.slice_start_token + unks + self.slice_end_token
            text += "\n".join(one * grid[0] for _ in range(grid[1]))
        return text

    # -- pixels --------------------------------------------------------------------------

    def _patches(self, image):
        """HWC uint8 -> normalized 3 × patch × (patches·patch), patches in row-major order."""
        pixels = (np.asarray(image, dtype=np.float32) / 255.0 - self.mean) / self.std
        chw = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32))
        p = self.patch_size
        cols = torch.nn.functional.unfold(chw.unsqueeze(0), (p, p), stride=(p, p))[0]
        return cols.reshape(3, p, p, -1).permute(0, 1, 3, 2).reshape(3, p, -1)

    def preprocess(self, images, do_pad=True, max_slice_nums=None, return_tensors=None,
                   **kwargs):
        if isinstance(images, (Image.Image, np.ndarray)) and np.ndim(images) != 4:
            images = [[images]]
        elif isinstance(images[0], Image.Image) or (isinstance(images[0], np.ndarray)
                                                    and images[0].ndim == 3):
            images = [images]
        pixel_values, image_sizes, tgt_sizes = [], [], []
        for batch in images:
            pictures = [_to_pil(i) for i in (batch if batch is not None else [])]
            slices = [s for p in pictures for s in self.slice_image(p, max_slice_nums)]
            pixel_values.append([self._patches(s) for s in slices])
            image_sizes.append([torch.tensor(p.size) for p in pictures])
            tgt = [(s.size[1] // self.patch_size, s.size[0] // self.patch_size) for s in slices]
            tgt_sizes.append(torch.tensor(tgt, dtype=torch.int64) if tgt else [])
        return BatchFeature(data={"pixel_values": pixel_values, "image_sizes": image_sizes,
                                  "tgt_sizes": tgt_sizes})


def _to_pil(image):
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = (array * 255 if array.max() <= 1.0 else array).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")
