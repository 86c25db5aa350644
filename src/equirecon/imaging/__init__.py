"""Images and transformations shared by every part of the package (no dependency on modeling, training or
evaluation)."""
