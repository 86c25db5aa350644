"""Images and transformations shared by every other part of equirecon (the lowest layer: it imports no other
subpackage).

* :mod:`.transformations`: the parameterised transformations g_θ, batched on the device;
* :mod:`.context`: the view inside its context margin, for the pretraining views and the benchmark's crops;
* :mod:`.decoding`: any image a dataset holds → RGB uint8 (:func:`to_rgb_uint8`);
* :mod:`.sources`: images from the embedded photos, folders, Parquet, the Hub (:func:`load_images`);
* :mod:`.workers`: per-worker seeding of per-example transforms.
"""

from .context import center_crop, context_side, reflect_into_box, widen_box
from .decoding import to_rgb_uint8
from .sources import (
    EMBEDDED_PHOTOS,
    EMBEDDED_VALIDATION_PHOTOS,
    IMAGE_EXTENSIONS,
    embedded_photos,
    find_image_column,
    image_folder_to_parquet,
    load_images,
)
from .transformations import (
    FAMILIES,
    TransformationConfig,
    TransformedPair,
    apply_transformation,
    make_transformed_pair,
)
from .workers import seed_view_transform, worker_context

__all__ = [
    "EMBEDDED_PHOTOS",
    "EMBEDDED_VALIDATION_PHOTOS",
    "FAMILIES",
    "IMAGE_EXTENSIONS",
    "TransformationConfig",
    "TransformedPair",
    "apply_transformation",
    "center_crop",
    "context_side",
    "embedded_photos",
    "find_image_column",
    "image_folder_to_parquet",
    "load_images",
    "make_transformed_pair",
    "reflect_into_box",
    "seed_view_transform",
    "to_rgb_uint8",
    "widen_box",
    "worker_context",
]
