"""Training data for TAGS: dataset discovery and checks, splits, 1 mm preprocessing with an on-disk cache,
the published MONAI transforms, a torch Dataset/DataLoader and synthetic datasets (TAGS_SPEC.md §4).

Import the submodules directly: `datasets`, `preprocess` and `synthetic` need only numpy/scipy/SimpleITK,
`transforms` and `loader` need the `train` extra (MONAI, torch), so the package itself imports nothing heavy.
"""
