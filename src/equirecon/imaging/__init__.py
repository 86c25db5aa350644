"""Images and transformations shared by every other part of equirecon (the lowest layer: it imports no other
subpackage).

* :mod:`.transformations`: the parameterised transformations g_θ, batched on the device;
* :mod:`.decoding`: any image a dataset holds → RGB uint8 (:func:`to_rgb_uint8`);
* :mod:`.sources`: images from the embedded photos, folders, Parquet, the Hub (:func:`load_images`);
* :mod:`.workers`: per-worker seeding of per-example transforms.
"""

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
    center_crop,
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
    "embedded_photos",
    "find_image_column",
    "image_folder_to_parquet",
    "load_images",
    "make_transformed_pair",
    "seed_view_transform",
    "to_rgb_uint8",
    "worker_context",
]
