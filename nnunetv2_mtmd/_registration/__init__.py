"""Files that the wheel installs into nnunetv2's own folders so stock lookups find our classes.

They are plain source files here and are never imported from this package.
"""
